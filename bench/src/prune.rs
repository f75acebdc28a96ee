//! The idempotency prune benchmark (issue 15): how long the write lock is held while the
//! requests of a full window expire. It fills an on-disk database, through the applier the
//! aggregator runs, with `remembered` single-record idempotent requests spread evenly over one
//! window of log time, then folds `steady` more at the same pace, so that as many old requests
//! die (and are pruned after each commit) as new ones arrive: the steady state of an aggregator
//! at that rate. Every `Applier::commit` (its transaction and the prune transactions after it)
//! is timed; the fill phase, where nothing is due yet, is the baseline under the same
//! conditions. It also measures what a remembered request costs on disk.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::Record;
use tally_pipeline::record::{encode_request, encode_value, request_fingerprint};
use tally_pipeline::store::{LockHeld, OpenMode, Store};

use crate::report::{goal, Recorded, Row, Stamp};

#[derive(Debug, Clone)]
pub struct Config {
    /// Requests remembered when pruning starts (one window's worth).
    pub remembered: u64,
    /// Requests folded after that, at the same pace.
    pub steady: u64,
    /// Records per commit.
    pub batch: u64,
    pub partitions: i32,
    pub window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            remembered: 10_000_000,
            steady: 3_000_000,
            batch: 6_000,
            partitions: 12,
            window: Duration::from_secs(3600),
        }
    }
}

/// Write-lock hold times of one phase, in milliseconds: each commit's own transaction, and
/// each prune transaction after it.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub commits: usize,
    pub records_per_s: f64,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    pub commit_max_ms: f64,
    pub prune_transactions: usize,
    pub pruned: usize,
    pub prune_max_ms: f64,
    /// The longest `Applier::commit` call, its transaction and its prune transactions together.
    pub whole_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub remembered: u64,
    pub steady: u64,
    pub batch: u64,
    pub window_s: u64,
    /// Requests per second of log time that fill one window with `remembered`.
    pub rate_per_s: f64,
    pub fill: Phase,
    pub prune: Phase,
    /// Requests stored when the fill ended, and the database's size then.
    pub rows_at_fill: u64,
    pub bytes_per_request: f64,
    /// Requests stored at the end, and how many of them were dead (not yet pruned).
    pub rows_at_end: u64,
    pub dead_left: u64,
}

/// An idempotency key as clients make them (a UUID's 36 characters).
fn request_key(n: u64) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sums up a phase from each commit's lock times and whole duration.
fn phase(held: &[(LockHeld, Duration)], records: u64, elapsed: Duration) -> Phase {
    let mut commits: Vec<f64> = held.iter().map(|(h, _)| ms(h.commit)).collect();
    commits.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((commits.len() as f64 * q).ceil() as usize).clamp(1, commits.len());
        commits[i - 1]
    };
    let max = |f: &dyn Fn(&(LockHeld, Duration)) -> f64| held.iter().map(f).fold(0.0, f64::max);
    Phase {
        commits: commits.len(),
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        commit_p50_ms: at(0.5),
        commit_p99_ms: at(0.99),
        commit_max_ms: at(1.0),
        prune_transactions: held.iter().map(|(h, _)| h.prune_transactions).sum(),
        pruned: held.iter().map(|(h, _)| h.pruned).sum(),
        prune_max_ms: max(&|(h, _)| ms(h.longest_prune)),
        whole_max_ms: max(&|(_, whole)| ms(*whole)),
    }
}

pub fn run(cfg: &Config, dir: &std::path::Path) -> anyhow::Result<Report> {
    let path = dir.join("prune-bench.db");
    let mut store = Store::open(&path, "bench", OpenMode::CreateNew)
        .with_context(|| format!("cannot create {}", path.display()))?;
    store.bind_idempotency_window(Some(cfg.window))?;
    let mut applier = Applier::new(store);
    applier.assign(&(0..cfg.partitions).collect::<Vec<_>>())?;
    let step_us = cfg.window.as_micros() as f64 / cfg.remembered as f64;
    let t0: i64 = 1_800_000_000_000;
    let value = encode_value(1);
    let fp = request_fingerprint([("page", 1)]);
    let mut offsets = vec![0i64; cfg.partitions as usize];
    let mut fold_phase = |applier: &mut Applier, from: u64, to: u64| -> anyhow::Result<Phase> {
        let mut held = Vec::new();
        let started = Instant::now();
        for n in from..to {
            let p = (n % cfg.partitions as u64) as i32;
            let ts = t0 + (n as f64 * step_us / 1000.0) as i64;
            let header = encode_request(&request_key(n), 0, &fp);
            let key = format!("page:{}", n % 10_000);
            let offset = &mut offsets[p as usize];
            applier.fold(
                p,
                &Record::with_request(*offset, key.as_bytes(), &value, ts, &header),
            )?;
            *offset += 1;
            if (n + 1 - from).is_multiple_of(cfg.batch) || n + 1 == to {
                let t = Instant::now();
                let report = applier.commit()?;
                held.push((report.lock_held, t.elapsed()));
            }
        }
        Ok(phase(&held, to - from, started.elapsed()))
    };
    let fill = fold_phase(&mut applier, 0, cfg.remembered)?;
    let store = applier.store();
    let rows_at_fill = store.request_count()?;
    store
        .connection()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    let bytes: i64 = store.connection().query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| r.get(0),
    )?;
    let prune = fold_phase(&mut applier, cfg.remembered, cfg.remembered + cfg.steady)?;
    let store = applier.store();
    let window_ms = cfg.window.as_millis() as i64;
    let dead_left: i64 = store.connection().query_row(
        "SELECT count(*) FROM requests r JOIN offsets o ON o.partition = r.partition
         WHERE r.first_seen < o.log_clock - ?1",
        [window_ms],
        |r| r.get(0),
    )?;
    Ok(Report {
        remembered: cfg.remembered,
        steady: cfg.steady,
        batch: cfg.batch,
        window_s: cfg.window.as_secs(),
        rate_per_s: cfg.remembered as f64 / cfg.window.as_secs_f64(),
        fill,
        prune,
        rows_at_fill,
        bytes_per_request: bytes as f64 / rows_at_fill.max(1) as f64,
        rows_at_end: store.request_count()?,
        dead_left: dead_left as u64,
    })
}

/// The run's page in the history folder; its raw numbers are in `json_name` beside it.
pub fn page(r: &Report, stamp: &Stamp, json_name: &str) -> String {
    let row = |name: &str, p: &Phase| {
        format!(
            "| {name} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} ({} rows) | {:.1} | {:.1} |",
            p.commits,
            p.records_per_s,
            p.commit_p50_ms,
            p.commit_p99_ms,
            p.commit_max_ms,
            p.prune_transactions,
            p.pruned,
            p.prune_max_ms,
            p.whole_max_ms
        )
    };
    let longest = longest_hold_ms(r);
    let met = if longest < 100.0 { "yes" } else { "**no**" };
    format!(
        "# Idempotency prune run of {}\n\n\
         Machine: {}. Commit: `{}`. Profile: release. Command: `{COMMAND}`. No broker: the applier and \
         store the aggregator runs, on an on-disk database (WAL, synchronous=FULL). Window \
         {} s of log time; {} single-record requests (36-character keys, 12 partitions) fill \
         it, i.e. {:.0} requests/s; then {} more at the same pace, so old ones expire as fast \
         as new ones come. {} records per commit. Times are write-lock holds, in ms: each \
         commit's transaction, and each prune transaction after it (other writers may go \
         between them); \"whole\" is one `Applier::commit` call with its prunes.\n\n\
         | phase | commits | records/s | commit p50 | commit p99 | commit max | prune transactions | prune max | whole max |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n{}\n\n\
         Longest write-lock hold while pruning: {longest:.1} ms (target < 100 ms: {met}). \
         Remembered at the end of the fill: {} requests, {:.0} bytes each on disk (rows and the \
         age index). At the end: {} stored, {} of them dead and not yet pruned.\n\n\
         Raw numbers: [`{json_name}`]({json_name}).\n",
        stamp.date,
        stamp.machine,
        stamp.commit,
        r.window_s,
        r.remembered,
        r.rate_per_s,
        r.steady,
        r.batch,
        row("fill (nothing due)", &r.fill),
        row("steady (pruning)", &r.prune),
        r.rows_at_fill,
        r.bytes_per_request,
        r.rows_at_end,
        r.dead_left,
    )
}

/// How the prune benchmark is run (the command column of the current-figures table).
pub const COMMAND: &str = "cargo run --release -p tally-bench --bin prune-bench";

/// The longest write-lock hold while requests expire: commits and prune transactions alike.
pub fn longest_hold_ms(r: &Report) -> f64 {
    r.prune.commit_max_ms.max(r.prune.prune_max_ms)
}

/// Whether pruning kept up: nothing dead left beyond one commit's budget.
pub fn kept_up(r: &Report) -> bool {
    r.dead_left <= r.batch
}

/// The run ready for [`crate::report::record`]: its page, raw numbers and its rows of the
/// current-figures table.
pub fn recorded(r: &Report, stamp: &Stamp) -> anyhow::Result<Recorded> {
    let longest = longest_hold_ms(r);
    let json_name = stamp.file("prune", "json");
    Ok(Recorded {
        kind: "prune",
        broker: "none (no broker)".into(),
        command: COMMAND.into(),
        page: page(r, stamp, &json_name),
        raw: serde_json::to_value(r)?,
        rows: vec![
            Row {
                measure: "Prune".into(),
                what: format!(
                    "longest write-lock hold (ms) while a full window of {} remembered requests expires, {} records per commit",
                    r.remembered, r.batch
                ),
                figure: format!("{longest:.1} ms ({} dead left)", r.dead_left),
                goal: goal("< 100 ms", longest < 100.0),
            },
            Row {
                measure: "Prune bytes".into(),
                what: "bytes on disk per remembered request (rows and the age index)".into(),
                figure: format!("{:.0} bytes", r.bytes_per_request),
                goal: String::new(),
            },
        ],
    })
}
