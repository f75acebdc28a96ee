//! A pipeline under test: broker, ingest and aggregators as processes, in one temp directory;
//! and the helpers every e2e test file shares: [`serial`], [`send`], [`increment`],
//! [`owned_partitions`] and [`now_ms`].
#![allow(dead_code)]

pub mod members;
pub mod reads;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};
use tally_testkit::broker::Broker;
use tally_testkit::client::{caught_up, http, offsets, GroundTruth};
use tally_testkit::netns::Host;
use tally_testkit::process::{bin, Proc};
use tally_testkit::{free_port, unique, wait_for, workspace_root};

pub struct Pipeline {
    pub broker: Broker,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
    pub dir: tempfile::TempDir,
}

pub struct Service {
    pub proc: Proc,
    pub base: String,
}

impl Pipeline {
    pub fn new(partitions: i32) -> Pipeline {
        Pipeline::on(Broker::start(), partitions)
    }

    /// A pipeline on a broker the test started (on a bridge address, say).
    pub fn on(broker: Broker, partitions: i32) -> Pipeline {
        Pipeline {
            broker,
            topic: unique("increments"),
            group: unique("group"),
            partitions,
            dir: tempfile::Builder::new()
                .prefix("tally-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("tally.db")
    }

    pub fn common(&self) -> Vec<String> {
        vec![
            "--brokers".into(),
            self.broker.addr(),
            "--topic".into(),
            self.topic.clone(),
            "--partitions".into(),
            self.partitions.to_string(),
        ]
    }

    pub fn ingest(&self, extra: &[&str]) -> Service {
        let port = free_port();
        let mut args = self.common();
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::start("ingest", &args, &[], self.dir.path());
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base, &proc);
        Service { proc, base }
    }

    pub fn aggregator(&self, extra: &[&str]) -> Service {
        self.aggregator_on(&self.db(), free_port(), extra)
    }

    /// An aggregator with a database of its own, `NAME.db`, that advertises its URL to the
    /// group so that reads of keys other members own are forwarded to them.
    pub fn member(&self, name: &str) -> Service {
        self.member_with(name, &[])
    }

    /// [`Pipeline::member`] with more flags (`--standby`).
    pub fn member_with(&self, name: &str, extra: &[&str]) -> Service {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let db = self.dir.path().join(format!("{name}.db"));
        let mut args = vec!["--advertise-url", &url];
        args.extend(extra);
        self.aggregator_on(&db, port, &args)
    }

    /// An aggregator with a database of its own, `NAME.db`, that advertises no URL: the
    /// misconfiguration of issue 29 (the mode without URLs is for one shared file).
    pub fn unshared(&self, name: &str) -> Service {
        let db = self.dir.path().join(format!("{name}.db"));
        self.aggregator_on(&db, free_port(), &[])
    }

    fn aggregator_on(&self, db: &Path, port: u16, extra: &[&str]) -> Service {
        self.aggregator_at(None, "127.0.0.1", port, db, extra)
    }

    /// A member as a host of its own: an aggregator in `host`'s network namespace with the
    /// database `db` (on a directory the test owns), listening on and advertising
    /// `http://ADDR:8081`.
    pub fn member_on(&self, host: &Host, db: &Path, extra: &[&str]) -> Service {
        let url = format!("http://{}:8081", host.addr);
        let mut args = vec!["--advertise-url", url.as_str()];
        args.extend_from_slice(extra);
        self.aggregator_at(Some(&host.netns), &host.addr, 8081, db, &args)
    }

    fn aggregator_at(
        &self,
        netns: Option<&str>,
        addr: &str,
        port: u16,
        db: &Path,
        extra: &[&str],
    ) -> Service {
        let mut args = self.common();
        args.extend([
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            db.display().to_string(),
            "--listen".into(),
            format!("{addr}:{port}"),
            "--session-timeout-ms".into(),
            "6000".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = match netns {
            Some(ns) => Proc::start_in(ns, "aggregator", &args, &[], self.dir.path()),
            None => Proc::start("aggregator", &args, &[], self.dir.path()),
        };
        let base = format!("http://{addr}:{port}");
        wait_healthy(&base, &proc);
        Service { proc, base }
    }

    /// Runs `replayer ARGS...` against this pipeline's broker and topic.
    pub fn replayer(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(bin("replayer"));
        cmd.args(self.common()).args(args).env("RUST_LOG", "warn");
        cmd.output().expect("cannot run replayer")
    }

    /// Waits until the aggregator at `base` has committed past every acknowledged offset.
    pub fn wait_caught_up(&self, base: &str, truth: &GroundTruth, timeout: Duration) {
        let client = http();
        wait_for("the aggregator to catch up", timeout, || {
            offsets(&client, base).filter(|o| caught_up(o, truth))
        });
    }
}

/// Waits until `base/healthz` answers 200; panics with the process's log after a minute.
pub fn wait_healthy(base: &str, proc: &Proc) {
    let client = http();
    let url = format!("{base}/healthz");
    let start = std::time::Instant::now();
    loop {
        if client.get(&url).send().is_ok_and(|r| r.status() == 200) {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("{base} did not become healthy:\n{}", proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Service {
    /// Restarts after a kill and waits for health.
    pub fn restart(&mut self) {
        self.proc.restart();
        wait_healthy(&self.base, &self.proc);
    }
}

/// Holds the tests of one file that must not run at once (each starts several processes on a
/// machine with few cores) one after the other.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a request: its status, its `Retry-After` header, its JSON body (null when none).
pub fn send(req: RequestBuilder) -> (u16, Option<String>, Value) {
    let r = req.send().expect("ingest answers");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii Retry-After").to_owned());
    (status, retry, r.json().unwrap_or(Value::Null))
}

/// Posts one increment that must be acknowledged; where it landed: (partition, offset).
pub fn increment(client: &Client, base: &str, key: &str, value: i64) -> (i32, i64) {
    let (status, _, v) = send(
        client
            .post(format!("{base}/increments"))
            .json(&json!({"key": key, "value": value})),
    );
    assert_eq!(status, 200, "increment {key}={value}: {v}");
    (
        v["partition"].as_i64().expect("partition") as i32,
        v["offset"].as_i64().expect("offset"),
    )
}

/// Partitions a member owns now, as its `/offsets` says (none while it does not answer).
pub fn owned_partitions(base: &str) -> Vec<i32> {
    let v: Value = http()
        .get(format!("{base}/offsets"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null);
    v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["owned"] == true)
                .filter_map(|p| p["partition"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, as record timestamps count them.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Asserts that every key's sum served by `base` equals the ground truth.
pub fn assert_sums(base: &str, truth: &GroundTruth) {
    let client = http();
    let mut wrong = Vec::new();
    for (k, want) in &truth.sums {
        let got = tally_testkit::client::sum(&client, base, k);
        if got != Some(*want) {
            wrong.push(format!("{k}: want {want}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys differ from the ground truth:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

impl Drop for Pipeline {
    /// A failed test keeps its directory (process logs, databases) and says where it is.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("test directory kept: {}", self.dir.path().display());
        }
    }
}

/// `infra/kafka-cli.sh ARGS...` with `TALLY_BROKERS` set to `brokers`.
pub fn kafka_cli(brokers: &str, args: &[&str]) -> Output {
    Command::new(workspace_root().join("infra/kafka-cli.sh"))
        .args(args)
        .env("TALLY_BROKERS", brokers)
        .output()
        .expect("cannot run infra/kafka-cli.sh")
}

/// Its standard output, asserting exit 0.
pub fn kafka_cli_ok(brokers: &str, args: &[&str]) -> String {
    let out = kafka_cli(brokers, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "infra/kafka-cli.sh {args:?} exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `configs --describe` of `topic`: its own settings, one `name=value` each.
pub fn topic_configs(brokers: &str, topic: &str) -> String {
    kafka_cli_ok(
        brokers,
        &[
            "configs",
            "--describe",
            "--entity-type",
            "topics",
            "--entity-name",
            topic,
        ],
    )
}

/// A text file of the repository, or a panic naming it.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A YAML file as JSON (anchors and aliases resolved).
pub fn yaml(path: &Path) -> Value {
    let v: serde_norway::Value = serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    serde_json::to_value(v).expect("yaml maps to json")
}
