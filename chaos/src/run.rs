//! Orchestration: start the pipeline, run clients, inject faults from the seed, then check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tally_testkit::broker::Broker;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique, wait_for};

use crate::check;
use crate::disk::SmallFs;
use crate::load::{client, probe, ClientConfig, Truth};

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
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Figures {
    pub seed: u64,
    pub duration_s: f64,
    pub faults: BTreeMap<String, u64>,
    pub acknowledged: u64,
    /// Acknowledged increments counted zero times.
    pub lost: u64,
    /// Extra counts of increments counted more than once.
    pub doubled: u64,
    /// Increments never acknowledged (still retried when the run ended) and counted once.
    pub unacknowledged_counted: u64,
    pub unfinished: u64,
    pub client_retries: BTreeMap<String, u64>,
    /// Restarts the runner did because a process exited on its own (as systemd would).
    pub crash_restarts: BTreeMap<String, u64>,
    /// Per fault kind: recovery time in ms (until an acknowledged write is folded), max and mean.
    pub recovery_ms: BTreeMap<String, (f64, f64)>,
    pub verify_exit: Option<i32>,
    /// Keys whose sum in a `replayer rebuild` of the whole log differs from the live database
    /// (which was compared with the ground truth above); `None` when the rebuild failed.
    pub rebuild_differences: Option<u64>,
}

impl Figures {
    /// Takes the check's counts and the clients' acknowledgements and retries.
    pub fn record(&mut self, t: check::Tally, truth: Truth) {
        self.lost = t.lost;
        self.doubled = t.doubled;
        self.unacknowledged_counted = t.unacknowledged_counted;
        self.acknowledged = truth.acknowledged;
        self.client_retries = truth.retries;
    }

    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.unfinished == 0
            && self.verify_exit == Some(0)
            && self.rebuild_differences == Some(0)
    }
}

struct Pipeline {
    broker: Broker,
    topic: String,
    group: String,
    db: PathBuf,
    ingest: Proc,
    ingest_base: String,
    aggs: Vec<(Proc, String)>,
    crash_restarts: BTreeMap<String, u64>,
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

fn healthy(base: &str) -> bool {
    reqwest::blocking::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok_and(|r| r.status() == 200)
}

pub(crate) fn wait_healthy(base: &str) {
    wait_for(
        &format!("{base} to be healthy"),
        Duration::from_secs(90),
        || healthy(base).then_some(()),
    );
}

impl Pipeline {
    fn start(cfg: &Config, fs: &SmallFs) -> Pipeline {
        let broker = Broker::start();
        let topic = unique("chaos");
        let group = unique("chaos-group");
        let db = fs.path().join("tally.db");
        let port = free_port();
        let mut args = common(&broker, &topic, cfg.partitions);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        let ingest = Proc::start("ingest", &args, &[], &cfg.work_dir);
        let ingest_base = format!("http://127.0.0.1:{port}");
        wait_healthy(&ingest_base);
        let mut p = Pipeline {
            broker,
            topic,
            group,
            db,
            ingest,
            ingest_base,
            aggs: Vec::new(),
            crash_restarts: BTreeMap::new(),
        };
        for _ in 0..2 {
            let a = p.aggregator(cfg);
            p.aggs.push(a);
        }
        p
    }

    fn aggregator(&self, cfg: &Config) -> (Proc, String) {
        let port = free_port();
        let mut args = common(&self.broker, &self.topic, cfg.partitions);
        args.extend([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            self.db.display().to_string(),
            "--session-timeout-ms".into(),
            cfg.session_timeout_ms.to_string(),
        ]);
        let p = Proc::start("aggregator", &args, &[], &cfg.work_dir);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base);
        (p, base)
    }

    /// Acts as systemd's Restart=on-failure: restarts any process that exited on its own.
    fn supervise(&mut self) {
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
    }
}

/// Runs the chaos scenario and returns its figures.
pub fn run(cfg: &Config) -> anyhow::Result<Figures> {
    let fs = SmallFs::mount(cfg.disk_mb)?;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let mut p = Pipeline::start(cfg, &fs);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let stop = Arc::new(AtomicBool::new(false));
    let drain = Duration::from_secs(120);
    let clients: Vec<_> = (0..cfg.clients)
        .map(|id| {
            let c = ClientConfig {
                id,
                base: p.ingest_base.clone(),
                keys: cfg.keys / cfg.clients.max(1),
                seed: cfg.seed,
                stop: stop.clone(),
                drain,
                acks: Arc::new(AtomicU64::new(0)),
            };
            std::thread::spawn(move || client(c))
        })
        .collect();

    let start = Instant::now();
    let mut figures = Figures {
        seed: cfg.seed,
        ..Figures::default()
    };
    let mut done = [0u64; 5];
    let mut recovery: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut probe_truth = Truth::default();
    let mut probes = 0u64;
    let session = Duration::from_millis(cfg.session_timeout_ms);
    while start.elapsed() < cfg.min_duration || done.iter().zip(cfg.targets).any(|(d, t)| *d < t) {
        if start.elapsed() > cfg.max_duration {
            bail!(
                "fault targets not reached within {:?}: {:?}",
                cfg.max_duration,
                done
            );
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        // Pick a kind still short of its target (any kind once all are reached).
        let open: Vec<usize> = (0..5).filter(|i| done[*i] < cfg.targets[*i]).collect();
        let kind = if open.is_empty() {
            rng.gen_range(0..5)
        } else {
            open[rng.gen_range(0..open.len())]
        };
        let a = rng.gen_range(0..p.aggs.len());
        match FAULTS[kind] {
            "aggregator_kill" => {
                // SIGKILL, restarted at once as systemd or compose would.
                p.aggs[a].0.kill();
                p.aggs[a].0.restart();
                wait_healthy(&p.aggs[a].1);
            }
            "ingest_kill" => {
                p.ingest.kill();
                p.ingest.restart();
                wait_healthy(&p.ingest_base);
            }
            "broker_kill" => {
                p.broker.kill();
                p.broker.restart();
            }
            "zombie" => {
                p.aggs[a].0.stop_signal();
                std::thread::sleep(session + Duration::from_millis(2000));
                p.aggs[a].0.cont_signal();
            }
            "disk_full" => {
                fs.fill().context("filling the database filesystem")?;
                std::thread::sleep(Duration::from_millis(rng.gen_range(1000..4000)));
                fs.free();
            }
            _ => unreachable!(),
        }
        done[kind] += 1;
        // Recovery: an acknowledged write made after the fault is folded and committed.
        let t = Instant::now();
        p.supervise();
        probes += 1;
        let (pp, po) = probe(
            &p.ingest_base,
            probes,
            &mut probe_truth,
            Duration::from_secs(180),
        )?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            p.supervise();
            if check::folded(&p.db, &p.topic, pp, po) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no recovery within 180 s after {} #{}",
                    FAULTS[kind],
                    done[kind]
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        recovery
            .entry(FAULTS[kind])
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "chaos: {} #{} recovered in {:.0} ms",
            FAULTS[kind],
            done[kind],
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut truth = probe_truth;
    for c in clients {
        let (t, unfinished) = c.join().expect("client thread");
        truth.merge(t);
        figures.unfinished += unfinished;
    }
    figures.duration_s = start.elapsed().as_secs_f64();

    // Everything acknowledged is folded?
    let (db, topic) = (p.db.clone(), p.topic.clone());
    check::wait_folded(&db, &topic, &truth.max_offsets, || p.supervise());
    let t = check::tally(&truth, check::stored_sums(&p.db, &p.topic)?);
    figures.record(t, truth);
    figures.crash_restarts = p.crash_restarts.clone();
    for (i, name) in FAULTS.iter().enumerate() {
        figures.faults.insert((*name).to_owned(), done[i]);
    }
    figures.recovery_ms = check::max_mean(&recovery);
    // No offset advanced past an unapplied record: the log up to the committed offsets folds
    // to exactly the stored sums.
    figures.verify_exit = check::verify(
        &common(&p.broker, &p.topic, cfg.partitions),
        &p.db,
        &cfg.work_dir,
    )?;
    // The log rebuilds the same state from scratch. The aggregators stop first (SIGTERM: a
    // final commit).
    for (a, _) in &mut p.aggs {
        a.terminate(Duration::from_secs(30));
    }
    figures.rebuild_differences = check::rebuild_differences(
        &common(&p.broker, &p.topic, cfg.partitions),
        &p.db,
        &p.topic,
        &cfg.work_dir,
    )?;
    Ok(figures)
}
