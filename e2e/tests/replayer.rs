//! The replayer end to end on a real broker: rebuild from the start, from a snapshot and to a
//! point, as-of, verify catching tampering, a killed rebuild resumed with `--continue`, time
//! ranges, and the README's recovery runbook run as written. Every sum is checked against the
//! ground truth (what ingest acknowledged).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{assert_sums, now_ms, Pipeline};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::client::{http, GroundTruth};
use tally_testkit::process::Proc;
use tally_testkit::wait_for;

/// Sends `batches` NDJSON batches of `size` random increments over `keys` keys; returns what
/// was acknowledged.
fn post_batches(base: &str, batches: usize, size: usize, keys: usize, seed: u64) -> GroundTruth {
    let client = http();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = GroundTruth::default();
    for _ in 0..batches {
        let incs: Vec<(String, i64)> = (0..size)
            .map(|_| {
                let k = rng.gen_range(0..keys);
                // Some keys need quoting in CSV.
                let key = if k % 7 == 0 {
                    format!("k,\"{k}\"")
                } else {
                    format!("k-{k}")
                };
                (key, rng.gen_range(-1000..=1000))
            })
            .collect();
        let body: String = incs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
            .collect();
        let r = client
            .post(format!("{base}/increments"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .expect("ingest answers");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().expect("json body");
        assert_eq!(v["accepted"].as_u64(), Some(size as u64), "{v}");
        for (k, d) in &incs {
            truth.add(k, *d);
        }
        for (p, o) in v["offsets"].as_object().unwrap() {
            truth.landed(p.parse().unwrap(), o.as_i64().unwrap());
        }
    }
    truth
}

/// Per-key sums of a database (rows of all partitions added up).
fn key_sums(db: &Path, topic: &str) -> BTreeMap<String, i64> {
    let store = Store::open(db, topic, OpenMode::Existing).unwrap();
    let mut out = BTreeMap::new();
    for ((k, _), s) in store.all_sums().unwrap() {
        *out.entry(k).or_insert(0) += s;
    }
    out
}

fn stored_offsets(db: &Path, topic: &str) -> BTreeMap<i32, i64> {
    Store::open(db, topic, OpenMode::Existing)
        .unwrap()
        .stored_offsets()
        .unwrap()
}

/// `P:O,...` as the command line takes it.
fn positions(offsets: &BTreeMap<i32, i64>) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(p: &Pipeline, args: &[&str]) -> Output {
    let out = p.replayer(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "replayer {args:?}: {}",
        text(&out)
    );
    out
}

/// The next offset after every acknowledged record, per partition.
fn ends(truth: &GroundTruth) -> BTreeMap<i32, i64> {
    truth.max_offsets.iter().map(|(p, o)| (*p, o + 1)).collect()
}
#[test]
fn rebuild_from_earliest_from_a_snapshot_and_to_a_point_match_live_and_as_of() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let agg = p.aggregator(&[]);
    let first = post_batches(&ingest.base, 20, 200, 300, 1);
    p.wait_caught_up(&agg.base, &first, Duration::from_secs(120));

    // A snapshot of live at a point P:O, taken while the aggregator runs (one read transaction).
    let snap = p.dir.path().join("snapshot.db");
    Store::open(&p.db(), &p.topic, OpenMode::Existing)
        .unwrap()
        .connection()
        .execute("VACUUM INTO ?1", [snap.to_str().unwrap()])
        .unwrap();
    let at = stored_offsets(&snap, &p.topic);
    assert_eq!(at, ends(&first), "the snapshot holds all of the first load");
    assert_eq!(at.len(), 4, "every partition got records");
    let at = positions(&at);

    let mut truth = first.clone();
    truth.merge(post_batches(&ingest.base, 20, 200, 300, 2));
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
    let live = Store::open(&p.db(), &p.topic, OpenMode::Existing).unwrap();

    // From earliest: the same rows as live (per key and partition), and the ground truth.
    let full = p.dir.path().join("full.db");
    run_ok(&p, &["rebuild", "--db", full.to_str().unwrap()]);
    let full_store = Store::open(&full, &p.topic, OpenMode::Existing).unwrap();
    assert_eq!(full_store.all_sums().unwrap(), live.all_sums().unwrap());
    assert_eq!(full_store.stored_offsets().unwrap(), ends(&truth));
    assert_eq!(key_sums(&full, &p.topic), truth.sums);

    // An existing database is refused without --continue, with a hint.
    let out = p.replayer(&["rebuild", "--db", snap.to_str().unwrap(), "--from", &at]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("--continue"),
        "{err}"
    );

    // From P:O onto the snapshot taken at P:O: equal to live.
    run_ok(
        &p,
        &[
            "rebuild",
            "--db",
            snap.to_str().unwrap(),
            "--from",
            &at,
            "--continue",
        ],
    );
    assert_eq!(
        Store::open(&snap, &p.topic, OpenMode::Existing)
            .unwrap()
            .all_sums()
            .unwrap(),
        live.all_sums().unwrap()
    );
    assert_eq!(key_sums(&snap, &p.topic), truth.sums);

    // To P:O: the first load only, and the same as `as-of` at P:O (JSON and CSV).
    let upto = p.dir.path().join("upto.db");
    run_ok(
        &p,
        &["rebuild", "--db", upto.to_str().unwrap(), "--to", &at],
    );
    assert_eq!(key_sums(&upto, &p.topic), first.sums);
    let json_out = p.dir.path().join("as-of.json");
    run_ok(
        &p,
        &["as-of", "--at", &at, "--out", json_out.to_str().unwrap()],
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let as_of: BTreeMap<String, i64> = serde_json::from_value(v["sums"].clone()).unwrap();
    assert_eq!(as_of, key_sums(&upto, &p.topic));
    assert_eq!(v["offsets"], json!(ends(&first)));

    let key = first.sums.keys().find(|k| k.contains(',')).unwrap().clone();
    let out = run_ok(&p, &["as-of", "--at", &at, "--key", &key]);
    let mut rows = csv::Reader::from_reader(&out.stdout[..]);
    let rows: Vec<(String, i64)> = rows.deserialize().map(Result::unwrap).collect();
    assert_eq!(rows, vec![(key.clone(), first.sums[&key])]);
    let out = run_ok(&p, &["as-of", "--at", &at, "--prefix", "k-1"]);
    let rows: BTreeMap<String, i64> = csv::Reader::from_reader(&out.stdout[..])
        .deserialize()
        .map(Result::unwrap)
        .collect();
    let want: BTreeMap<String, i64> = first
        .sums
        .iter()
        .filter(|(k, _)| k.starts_with("k-1"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(rows, want);
}

#[test]
fn verify_catches_an_altered_sum_a_missing_key_and_an_extra_key() {
    let p = Pipeline::new(3);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&[]);
    let truth = post_batches(&ingest.base, 10, 200, 100, 3);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    let db = p.db();
    let out = run_ok(&p, &["verify", "--db", db.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    agg.proc.terminate(Duration::from_secs(30));

    let live = Store::open(&db, &p.topic, OpenMode::Existing).unwrap();
    let rows = live.all_sums().unwrap();
    let mut it = rows.iter();
    let ((altered, altered_p), altered_sum) = it.next().unwrap();
    let ((missing, missing_p), missing_sum) = it.find(|((_, p), _)| p != altered_p).unwrap();
    let tampered = |name: &str, sql: &str, params: &[&dyn rusqlite::ToSql]| {
        let copy = p.dir.path().join(name);
        live.connection()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        assert_eq!(c.execute(sql, params).unwrap(), 1);
        copy
    };
    let cases = [
        (
            tampered(
                "altered.db",
                "UPDATE sums SET sum = sum + 1 WHERE key = ?1 AND partition = ?2",
                &[altered, altered_p],
            ),
            altered.clone(),
            vec![(*altered_sum).to_string(), (altered_sum + 1).to_string()],
            *altered_p,
        ),
        (
            tampered(
                "missing.db",
                "DELETE FROM sums WHERE key = ?1 AND partition = ?2",
                &[missing, missing_p],
            ),
            missing.clone(),
            vec![missing_sum.to_string(), "(missing)".into()],
            *missing_p,
        ),
        (
            tampered(
                "extra.db",
                "INSERT INTO sums (key, partition, origin, sum) VALUES ('never-sent', ?1, 0, 5)",
                &[altered_p],
            ),
            "never-sent".into(),
            vec!["(missing)".into(), "5".into()],
            *altered_p,
        ),
    ];
    for (copy, key, values, partition) in &cases {
        let out = p.replayer(&["verify", "--db", copy.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(stdout.contains("MISMATCH: 1 differing keys"), "{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(key.as_str()))
            .unwrap_or_else(|| panic!("no line for {key}: {stdout}"));
        for v in values {
            assert!(line.contains(v.as_str()), "{line} lacks {v}");
        }
        assert!(line.contains(&format!(" {partition} ")), "{line}");

        // --partitions: the others are clean, the tampered one is not.
        let others: Vec<String> = (0..3)
            .filter(|q| q != partition)
            .map(|q| q.to_string())
            .collect();
        let out = p.replayer(&[
            "verify",
            "--db",
            copy.to_str().unwrap(),
            "--partitions",
            &others.join(","),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let out = p.replayer(&[
            "verify",
            "--db",
            copy.to_str().unwrap(),
            "--partitions",
            &partition.to_string(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }

    // Could not run: exit 2 and one line that says what to do.
    let out = p.replayer(&["verify", "--db", "/nonexistent/tally.db"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_rebuild_killed_half_way_and_rerun_with_continue_ends_exact() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    // Enough records that the rebuild is still running at its first commit (500 ms in): on
    // Kafka a rebuild folds about 100k records a second.
    let truth = post_batches(&ingest.base, 120, 5000, 2000, 4);
    let total: i64 = ends(&truth).values().sum();
    assert_eq!(total, 600_000);

    let db = p.dir.path().join("rebuild.db");
    let args: Vec<String> = [
        "--brokers",
        &p.broker.addr(),
        "--topic",
        &p.topic,
        "--partitions",
        "4",
        "rebuild",
        "--db",
        db.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rebuild = Proc::start("replayer", &args, &[], p.dir.path());
    // Committed progress, read without writing (the replayer owns the file).
    let committed = || -> i64 {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT COALESCE(SUM(next_offset), 0) FROM offsets",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    wait_for(
        "the rebuild's first commit",
        Duration::from_secs(60),
        || (committed() > 0).then_some(()),
    );
    // Frozen at once (SIGSTOP), so what it committed cannot move between reading it and the
    // kill. Where it was is a figure, not a guarantee: a fast machine may have folded more
    // before the first poll saw a commit. Whatever was committed, the checks below hold.
    rebuild.stop_signal();
    let at_kill = committed();
    rebuild.kill();
    assert!(
        at_kill > 0 && at_kill <= total,
        "killed after its first commit: {at_kill} of {total} committed\n{}",
        rebuild.log_text()
    );
    eprintln!("killed after {at_kill} of {total} records were committed");
    // What was committed is a consistent prefix: the fold of the log up to its offsets.
    run_ok(&p, &["verify", "--db", db.to_str().unwrap()]);

    let out = run_ok(&p, &["rebuild", "--db", db.to_str().unwrap(), "--continue"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} records", total - at_kill)),
        "the rerun folded only the rest: {stdout}"
    );
    assert_eq!(stored_offsets(&db, &p.topic), ends(&truth));
    assert_eq!(key_sums(&db, &p.topic), truth.sums);
}

#[test]
fn a_time_range_selects_exactly_the_records_of_its_window() {
    let p = Pipeline::new(3);
    let ingest = p.ingest(&[]);
    let gap = Duration::from_millis(1500);
    // Three windows separated by 1.5 s pauses; a boundary is the middle of a pause.
    let mut windows = Vec::new();
    let mut bounds = Vec::new();
    for seed in 0..3 {
        if seed > 0 {
            let quiet_from = now_ms();
            std::thread::sleep(gap);
            bounds.push((quiet_from + now_ms()) / 2);
        }
        windows.push(post_batches(&ingest.base, 5, 100, 50, 10 + seed));
    }
    let (t1, t2) = (bounds[0], bounds[1]);
    let t2_rfc3339 = chrono::DateTime::from_timestamp_millis(t2)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // The middle window, with the start in ms and the end as RFC 3339.
    let middle = p.dir.path().join("middle.db");
    let out = run_ok(
        &p,
        &[
            "rebuild",
            "--db",
            middle.to_str().unwrap(),
            "--from",
            &format!("ts:{t1}"),
            "--to",
            &t2_rfc3339,
        ],
    );
    eprintln!("middle window rebuild:\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 500 records "));
    assert_eq!(key_sums(&middle, &p.topic), windows[1].sums);

    // Before the first boundary: the first window only; as-of the second: the first two.
    let first = p.dir.path().join("first.db");
    run_ok(
        &p,
        &[
            "rebuild",
            "--db",
            first.to_str().unwrap(),
            "--to",
            &format!("ts:{t1}"),
        ],
    );
    assert_eq!(key_sums(&first, &p.topic), windows[0].sums);
    let json_out = p.dir.path().join("two.json");
    run_ok(
        &p,
        &[
            "as-of",
            "--at",
            &format!("ts:{t2}"),
            "--out",
            json_out.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let got: BTreeMap<String, i64> = serde_json::from_value(v["sums"].clone()).unwrap();
    let mut two = windows[0].clone();
    two.merge(windows[1].clone());
    assert_eq!(got, two.sums);

    // From the second boundary to the end: the last window.
    let last = p.dir.path().join("last.db");
    run_ok(
        &p,
        &[
            "rebuild",
            "--db",
            last.to_str().unwrap(),
            "--from",
            &format!("ts:{t2}"),
        ],
    );
    assert_eq!(key_sums(&last, &p.topic), windows[2].sums);

    // A time after every record means the end of each partition.
    let later = now_ms() + 60_000;
    let out = run_ok(&p, &["as-of", "--at", &format!("ts:{later}")]);
    let got: BTreeMap<String, i64> = csv::Reader::from_reader(&out.stdout[..])
        .deserialize()
        .map(Result::unwrap)
        .collect();
    let mut all = two;
    all.merge(windows[2].clone());
    assert_eq!(got, all.sums);
}

/// README, "Recovery", run as written: database lost → stop aggregators → rebuild → start;
/// database suspect → verify.
#[test]
fn the_recovery_runbook_recovers_a_deleted_database() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&[]);
    let mut truth = post_batches(&ingest.base, 10, 300, 200, 5);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));

    // The database is lost.
    let db = p.db();
    let lost = |db: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let f = format!("{}{suffix}", db.display());
            let _ = std::fs::remove_file(f);
        }
    };
    // 1. Stop the aggregators.
    let status = agg.proc.terminate(Duration::from_secs(30));
    assert!(status.success(), "aggregator stops cleanly: {status:?}");
    lost(&db);
    // 2. Rebuild into the same path.
    run_ok(&p, &["rebuild", "--db", db.to_str().unwrap()]);
    // 3. Start the aggregators on it: exact sums, and they go on from the stored offsets.
    agg.restart();
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
    truth.merge(post_batches(&ingest.base, 5, 300, 200, 6));
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
    assert_eq!(key_sums(&db, &p.topic), truth.sums);

    // Database suspect: verify while everything runs.
    let out = run_ok(&p, &["verify", "--db", db.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

/// Issue 17: rerunning `rebuild --continue` on a rebuild that had finished succeeds and says
/// there was nothing left; "another process wrote" appears only when something did write to
/// the database's offsets during a continued replay. Also: the broker and topic flags work after
/// the subcommand and from the environment.
#[test]
fn a_continue_with_nothing_left_succeeds_and_only_a_real_writer_is_reported() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let first = post_batches(&ingest.base, 10, 5000, 2000, 7);
    let mut truth = first.clone();
    truth.merge(post_batches(&ingest.base, 10, 5000, 2000, 8));
    let total: i64 = ends(&truth).values().sum();

    // A rebuild that finished, continued twice: nothing to do, exit 0, and it says so.
    let done = p.dir.path().join("done.db");
    run_ok(&p, &["rebuild", "--db", done.to_str().unwrap()]);
    assert_eq!(stored_offsets(&done, &p.topic), ends(&truth));
    for _ in 0..2 {
        let out = run_ok(
            &p,
            &["rebuild", "--db", done.to_str().unwrap(), "--continue"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("nothing left to replay: ") && stdout.contains("4 partitions"),
            "{}",
            text(&out)
        );
        assert!(!text(&out).contains("another process"), "{}", text(&out));
    }
    assert_eq!(stored_offsets(&done, &p.topic), ends(&truth));
    assert_eq!(key_sums(&done, &p.topic), truth.sums);

    // Flags after the subcommand, and from the environment alone.
    let db = done.to_str().unwrap();
    let addr = p.broker.addr();
    let after = std::process::Command::new(tally_testkit::process::bin("replayer"))
        .args([
            "verify",
            "--brokers",
            &addr,
            "--topic",
            &p.topic,
            "--db",
            db,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert!(String::from_utf8_lossy(&after.stdout).starts_with("ok: "));
    let from_env = std::process::Command::new(tally_testkit::process::bin("replayer"))
        .args(["verify", "--db", db])
        .env("RUST_LOG", "warn")
        .env("TALLY_BROKERS", &addr)
        .env("TALLY_TOPIC", &p.topic)
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(0), "{}", text(&from_env));
    // The wrong topic from the environment is overridden by the flag after the subcommand.
    let overridden = std::process::Command::new(tally_testkit::process::bin("replayer"))
        .args(["verify", "--topic", &p.topic, "--db", db])
        .env("RUST_LOG", "warn")
        .env("TALLY_BROKERS", &addr)
        .env("TALLY_TOPIC", "no-such-topic")
        .output()
        .unwrap();
    assert_eq!(overridden.status.code(), Some(0), "{}", text(&overridden));

    // A continued replay (the first half was rebuilt with --to) during which another writer
    // moves one partition's stored offset: that partition is named, exit 2.
    let half = p.dir.path().join("half.db");
    let half_at = positions(&ends(&first));
    run_ok(
        &p,
        &["rebuild", "--db", half.to_str().unwrap(), "--to", &half_at],
    );
    let half_sum: i64 = ends(&first).values().sum();
    let args: Vec<String> = [
        "--brokers",
        &addr,
        "--topic",
        &p.topic,
        "rebuild",
        "--db",
        half.to_str().unwrap(),
        "--continue",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rerun = Proc::start("replayer", &args, &[], p.dir.path());
    // Once it has read the stored offsets, the broker stops answering for a moment (so the
    // replay cannot finish meanwhile) and the other writer moves the offset of a partition the
    // replay has not finished, in one transaction.
    wait_for(
        "the continued rebuild to read its stored offsets",
        Duration::from_secs(60),
        || {
            rerun
                .log_text()
                .contains("continuing from the database's stored offsets")
                .then_some(())
        },
    );
    p.broker.pause();
    let want = ends(&truth);
    let mut c = rusqlite::Connection::open(&half).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let now: BTreeMap<i32, i64> = {
        let mut s = tx
            .prepare("SELECT partition, next_offset FROM offsets")
            .unwrap();
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let (&partition, &at) = now
        .iter()
        .find(|(q, at)| **at < want[q])
        .unwrap_or_else(|| {
            panic!(
                "the replay finished at once ({now:?}):\n{}",
                rerun.log_text()
            )
        });
    let moved_to = at + 1;
    tx.execute(
        "UPDATE offsets SET next_offset = ?1 WHERE partition = ?2",
        [moved_to, partition as i64],
    )
    .unwrap();
    tx.commit().unwrap();
    p.broker.resume();
    let status = rerun.wait(Duration::from_secs(120));
    let log = rerun.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert!(
        line.contains("another process wrote")
            && line.contains(&format!("{partition} (now at offset {moved_to})"))
            && line.contains("rebuild --continue"),
        "{line}"
    );
    assert!(total > half_sum);
}
