//! Recording a run: the machine, date and commit it ran on ([`Stamp`]); its own page and raw
//! numbers in the history folder ([`HISTORY_DIR`], one Markdown page and one JSON file per
//! run); and the rows it measured replaced in the current-figures table that opens
//! BENCHMARKS.md ([`update_table`]), every other row kept as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Where past runs live, relative to the repository root.
pub const HISTORY_DIR: &str = "docs/history/bench";
/// The file whose first table [`record`] keeps current, relative to the repository root.
pub const TABLE_FILE: &str = "BENCHMARKS.md";
/// The markers around the current-figures table; the rows between them are the table's.
pub const TABLE_BEGIN: &str =
    "<!-- current figures: begin (bench tools replace the rows they measure) -->";
pub const TABLE_END: &str = "<!-- current figures: end -->";
/// The table's header, written when the table has no rows yet.
pub const TABLE_HEAD: &str = "| measure | what | figure | goal | date | commit | broker | machine | command |\n|---|---|---|---|---|---|---|---|---|";

/// The trimmed standard output of a command, empty when it cannot run.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A one-line description of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{} cores ({cpu}), {mem}, shared", sh("nproc", &[]))
}

/// When, at which commit and on which machine a run ran.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    pub commit: String,
    pub machine: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: sh("git", &["rev-parse", "--short", "HEAD"]),
            machine: machine(),
        }
    }

    /// The history file of this run's `kind` with extension `ext`: `2026-12-03-0631-suite.md`.
    pub fn file(&self, kind: &str, ext: &str) -> String {
        let stem: String = self
            .date
            .trim_end_matches(" UTC")
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                ':' => None,
                c => Some(c),
            })
            .collect();
        format!("{stem}-{kind}.{ext}")
    }
}

/// One measure of a run, as the current-figures table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's key: a row of the table with the same measure is replaced.
    pub measure: String,
    pub what: String,
    pub figure: String,
    pub goal: String,
}

/// A run ready to be recorded.
pub struct Recorded {
    /// `suite`, `failover`, `prune`: names the history files.
    pub kind: &'static str,
    pub broker: String,
    pub command: String,
    /// The run's page (Markdown); it should link the raw numbers' file,
    /// `stamp.file(kind, "json")`.
    pub page: String,
    pub raw: serde_json::Value,
    pub rows: Vec<Row>,
}

/// Writes the run's page and raw numbers under `root`'s [`HISTORY_DIR`] and replaces the rows
/// it measured in `root`'s [`TABLE_FILE`]; returns the page's path.
pub fn record(root: &Path, stamp: &Stamp, run: &Recorded) -> anyhow::Result<PathBuf> {
    let dir = root.join(HISTORY_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let page_name = stamp.file(run.kind, "md");
    let page = dir.join(&page_name);
    std::fs::write(&page, &run.page)?;
    std::fs::write(
        dir.join(stamp.file(run.kind, "json")),
        serde_json::to_string_pretty(&run.raw)? + "\n",
    )?;
    let table = root.join(TABLE_FILE);
    let doc =
        std::fs::read_to_string(&table).with_context(|| format!("read {}", table.display()))?;
    let link = format!("{HISTORY_DIR}/{page_name}");
    let rows: Vec<(String, String)> = run
        .rows
        .iter()
        .map(|r| (r.measure.clone(), render(r, stamp, run, &link)))
        .collect();
    std::fs::write(&table, update_table(&doc, &rows)?)?;
    Ok(page)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// One table line: the measure's figure with when, where and how it was measured.
fn render(r: &Row, stamp: &Stamp, run: &Recorded, link: &str) -> String {
    format!(
        "| {} | {} | {} | {} | [{}]({link}) | `{}` | {} | {} | `{}` |",
        cell(&r.measure),
        cell(&r.what),
        cell(&r.figure),
        cell(&r.goal),
        stamp.date,
        stamp.commit,
        cell(&run.broker),
        cell(&stamp.machine),
        cell(&run.command)
    )
}

/// The measure a table line is about (its first cell), if the line is a row of measures.
fn key_of(line: &str) -> Option<String> {
    let inner = line.trim().strip_prefix('|')?;
    let first = inner.split('|').next()?.trim();
    (!first.is_empty() && first != "measure" && !first.starts_with("---")).then(|| first.to_owned())
}

/// `doc` with its current-figures table updated: each of `rows` (`(measure, line)`) replaces
/// the line of the same measure where it stands, or is added after the last row; every other
/// line is kept. Fails when `doc` has no table markers.
pub fn update_table(doc: &str, rows: &[(String, String)]) -> anyhow::Result<String> {
    let (Some(begin), Some(end)) = (doc.find(TABLE_BEGIN), doc.find(TABLE_END)) else {
        bail!("no current-figures table ({TABLE_BEGIN} ... {TABLE_END}) to update");
    };
    if end < begin {
        bail!("the current-figures table's end marker comes before its beginning");
    }
    let body_start = begin + TABLE_BEGIN.len();
    let mut lines: Vec<String> = doc[body_start..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        lines.extend(TABLE_HEAD.lines().map(str::to_owned));
    }
    for (measure, line) in rows {
        match lines
            .iter()
            .position(|l| key_of(l).as_deref() == Some(measure))
        {
            Some(i) => lines[i] = line.clone(),
            None => lines.push(line.clone()),
        }
    }
    Ok(format!(
        "{}{TABLE_BEGIN}\n{}\n{}",
        &doc[..begin],
        lines.join("\n"),
        &doc[end..]
    ))
}

/// A number with thousands separators, no decimals when it is large.
pub fn grouped(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The goal column: the target and whether this figure met it; empty for figures that have
/// no target.
pub fn goal(target: &str, met: bool) -> String {
    match (target, met) {
        ("info", _) => String::new(),
        (t, true) => format!("{t} (met)"),
        (t, false) => format!("**{t} (not met)**"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rows: &str) -> String {
        format!("# Benchmarks\n\nintro\n\n{TABLE_BEGIN}\n{TABLE_HEAD}\n{rows}{TABLE_END}\n\nmore text\n")
    }

    fn line(measure: &str, figure: &str) -> (String, String) {
        (
            measure.into(),
            format!("| {measure} | w | {figure} | | d | c | b | m | x |"),
        )
    }

    #[test]
    fn measured_rows_are_replaced_in_place_and_the_others_kept() {
        let before = doc("| P1 | w | 0.3 | | d | c | b | m | x |\n| F1 | failover | 4.5 s | | d | c | b | m | y |\n| P6 | w | 42 MB | | d | c | b | m | x |\n");
        let after = update_table(&before, &[line("P6", "40 MB"), line("P1", "0.4")]).unwrap();
        assert_eq!(
            after,
            doc("| P1 | w | 0.4 | | d | c | b | m | x |\n| F1 | failover | 4.5 s | | d | c | b | m | y |\n| P6 | w | 40 MB | | d | c | b | m | x |\n")
        );
    }

    #[test]
    fn a_new_measure_is_added_after_the_last_row() {
        let before = doc("| P1 | w | 0.3 | | d | c | b | m | x |\n");
        let after = update_table(&before, &[line("P5sat", "600")]).unwrap();
        assert_eq!(
            after,
            doc("| P1 | w | 0.3 | | d | c | b | m | x |\n| P5sat | w | 600 | | d | c | b | m | x |\n")
        );
        // An empty table gets its header first.
        let empty = format!("{TABLE_BEGIN}\n{TABLE_END}\n");
        let filled = update_table(&empty, &[line("P1", "0.3")]).unwrap();
        assert_eq!(
            filled,
            format!("{TABLE_BEGIN}\n{TABLE_HEAD}\n| P1 | w | 0.3 | | d | c | b | m | x |\n{TABLE_END}\n")
        );
    }

    #[test]
    fn a_measure_is_matched_whole_not_by_prefix() {
        let before = doc(
            "| P1 | w | 0.3 | | d | c | b | m | x |\n| P1b | w | 0.6 | | d | c | b | m | x |\n",
        );
        let after = update_table(&before, &[line("P1", "0.4")]).unwrap();
        assert!(after.contains("| P1 | w | 0.4 |"), "{after}");
        assert!(after.contains("| P1b | w | 0.6 |"), "{after}");
    }

    #[test]
    fn a_document_without_the_table_is_an_error_not_rewritten() {
        let e = update_table("# Benchmarks\n", &[line("P1", "0.4")]).unwrap_err();
        assert!(e.to_string().contains("no current-figures table"), "{e}");
    }

    #[test]
    fn rendered_rows_escape_pipes_and_link_the_run() {
        let stamp = Stamp {
            date: "2026-12-03 06:31 UTC".into(),
            commit: "01635c1".into(),
            machine: "2 cores".into(),
        };
        assert_eq!(stamp.file("suite", "md"), "2026-12-03-0631-suite.md");
        let run = Recorded {
            kind: "suite",
            broker: "Kafka".into(),
            command: "bench-suite".into(),
            page: String::new(),
            raw: serde_json::Value::Null,
            rows: vec![],
        };
        let row = Row {
            measure: "P1".into(),
            what: "a | b".into(),
            figure: "0.371".into(),
            goal: ">= 0.5".into(),
        };
        let l = render(&row, &stamp, &run, "docs/history/bench/x.md");
        assert_eq!(
            l,
            "| P1 | a \\| b | 0.371 | >= 0.5 | [2026-12-03 06:31 UTC](docs/history/bench/x.md) | `01635c1` | Kafka | 2 cores | `bench-suite` |"
        );
        assert_eq!(key_of(&l).as_deref(), Some("P1"));
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(64872.643), "64,873");
        assert_eq!(grouped(1_442_009.0), "1,442,009");
        assert_eq!(grouped(999.6), "1,000");
        assert_eq!(grouped(42.47), "42.5");
        assert_eq!(grouped(f64::NAN), "n/a");
    }

    #[test]
    fn recording_writes_the_page_the_raw_numbers_and_the_rows() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join(TABLE_FILE),
            doc("| P6 | w | 42 MB | | d | c | b | m | x |\n"),
        )
        .unwrap();
        let stamp = Stamp {
            date: "2026-12-06 11:00 UTC".into(),
            commit: "abc1234".into(),
            machine: "2 cores".into(),
        };
        let run = Recorded {
            kind: "suite",
            broker: "Kafka 4.4.0".into(),
            command: "bench-suite".into(),
            page: "# Suite run\n".into(),
            raw: serde_json::json!({"p6": 40}),
            rows: vec![Row {
                measure: "P6".into(),
                what: "peak RSS".into(),
                figure: "40 MB".into(),
                goal: "<= 64 MB (met)".into(),
            }],
        };
        let page = record(root.path(), &stamp, &run).unwrap();
        assert_eq!(std::fs::read_to_string(&page).unwrap(), "# Suite run\n");
        let raw = std::fs::read_to_string(
            root.path()
                .join(HISTORY_DIR)
                .join("2026-12-06-1100-suite.json"),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&raw).unwrap()["p6"],
            40
        );
        let table = std::fs::read_to_string(root.path().join(TABLE_FILE)).unwrap();
        assert!(table.contains("| P6 | peak RSS | 40 MB | <= 64 MB (met) | [2026-12-06 11:00 UTC](docs/history/bench/2026-12-06-1100-suite.md) | `abc1234` |"), "{table}");
        assert!(!table.contains("42 MB"), "{table}");
    }
}
