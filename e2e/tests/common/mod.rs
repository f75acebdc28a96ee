//! A pipeline under test: broker, ingest and aggregators as processes, in one temp directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tally_testkit::broker::Broker;
use tally_testkit::client::{caught_up, http, offsets, GroundTruth};
use tally_testkit::process::{bin, Proc};
use tally_testkit::{free_port, unique, wait_for};

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
        Pipeline {
            broker: Broker::start(),
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

    fn aggregator_on(&self, db: &std::path::Path, port: u16, extra: &[&str]) -> Service {
        let mut args = self.common();
        args.extend([
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            db.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--session-timeout-ms".into(),
            "6000".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::start("aggregator", &args, &[], self.dir.path());
        let base = format!("http://127.0.0.1:{port}");
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

fn wait_healthy(base: &str, proc: &Proc) {
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
