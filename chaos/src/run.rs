//! The single-node run: one Kafka broker, ingest and two aggregators sharing one SQLite file
//! on a small tmpfs, and the faults it injects into them ([`FAULTS`]); the loop, recovery and
//! checks are [`crate::scenario::drive`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::Rng;
use tally_testkit::broker::Broker;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique};

use crate::disk::SmallFs;
use crate::scenario::{drive, wait_healthy, Figures, Plan, Probes, Stack};

/// The kinds of fault, in the order the figures list them.
pub const FAULTS: [&str; 5] = [
    "aggregator_kill",
    "ingest_kill",
    "broker_kill",
    "zombie",
    "disk_full",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Minimum faults of each kind (same order as [`FAULTS`]); the run lasts until all are
    /// reached (and at least `min_duration`), bounded by `max_duration`.
    pub targets: [u64; 5],
    pub min_duration: Duration,
    pub max_duration: Duration,
    /// Client acknowledgements the run carries at least (it waits for them after the faults).
    pub min_acknowledged: u64,
    pub clients: usize,
    pub keys: usize,
    pub partitions: i32,
    pub session_timeout_ms: u64,
    pub disk_mb: u64,
    pub work_dir: PathBuf,
}

impl Config {
    /// CI's short run: 10 aggregator kills and a few of every other fault.
    pub fn short(seed: u64, work_dir: PathBuf) -> Config {
        Config {
            seed,
            targets: [10, 3, 2, 2, 2],
            min_duration: Duration::from_secs(20),
            max_duration: Duration::from_secs(600),
            min_acknowledged: 2_000,
            clients: 3,
            keys: 200,
            partitions: 6,
            session_timeout_ms: 6000,
            disk_mb: 64,
            work_dir,
        }
    }

    /// The long run whose figures RELIABILITY.md publishes.
    pub fn long(seed: u64, work_dir: PathBuf) -> Config {
        Config {
            targets: [100, 20, 10, 10, 10],
            max_duration: Duration::from_secs(3 * 3600),
            ..Config::short(seed, work_dir)
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            seed: self.seed,
            kinds: &FAULTS,
            targets: self.targets.to_vec(),
            min_duration: self.min_duration,
            max_duration: self.max_duration,
            min_acknowledged: self.min_acknowledged,
            pause_ms: 300..1500,
            clients: self.clients,
            keys_per_client: self.keys / self.clients.max(1),
            work_dir: self.work_dir.clone(),
        }
    }
}

/// Every process of the run. Fields drop in order: the processes, then the filesystem their
/// database lives on.
struct Pipeline {
    cfg: Config,
    broker: Broker,
    topic: String,
    group: String,
    db: PathBuf,
    ingest: Proc,
    ingest_base: String,
    aggs: Vec<(Proc, String)>,
    crash_restarts: BTreeMap<String, u64>,
    fs: SmallFs,
}

fn common(broker: &Broker, topic: &str, partitions: i32) -> Vec<String> {
    vec![
        "--brokers".into(),
        broker.addr(),
        "--topic".into(),
        topic.into(),
        "--partitions".into(),
        partitions.to_string(),
    ]
}

impl Pipeline {
    fn start(cfg: &Config) -> anyhow::Result<Pipeline> {
        let fs = SmallFs::mount(cfg.disk_mb)?;
        std::fs::create_dir_all(&cfg.work_dir)?;
        let broker = Broker::start();
        let topic = unique("chaos");
        let db = fs.path().join("tally.db");
        let port = free_port();
        let mut args = common(&broker, &topic, cfg.partitions);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        let ingest = Proc::start("ingest", &args, &[], &cfg.work_dir);
        let ingest_base = format!("http://127.0.0.1:{port}");
        wait_healthy(&ingest_base);
        let mut p = Pipeline {
            cfg: cfg.clone(),
            broker,
            topic,
            group: unique("chaos-group"),
            db,
            ingest,
            ingest_base,
            aggs: Vec::new(),
            crash_restarts: BTreeMap::new(),
            fs,
        };
        for _ in 0..2 {
            let a = p.aggregator();
            p.aggs.push(a);
        }
        Ok(p)
    }

    fn aggregator(&self) -> (Proc, String) {
        let port = free_port();
        let mut args = self.common();
        args.extend([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            self.db.display().to_string(),
            "--session-timeout-ms".into(),
            self.cfg.session_timeout_ms.to_string(),
        ]);
        let p = Proc::start("aggregator", &args, &[], &self.cfg.work_dir);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base);
        (p, base)
    }
}

impl Stack for Pipeline {
    fn entry(&self) -> String {
        self.ingest_base.clone()
    }

    fn db(&self) -> &Path {
        &self.db
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn common(&self) -> Vec<String> {
        common(&self.broker, &self.topic, self.cfg.partitions)
    }

    fn supervise(&mut self) -> anyhow::Result<()> {
        if !self.ingest.is_running() {
            *self.crash_restarts.entry("ingest".into()).or_insert(0) += 1;
            self.ingest.restart();
            wait_healthy(&self.ingest_base);
        }
        for (p, base) in &mut self.aggs {
            if !p.is_running() {
                *self.crash_restarts.entry("aggregator".into()).or_insert(0) += 1;
                p.restart();
                wait_healthy(base);
            }
        }
        Ok(())
    }

    fn crash_restarts(&self) -> BTreeMap<String, u64> {
        self.crash_restarts.clone()
    }

    fn inject(&mut self, kind: &str, rng: &mut StdRng, _: &mut Probes) -> anyhow::Result<()> {
        let a = rng.gen_range(0..self.aggs.len());
        match kind {
            "aggregator_kill" => {
                // SIGKILL, restarted at once as systemd or compose would.
                let (p, base) = &mut self.aggs[a];
                p.kill();
                p.restart();
                wait_healthy(base);
            }
            "ingest_kill" => {
                self.ingest.kill();
                self.ingest.restart();
                wait_healthy(&self.ingest_base);
            }
            "broker_kill" => {
                self.broker.kill();
                self.broker.restart();
            }
            "zombie" => {
                let p = &self.aggs[a].0;
                p.stop_signal();
                std::thread::sleep(
                    Duration::from_millis(self.cfg.session_timeout_ms)
                        + Duration::from_millis(2000),
                );
                p.cont_signal();
            }
            "disk_full" => {
                self.fs.fill().context("filling the database filesystem")?;
                std::thread::sleep(Duration::from_millis(rng.gen_range(1000..4000)));
                self.fs.free();
            }
            other => unreachable!("no such fault: {other}"),
        }
        Ok(())
    }

    fn aggregators(&mut self) -> Vec<&mut Proc> {
        self.aggs.iter_mut().map(|(p, _)| p).collect()
    }
}

/// Runs the chaos scenario and returns its figures.
pub fn run(cfg: &Config) -> anyhow::Result<Figures> {
    let mut p = Pipeline::start(cfg)?;
    drive(&cfg.plan(), &mut p)
}
