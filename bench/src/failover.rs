//! Failover of a dead member's partitions, with and without warm standbys (issue 16, item 3).
//!
//! One Kafka node, one log of `records` increments written once; then, for each mode on the
//! same log and broker, two aggregators `a` and `b` of a fresh group, each with a database of
//! its own (`--advertise-url`), both with `--standby` or both without. When both have folded
//! what they own (and, with standbys, `b` also what `a` owns), `a` is killed with SIGKILL and
//! not restarted. Measured from the kill: when `b` owns every partition (the session timeout
//! and the rebalance), and when its committed offsets reach the log's end, from which moment
//! every read through `b` is exact. Then every key is read through `b` (listing, and a sample
//! of `a`'s keys one by one) and compared with what the broker acknowledged, losses and doubles
//! counted apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use serde_json::Value;
use tally_pipeline::client_config;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::partition::partition_for;
use tally_pipeline::record::encode_value;
use tally_pipeline::topic;
use tally_testkit::broker::Broker;
use tally_testkit::client::Drift;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique};

use crate::report::{goal, Recorded, Row, Stamp};

#[derive(Debug, Clone)]
pub struct Config {
    pub records: u64,
    pub keys: u64,
    pub partitions: i32,
    /// The members' `--session-timeout-ms`: the floor of every failover.
    pub session_timeout_ms: u64,
    /// Logs and databases go under it.
    pub work_dir: PathBuf,
    /// Which build of the binaries runs (`TALLY_PROFILE`).
    pub profile: String,
}

impl Config {
    pub fn new(work_dir: &Path) -> Config {
        Config {
            records: 10_000_000,
            keys: 100_000,
            partitions: 12,
            session_timeout_ms: 6_000,
            work_dir: work_dir.to_owned(),
            profile: "release".into(),
        }
    }
}

/// One mode's failover.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub standby: bool,
    /// From starting the members until both had folded what they fold before the kill.
    pub warm_s: f64,
    /// Records of `a`'s partitions that `b`'s database lacked when `a` was killed.
    pub left_to_fold: i64,
    /// From the kill until `b` owned every partition.
    pub owned_after_s: f64,
    /// From the kill until `b` had committed every partition to the log's end: reads of `a`'s
    /// keys are exact from then on.
    pub failover_s: f64,
    pub keys_checked: usize,
    /// Acknowledged increments missing from what `b` answers, and increments it counts beyond
    /// them, summed over keys.
    pub lost: i64,
    pub doubled: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub profile: String,
    pub records: u64,
    pub keys: u64,
    pub partitions: i32,
    pub session_timeout_ms: u64,
    pub produce_per_s: f64,
    pub without_standby: Outcome,
    pub with_standby: Outcome,
}

impl Results {
    pub fn exact(&self) -> bool {
        [&self.without_standby, &self.with_standby]
            .iter()
            .all(|o| o.lost == 0 && o.doubled == 0)
    }
}

/// What the broker acknowledged: sums per key and each partition's log end.
struct Log {
    sums: BTreeMap<String, i64>,
    ends: BTreeMap<i32, i64>,
}

pub fn run(cfg: &Config) -> anyhow::Result<Results> {
    std::env::set_var("TALLY_PROFILE", &cfg.profile);
    std::fs::create_dir_all(&cfg.work_dir)?;
    let broker = Broker::start();
    let topic = unique("failover");
    let kafka = KafkaArgs::new(&broker.addr(), &topic, cfg.partitions);
    let started = Instant::now();
    let log = tokio::runtime::Runtime::new()?.block_on(produce(&kafka, cfg))?;
    let produce_per_s = cfg.records as f64 / started.elapsed().as_secs_f64();
    eprintln!("failover: log of {} records written", cfg.records);
    let without_standby = failover(cfg, &broker, &topic, &log, false)?;
    eprintln!("failover without standby: {without_standby:?}");
    let with_standby = failover(cfg, &broker, &topic, &log, true)?;
    eprintln!("failover with standby: {with_standby:?}");
    Ok(Results {
        profile: cfg.profile.clone(),
        records: cfg.records,
        keys: cfg.keys,
        partitions: cfg.partitions,
        session_timeout_ms: cfg.session_timeout_ms,
        produce_per_s,
        without_standby,
        with_standby,
    })
}

/// Writes the log in chunks (a bounded number of deliveries awaited at a time).
async fn produce(kafka: &KafkaArgs, cfg: &Config) -> anyhow::Result<Log> {
    topic::ensure(kafka).await?;
    let producer: FutureProducer =
        client_config::producer(kafka, Duration::ZERO, Some(1_000_000)).create()?;
    let value = encode_value(1);
    let mut log = Log {
        sums: BTreeMap::new(),
        ends: BTreeMap::new(),
    };
    const CHUNK: u64 = 200_000;
    let mut i = 0;
    while i < cfg.records {
        let n = CHUNK.min(cfg.records - i);
        let mut pending = Vec::with_capacity(n as usize);
        for j in i..i + n {
            let key = format!("key-{}", j.wrapping_mul(2_654_435_761) % cfg.keys);
            let d = crate::produce::send(&producer, &kafka.topic, key.as_bytes(), &value).await?;
            pending.push((key, d));
        }
        for (key, d) in pending {
            let d = d
                .await?
                .map_err(|(e, _)| anyhow::anyhow!("record not acknowledged: {e}"))?;
            *log.sums.entry(key).or_insert(0) += 1;
            let end = log.ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
        }
        i += n;
    }
    Ok(log)
}

struct Member {
    proc: Proc,
    base: String,
}

fn member(
    cfg: &Config,
    broker: &Broker,
    topic: &str,
    group: &str,
    db: &Path,
    standby: bool,
) -> Member {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--partitions",
        &cfg.partitions.to_string(),
        "--group",
        group,
        "--db",
        &db.display().to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--advertise-url",
        &base,
        "--session-timeout-ms",
        &cfg.session_timeout_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if standby {
        args.push("--standby".into());
    }
    let proc = Proc::start(
        "aggregator",
        &args,
        &[("RUST_LOG", "warn".into())],
        &cfg.work_dir,
    );
    let c = reqwest::blocking::Client::new();
    tally_testkit::wait_for(&format!("{base} healthy"), Duration::from_secs(60), || {
        c.get(format!("{base}/healthz"))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
    });
    Member { proc, base }
}

/// A member's `/offsets`: every partition its database holds, with its stored next offset,
/// and which of them it owns now.
struct Offsets {
    stored: BTreeMap<i32, i64>,
    owned: BTreeSet<i32>,
}

fn offsets(c: &reqwest::blocking::Client, base: &str) -> Option<Offsets> {
    let v: Value = c.get(format!("{base}/offsets")).send().ok()?.json().ok()?;
    let mut o = Offsets {
        stored: BTreeMap::new(),
        owned: BTreeSet::new(),
    };
    for p in v["partitions"].as_array()? {
        let id = p["partition"].as_i64()? as i32;
        o.stored.insert(id, p["next_offset"].as_i64()?);
        if p["owned"] == true {
            o.owned.insert(id);
        }
    }
    Some(o)
}

fn reached(stored: &BTreeMap<i32, i64>, parts: &BTreeSet<i32>, ends: &BTreeMap<i32, i64>) -> bool {
    parts
        .iter()
        .all(|p| stored.get(p).copied().unwrap_or(0) >= ends.get(p).copied().unwrap_or(0))
}

fn failover(
    cfg: &Config,
    broker: &Broker,
    topic: &str,
    log: &Log,
    standby: bool,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("tally-failover-")
        .tempdir_in(&cfg.work_dir)?;
    let group = unique("failover-group");
    let c = reqwest::blocking::Client::new();
    let started = Instant::now();
    let db = |name: &str| dir.path().join(name);
    let mut a = member(cfg, broker, topic, &group, &db("a.db"), standby);
    let mut b = member(cfg, broker, topic, &group, &db("b.db"), standby);
    let (owned_by_a, before) = wait_warm(&c, cfg, &a.base, &b.base, log, standby)?;
    let warm_s = started.elapsed().as_secs_f64();
    let left_to_fold: i64 = owned_by_a
        .iter()
        .map(|p| {
            (log.ends.get(p).copied().unwrap_or(0) - before.get(p).copied().unwrap_or(0)).max(0)
        })
        .sum();
    a.proc.kill();
    let (owned_after_s, failover_s) = wait_takeover(&c, cfg, &b.base, log)?;
    let (keys_checked, lost, doubled) = check(&c, &b.base, log, &owned_by_a, cfg.partitions)?;
    b.proc.kill();
    Ok(Outcome {
        standby,
        warm_s,
        left_to_fold,
        owned_after_s,
        failover_s,
        keys_checked,
        lost,
        doubled,
    })
}

/// Waits (at most an hour) until `a` and `b` share the partitions and have folded what they
/// fold (with standbys, `b` every partition); the partitions `a` owns, and what `b` stored.
fn wait_warm(
    c: &reqwest::blocking::Client,
    cfg: &Config,
    a: &str,
    b: &str,
    log: &Log,
    standby: bool,
) -> anyhow::Result<(BTreeSet<i32>, BTreeMap<i32, i64>)> {
    let all: BTreeSet<i32> = (0..cfg.partitions).collect();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if Instant::now() > deadline {
            bail!("the members did not fold the log within an hour");
        }
        std::thread::sleep(Duration::from_millis(200));
        let (Some(oa), Some(ob)) = (offsets(c, a), offsets(c, b)) else {
            continue;
        };
        let split = !oa.owned.is_empty()
            && !ob.owned.is_empty()
            && oa.owned.union(&ob.owned).count() == all.len();
        let b_folds = if standby { &all } else { &ob.owned };
        if split
            && reached(&oa.stored, &oa.owned, &log.ends)
            && reached(&ob.stored, b_folds, &log.ends)
        {
            return Ok((oa.owned, ob.stored));
        }
    }
}

/// From the kill, waits (at most an hour) until `b` owns every partition and then until it has
/// committed each to the log end: the seconds to each.
fn wait_takeover(
    c: &reqwest::blocking::Client,
    cfg: &Config,
    b: &str,
    log: &Log,
) -> anyhow::Result<(f64, f64)> {
    let all: BTreeSet<i32> = (0..cfg.partitions).collect();
    let killed = Instant::now();
    let mut owned_after_s = None;
    loop {
        if killed.elapsed() > Duration::from_secs(3600) {
            bail!("b did not take a's partitions over within an hour");
        }
        if let Some(o) = offsets(c, b) {
            if o.owned == all {
                let owned = *owned_after_s.get_or_insert(killed.elapsed().as_secs_f64());
                if reached(&o.stored, &all, &log.ends) {
                    return Ok((owned, killed.elapsed().as_secs_f64()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every key listed through `b`, and up to 500 of `a`'s keys read one by one, against the
/// acknowledged sums: (keys checked, lost, doubled).
fn check(
    c: &reqwest::blocking::Client,
    base: &str,
    log: &Log,
    owned_by_a: &BTreeSet<i32>,
    partitions: i32,
) -> anyhow::Result<(usize, i64, i64)> {
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("limit", "1000".to_owned())];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        // 503 while the member's view of the group still names the dead owner (it is read
        // every 0.5 s).
        let v: Value = tally_testkit::wait_for("a page of sums", Duration::from_secs(30), || {
            let r = c.get(format!("{base}/sums")).query(&q).send().ok()?;
            (r.status() == 200).then(|| r.json().ok()).flatten()
        });
        for s in v["sums"].as_array().context("sums list")? {
            let key = s["key"].as_str().context("key")?.to_owned();
            got.insert(key, s["sum"].as_i64().context("sum")?);
        }
        match v["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    let mut drift = Drift::between(&log.sums, &got);
    let mut one_by_one = 0;
    for (k, want) in &log.sums {
        if one_by_one == 500 {
            break;
        }
        if !owned_by_a.contains(&partition_for(k.as_bytes(), partitions)) {
            continue;
        }
        let r = c.get(format!("{base}/sums/{k}")).send()?;
        let have = if r.status() == 404 {
            0
        } else {
            r.error_for_status()?.json::<Value>()?["sum"]
                .as_i64()
                .context("sum")?
        };
        drift.add(*want, have);
        one_by_one += 1;
    }
    Ok((got.len() + one_by_one, drift.lost, drift.doubled))
}

/// How the failover benchmark is run (the command column of the current-figures table).
pub const COMMAND: &str = "cargo run --release -p tally-bench --bin failover-bench";

/// The run's page in the history folder; its raw numbers are in `json_name` beside it.
pub fn page(r: &Results, stamp: &Stamp, json_name: &str) -> String {
    let mut s = format!(
        "# Failover run of {}\n\nBroker: Apache Kafka {}, one KRaft node on this machine. \
         Machine: {}. Commit: `{}`. Profile: {}. Command: `{COMMAND}`. A log of {} records \
         over {} keys and {} partitions, written once; for each mode a fresh group of two \
         aggregators `a` and `b`, each with its own database, `--session-timeout-ms {}`. When \
         both had folded what they fold, `a` was killed (SIGKILL, not restarted). Times in \
         seconds from the kill.\n\n",
        stamp.date,
        tally_testkit::broker::kafka_version(),
        stamp.machine,
        stamp.commit,
        r.profile,
        r.records,
        r.keys,
        r.partitions,
        r.session_timeout_ms
    );
    s.push_str("| mode | records of a's partitions b lacked at the kill | b owns all | b exact (committed to the log end) | keys checked | lost | doubled | fold before the kill |\n|---|---|---|---|---|---|---|---|\n");
    for o in [&r.without_standby, &r.with_standby] {
        s.push_str(&format!(
            "| {} | {} | {:.1} | **{:.1}** | {} | {} | {} | {:.0} s |\n",
            if o.standby {
                "`--standby`"
            } else {
                "no standby"
            },
            o.left_to_fold,
            o.owned_after_s,
            o.failover_s,
            o.keys_checked,
            o.lost,
            o.doubled,
            o.warm_s
        ));
    }
    s.push_str(&format!(
        "\nThe log was written at {:.0} records/s. Exact: {}.\n\nRaw numbers: [`{json_name}`]({json_name}).\n",
        r.produce_per_s,
        if r.exact() { "yes, both modes" } else { "**no**" },
    ));
    s
}

/// The run ready for [`crate::report::record`]: its page, raw numbers and the two rows of
/// the current-figures table (failover without and with standbys).
pub fn recorded(r: &Results, stamp: &Stamp) -> anyhow::Result<Recorded> {
    let row = |o: &Outcome| {
        Row {
        measure: if o.standby {
            "Failover, standby".into()
        } else {
            "Failover".into()
        },
        what: format!(
            "seconds from SIGKILL of one of two aggregators{} until the survivor is exact (committed to the log end), {} records over {} partitions",
            if o.standby { " run with `--standby`" } else { "" },
            r.records,
            r.partitions
        ),
        figure: format!(
            "{:.1} s (owns all at {:.1} s; {} lost, {} doubled)",
            o.failover_s, o.owned_after_s, o.lost, o.doubled
        ),
        goal: goal("0 lost, 0 doubled", o.lost == 0 && o.doubled == 0),
    }
    };
    let json_name = stamp.file("failover", "json");
    Ok(Recorded {
        kind: "failover",
        broker: format!("Kafka {}, 1 node", tally_testkit::broker::kafka_version()),
        command: COMMAND.into(),
        page: page(r, stamp, &json_name),
        raw: serde_json::to_value(r)?,
        rows: vec![row(&r.without_standby), row(&r.with_standby)],
    })
}
