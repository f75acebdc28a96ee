//! `as-of`: the sums as they were at a point of the log. Replays from the beginning into a
//! temporary database up to that point (offsets or a time), then writes the per-key sums, all
//! or filtered by key or prefix, as CSV or JSON.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;
use tally_pipeline::applier::Applier;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::store::{OpenMode, Store};

use crate::positions::{From, To};
use crate::replay::replay;

/// Which keys to output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Key(String),
    Prefix(String),
}

impl Filter {
    fn matches(&self, key: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Key(k) => key == k,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// The sums at a point: the offsets the replay stopped at, and each key's sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOf {
    /// Next offset per partition: every record before it is counted, none after.
    pub offsets: BTreeMap<i32, i64>,
    pub sums: BTreeMap<String, i64>,
}

/// Replays up to `at`, remembering requests for `window` (the default when `None`), and
/// returns the sums of the keys `filter` selects.
pub fn as_of(
    kafka: &KafkaArgs,
    at: &To,
    window: Option<std::time::Duration>,
    filter: &Filter,
) -> anyhow::Result<AsOf> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut store = Store::open(
        &dir.path().join("as-of.db"),
        &kafka.topic,
        OpenMode::CreateNew,
    )?;
    store.bind_idempotency_window(window)?;
    let mut applier = Applier::new(store);
    replay(kafka, &mut applier, &From::Earliest, at, None)?;
    let snap = applier
        .store()
        .snapshot()
        .context("cannot read the replay")?;
    Ok(AsOf {
        offsets: snap.offsets,
        sums: key_sums(&snap.sums, filter),
    })
}

/// Adds up a key's rows over partitions (several only after a repartition) the way
/// `Store::key_sum` does: in i128, saturating at the i64 bounds.
pub fn key_sums(rows: &BTreeMap<(String, i32), i64>, filter: &Filter) -> BTreeMap<String, i64> {
    let mut wide: BTreeMap<String, i128> = BTreeMap::new();
    for ((key, _), sum) in rows {
        if filter.matches(key) {
            *wide.entry(key.clone()).or_insert(0) += *sum as i128;
        }
    }
    wide.into_iter()
        .map(|(k, s)| (k, s.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
        .collect()
}

/// How to write the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// From the output file's extension; `-` (standard output) is CSV.
    pub fn for_path(path: &str) -> Result<Format, String> {
        let lower = path.to_ascii_lowercase();
        if path == "-" || lower.ends_with(".csv") {
            Ok(Format::Csv)
        } else if lower.ends_with(".json") {
            Ok(Format::Json)
        } else {
            Err(format!(
                "cannot tell the format of {path:?}: name it FILE.csv or FILE.json, or use - for CSV on standard output"
            ))
        }
    }
}

/// CSV with a `key,sum` header (keys quoted as needed), or JSON `{"offsets":{..},"sums":{..}}`.
pub fn write(out: impl Write, result: &AsOf, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["key", "sum"])?;
            for (k, s) in &result.sums {
                w.write_record([k.as_str(), &s.to_string()])?;
            }
            w.flush()?;
        }
        Format::Json => {
            let mut out = out;
            serde_json::to_writer_pretty(&mut out, result)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> BTreeMap<(String, i32), i64> {
        BTreeMap::from([
            (("a,\"b\"".to_owned(), 0), 3),
            (("page:1".to_owned(), 1), i64::MAX),
            (("page:1".to_owned(), 2), 5),
            (("page:2".to_owned(), 2), -7),
        ])
    }

    #[test]
    fn sums_keys_over_partitions_and_filters() {
        let all = key_sums(&rows(), &Filter::All);
        assert_eq!(all.len(), 3);
        assert_eq!(all["page:1"], i64::MAX);
        let pages = key_sums(&rows(), &Filter::Prefix("page:".into()));
        assert_eq!(pages.keys().collect::<Vec<_>>(), vec!["page:1", "page:2"]);
        let one = key_sums(&rows(), &Filter::Key("page:2".into()));
        assert_eq!(one, BTreeMap::from([("page:2".to_owned(), -7)]));
        assert!(key_sums(&rows(), &Filter::Key("page".into())).is_empty());
    }

    #[test]
    fn writes_csv_and_json() {
        let r = AsOf {
            offsets: BTreeMap::from([(0, 4)]),
            sums: key_sums(&rows(), &Filter::All),
        };
        let mut csv = Vec::new();
        write(&mut csv, &r, Format::Csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "key,sum\n\"a,\"\"b\"\"\",3\npage:1,9223372036854775807\npage:2,-7\n"
        );
        let mut json = Vec::new();
        write(&mut json, &r, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["offsets"]["0"], 4);
        assert_eq!(v["sums"]["page:2"], -7);
        assert_eq!(Format::for_path("-"), Ok(Format::Csv));
        assert_eq!(Format::for_path("x.JSON"), Ok(Format::Json));
        assert!(Format::for_path("x.txt").is_err());
    }
}
