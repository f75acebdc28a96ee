//! The cluster run: Tally on a replicated three-node Kafka cluster whose nodes are hosts of
//! their own (network namespaces on a bridge, [`tally_testkit::netns`]), with two ingest
//! processes behind HAProxy, under idempotent load while faults come from a recorded seed:
//!
//! - `leader_kill`: SIGKILL of the node leading the busiest partitions (most records),
//!   restarted at once on its data;
//! - `broker_pause`: SIGSTOP of a node for longer than `replica.lag.time.max.ms`, then SIGCONT;
//! - `broker_isolate`: a node's link cut for 10-30 s (it reaches neither its peers nor any
//!   client), then healed;
//! - `controller_isolate`: the same for the active KRaft controller (read from the nodes'
//!   `quorum-state`); the majority must elect another;
//! - `rolling_restart`: each node in turn stopped (SIGTERM) and started, the next one only once
//!   every partition has all three replicas in sync again;
//! - `ingest_kill`: SIGKILL of one ingest behind HAProxy, restarted at once;
//! - `aggregator_kill`: SIGKILL of one of two aggregators, restarted at once.
//!
//! During each isolation (a minority of one) the run asserts that a write through the
//! balancer is acknowledged and then read back exactly from an aggregator before the link is
//! healed, and that the clients' acknowledgements keep coming. After each fault it measures
//! recovery: the time from the end of the fault until a write acknowledged after it is folded
//! and committed. At the end the base-3 check ([`crate::check::tally`]) counts lost and doubled
//! increments apart, and `replayer verify` checks the live database against the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use rand::rngs::StdRng;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig as KafkaConfig;
use serde::Serialize;
use tally_testkit::broker::{Cluster, KafkaOptions, NodeSpec};
use tally_testkit::netns::Net;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique, wait_for};

use crate::check;
use crate::load::probe;
use crate::scenario::{answers_ok, drive, wait_healthy, Figures, Plan, Probes, Stack};

/// The kinds of fault, in the order the figures list them.
pub const CLUSTER_FAULTS: [&str; 7] = [
    "leader_kill",
    "broker_pause",
    "broker_isolate",
    "controller_isolate",
    "rolling_restart",
    "ingest_kill",
    "aggregator_kill",
];

/// `replica.lag.time.max.ms` on the nodes: a follower this far behind leaves the ISR.
pub const REPLICA_LAG_MS: u64 = 5000;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub seed: u64,
    /// Minimum faults of each kind (order of [`CLUSTER_FAULTS`]).
    pub targets: [u64; 7],
    /// How long an isolation lasts, in seconds (drawn from this range).
    pub isolate_secs: (u64, u64),
    pub max_duration: Duration,
    /// Client acknowledgements the run carries at least (it waits for them after the faults).
    pub min_acknowledged: u64,
    pub clients: usize,
    /// Keys per client at a time.
    pub keys: usize,
    pub partitions: i32,
    pub ingests: usize,
    pub heap_mb: u32,
    pub work_dir: PathBuf,
}

impl ClusterConfig {
    /// The test suite's run: one fault of each kind.
    pub fn short(seed: u64, work_dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            seed,
            targets: [1; 7],
            isolate_secs: (10, 14),
            max_duration: Duration::from_secs(480),
            min_acknowledged: 1_000,
            clients: 3,
            keys: 20,
            partitions: 6,
            ingests: 2,
            heap_mb: 384,
            work_dir,
        }
    }

    /// RELIABILITY.md's long run: ten of each.
    pub fn long(seed: u64, work_dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            targets: [10; 7],
            isolate_secs: (10, 30),
            max_duration: Duration::from_secs(3 * 3600),
            ..ClusterConfig::short(seed, work_dir)
        }
    }
}

/// What the minority partitions showed (each isolation, of a node or of the controller).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Minority {
    pub cuts: u64,
    /// Longest time from the cut until a write through the balancer was acknowledged.
    pub write_acked_ms_max: f64,
    /// Longest time from the cut until that write was read back exactly from an aggregator.
    pub read_exact_ms_max: f64,
    /// Fewest client acknowledgements during one cut (all of them while cut off).
    pub client_acks_min: u64,
    /// Isolations that lasted longer than drawn because the checks took longer.
    pub extended: u64,
    /// Controller isolations after which the majority had elected another controller.
    pub controller_moved: u64,
}

/// The chaos run's figures (faults, acknowledged, lost, doubled, recovery, verify) and what the
/// minority partitions showed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterFigures {
    #[serde(flatten)]
    pub run: Figures,
    pub minority: Minority,
}

impl ClusterFigures {
    pub fn passed(&self) -> bool {
        self.run.passed()
    }
}

/// HAProxy in front of the ingest processes, health-checking `/readyz`.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    fn start(listen: u16, backends: &[String], dir: &Path) -> anyhow::Result<Haproxy> {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server ingest{i} {b} check\n"))
            .collect();
        let conf = format!(
            "global\n  maxconn 1024\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  \
             timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend tally\n  bind 127.0.0.1:{listen}\n  default_backend ingest\n\
             backend ingest\n  balance roundrobin\n  option httpchk GET /readyz\n  \
             http-check expect status 200\n  default-server inter 500ms fall 2 rise 2\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start haproxy: install it (apt-get install haproxy; scripts/test.sh does)",
            )?;
        Ok(Haproxy { child })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process of the run. Fields drop in order: Tally's processes, then the brokers, then
/// the network they run in.
struct Nodes {
    cfg: ClusterConfig,
    minority: Minority,
    haproxy: Haproxy,
    ingests: Vec<(Proc, String)>,
    aggs: Vec<(Proc, String)>,
    cluster: Cluster,
    net: Net,
    lb: String,
    topic: String,
    group: String,
    db: PathBuf,
    /// Nodes the runner has taken down on purpose (not restarted by `supervise`).
    down: Vec<bool>,
    crash_restarts: BTreeMap<String, u64>,
}

fn require_tools() -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "the cluster run needs root (network namespaces)");
    for (tool, arg, pkg) in [("ip", "-V", "iproute2"), ("haproxy", "-v", "haproxy")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        ensure!(
            ok,
            "`{tool}` is missing: apt-get install {pkg} (scripts/test.sh installs it)"
        );
    }
    Ok(())
}

impl Nodes {
    fn start(cfg: &ClusterConfig) -> anyhow::Result<Nodes> {
        let net = Net::create(3);
        let specs = net
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| NodeSpec {
                id: i as u32 + 1,
                host: h.addr.clone(),
                port: 9092,
                controller_port: 9093,
                netns: Some(h.netns.clone()),
            })
            .collect();
        let opts = KafkaOptions {
            heap_mb: cfg.heap_mb,
            flush_every_message: false,
            extra: vec![
                "offsets.topic.num.partitions=1".into(),
                "min.insync.replicas=2".into(),
                "default.replication.factor=3".into(),
                "unclean.leader.election.enable=false".into(),
                format!("replica.lag.time.max.ms={REPLICA_LAG_MS}"),
                // Fence a silent node after 6 s (default 9 s) so failover fits the short run.
                "broker.session.timeout.ms=6000".into(),
                "broker.heartbeat.interval.ms=1000".into(),
            ],
            ..KafkaOptions::default()
        };
        let cluster = Cluster::start_on(specs, opts);
        let topic = unique("cluster");
        let group = unique("cluster-group");
        let db = cfg.work_dir.join(format!("{topic}.db"));
        let mut ingests = Vec::new();
        for _ in 0..cfg.ingests {
            let port = free_port();
            let mut args = common(&cluster, &topic, cfg.partitions);
            args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
            let p = Proc::start("ingest", &args, &[], &cfg.work_dir);
            let base = format!("http://127.0.0.1:{port}");
            wait_healthy(&base);
            ingests.push((p, base));
        }
        let lb_port = free_port();
        let backends: Vec<String> = ingests
            .iter()
            .map(|(_, b)| b.trim_start_matches("http://").to_owned())
            .collect();
        let haproxy = Haproxy::start(lb_port, &backends, &cfg.work_dir)?;
        let mut s = Nodes {
            cfg: cfg.clone(),
            minority: Minority {
                client_acks_min: u64::MAX,
                ..Minority::default()
            },
            haproxy,
            ingests,
            aggs: Vec::new(),
            cluster,
            net,
            lb: format!("http://127.0.0.1:{lb_port}"),
            topic,
            group,
            db,
            down: vec![false; 3],
            crash_restarts: BTreeMap::new(),
        };
        for _ in 0..2 {
            let a = s.aggregator(cfg);
            s.aggs.push(a);
        }
        wait_for(
            "HAProxy to route to a ready ingest",
            Duration::from_secs(60),
            || answers_ok(&format!("{}/readyz", s.lb)).then_some(()),
        );
        Ok(s)
    }

    fn aggregator(&self, cfg: &ClusterConfig) -> (Proc, String) {
        let port = free_port();
        let mut args = common(&self.cluster, &self.topic, cfg.partitions);
        args.extend([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            self.db.display().to_string(),
            "--session-timeout-ms".into(),
            "6000".into(),
        ]);
        let p = Proc::start("aggregator", &args, &[], &cfg.work_dir);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base);
        (p, base)
    }

    /// Acts as systemd's Restart=on-failure: restarts any process that exited on its own.
    fn restart_exited(&mut self) -> anyhow::Result<()> {
        for (name, procs) in [
            ("ingest", &mut self.ingests),
            ("aggregator", &mut self.aggs),
        ] {
            for (p, base) in procs.iter_mut() {
                if !p.is_running() {
                    *self.crash_restarts.entry(name.into()).or_insert(0) += 1;
                    p.restart();
                    wait_healthy(base);
                }
            }
        }
        for i in 0..self.cluster.len() {
            if !self.down[i] && !self.cluster.node(i).is_running() {
                *self.crash_restarts.entry("broker".into()).or_insert(0) += 1;
                self.cluster.spawn_again(i);
                self.cluster.wait_up(i);
            }
        }
        if self.haproxy.child.try_wait()?.is_some() {
            bail!("haproxy exited: see haproxy.log");
        }
        Ok(())
    }

    /// A metadata client reaching every node.
    fn admin(&self) -> BaseConsumer {
        KafkaConfig::new()
            .set("bootstrap.servers", self.cluster.bootstrap())
            .set("log_level", "0")
            .create()
            .expect("metadata client")
    }

    /// Per partition: leader id and in-sync replica count (None while metadata is unanswered).
    fn partitions(&self) -> Option<Vec<(i32, i32, usize, usize)>> {
        let md = self
            .admin()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            .ok()?;
        let t = md.topics().iter().find(|t| t.name() == self.topic)?;
        Some(
            t.partitions()
                .iter()
                .map(|p| (p.id(), p.leader(), p.replicas().len(), p.isr().len()))
                .collect(),
        )
    }

    /// Waits until every partition has a leader and all its replicas in sync.
    fn wait_in_sync(&self, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(ps) = self.partitions() {
                if !ps.is_empty() && ps.iter().all(|(_, l, r, isr)| *l >= 0 && isr == r) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "partitions not all in sync within {within:?}: {:?}",
            self.partitions()
        )
    }

    /// The node (index) leading the partitions with the most records.
    fn busiest_leader(&self) -> anyhow::Result<usize> {
        let admin = self.admin();
        let mut load: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, leader, _, _) in self.partitions().context("no metadata")? {
            let (_, high) = admin
                .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
                .context("watermarks")?;
            *load.entry(leader).or_insert(0) += high;
        }
        let (id, _) = load
            .into_iter()
            .filter(|(id, _)| *id > 0)
            .max_by_key(|(_, n)| *n)
            .context("no partition has a leader")?;
        Ok(id as usize - 1)
    }

    /// The active controller as the nodes' `quorum-state` files record it: (node index,
    /// epoch) with the highest epoch among `among`.
    fn controller(&mut self, among: &[usize]) -> Option<(usize, u64)> {
        among
            .iter()
            .filter_map(|i| {
                let path = self
                    .cluster
                    .node(*i)
                    .dir()
                    .join("log/__cluster_metadata-0/quorum-state");
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
                let leader = v["leaderId"].as_i64()?;
                let epoch = v["leaderEpoch"].as_u64()?;
                (leader > 0).then_some((leader as usize - 1, epoch))
            })
            .max_by_key(|(_, e)| *e)
    }

    /// Stored sum of `key`, read from an aggregator's HTTP API (None: not found or no answer).
    fn read_sum(&self, key: &str) -> Option<i64> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        for (_, base) in &self.aggs {
            if let Ok(r) = http.get(format!("{base}/sums/{key}")).send() {
                if r.status() == 200 {
                    return r.json::<serde_json::Value>().ok()?["sum"].as_i64();
                }
            }
        }
        None
    }
}

fn common(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<String> {
    vec![
        "--brokers".into(),
        cluster.bootstrap(),
        "--topic".into(),
        topic.into(),
        "--partitions".into(),
        partitions.to_string(),
        "--replication-factor".into(),
        "3".into(),
    ]
}

/// What one isolation showed.
struct Cut {
    write_ms: f64,
    read_ms: f64,
    client_acks: u64,
    extended: bool,
}

impl ClusterConfig {
    fn plan(&self) -> Plan {
        Plan {
            seed: self.seed,
            kinds: &CLUSTER_FAULTS,
            targets: self.targets.to_vec(),
            min_duration: Duration::ZERO,
            max_duration: self.max_duration,
            min_acknowledged: self.min_acknowledged,
            pause_ms: 1000..3000,
            clients: self.clients,
            keys_per_client: self.keys,
            work_dir: self.work_dir.clone(),
        }
    }
}

/// Runs the cluster scenario and returns its figures.
pub fn run_cluster(cfg: &ClusterConfig) -> anyhow::Result<ClusterFigures> {
    require_tools()?;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let mut s = Nodes::start(cfg)?;
    // The topic as the issue asks: three replicas per partition, all in sync.
    s.wait_in_sync(Duration::from_secs(60))?;
    let ps = s.partitions().context("no topic metadata")?;
    ensure!(
        ps.len() == cfg.partitions as usize && ps.iter().all(|p| p.2 == 3),
        "topic not created with 3 replicas per partition: {ps:?}"
    );
    let run = drive(&cfg.plan(), &mut s)?;
    let mut minority = s.minority.clone();
    if minority.cuts == 0 {
        minority.client_acks_min = 0;
    }
    Ok(ClusterFigures { run, minority })
}

impl Stack for Nodes {
    fn entry(&self) -> String {
        self.lb.clone()
    }

    fn db(&self) -> &Path {
        &self.db
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn common(&self) -> Vec<String> {
        common(&self.cluster, &self.topic, self.cfg.partitions)
    }

    fn supervise(&mut self) -> anyhow::Result<()> {
        self.restart_exited()
    }

    fn crash_restarts(&self) -> BTreeMap<String, u64> {
        self.crash_restarts.clone()
    }

    fn inject(&mut self, kind: &str, rng: &mut StdRng, probes: &mut Probes) -> anyhow::Result<()> {
        let nodes = self.cluster.len();
        match kind {
            "leader_kill" => {
                let i = self.busiest_leader()?;
                self.down[i] = true;
                self.cluster.node(i).kill();
                // Restarted at once, as systemd's Restart=always would.
                self.cluster.spawn_again(i);
                self.cluster.wait_up(i);
                self.down[i] = false;
            }
            "broker_pause" => {
                let i = rng.gen_range(0..nodes);
                self.cluster.node(i).pause();
                std::thread::sleep(Duration::from_millis(REPLICA_LAG_MS + 2000));
                self.cluster.node(i).resume();
            }
            "broker_isolate" | "controller_isolate" => {
                let i = if kind == "broker_isolate" {
                    rng.gen_range(0..nodes)
                } else {
                    let all: Vec<usize> = (0..nodes).collect();
                    self.controller(&all)
                        .context("no node records a controller")?
                        .0
                };
                let (lo, hi) = self.cfg.isolate_secs;
                let hold = Duration::from_secs(rng.gen_range(lo..=hi));
                let cut = isolate(self, i, hold, probes, kind)?;
                self.minority.add(&cut, kind == "controller_isolate");
            }
            "rolling_restart" => {
                for i in 0..nodes {
                    self.down[i] = true;
                    self.cluster.node(i).stop(Duration::from_secs(60));
                    self.cluster.spawn_again(i);
                    self.cluster.wait_up(i);
                    self.down[i] = false;
                    self.wait_in_sync(Duration::from_secs(120))?;
                }
            }
            "ingest_kill" => {
                let i = rng.gen_range(0..self.ingests.len());
                let (p, base) = &mut self.ingests[i];
                p.kill();
                p.restart();
                wait_healthy(base);
            }
            "aggregator_kill" => {
                let i = rng.gen_range(0..self.aggs.len());
                let (p, base) = &mut self.aggs[i];
                p.kill();
                p.restart();
                wait_healthy(base);
            }
            other => unreachable!("no such fault: {other}"),
        }
        Ok(())
    }

    /// Every node back and in sync before the final check.
    fn settle(&mut self) -> anyhow::Result<()> {
        self.wait_in_sync(Duration::from_secs(120))
    }

    fn aggregators(&mut self) -> Vec<&mut Proc> {
        self.aggs.iter_mut().map(|(p, _)| p).collect()
    }
}

impl Minority {
    fn add(&mut self, cut: &Cut, controller: bool) {
        self.cuts += 1;
        self.write_acked_ms_max = self.write_acked_ms_max.max(cut.write_ms);
        self.read_exact_ms_max = self.read_exact_ms_max.max(cut.read_ms);
        self.client_acks_min = self.client_acks_min.min(cut.client_acks);
        self.extended += u64::from(cut.extended);
        self.controller_moved += u64::from(controller);
    }
}

/// Cuts node `i` off for `hold`, and while it is cut off asserts that a write through the
/// balancer is acknowledged and read back exactly, that the clients' acknowledgements keep
/// coming and, for the controller, that the majority elects another. Heals it on every path.
fn isolate(
    s: &mut Nodes,
    i: usize,
    hold: Duration,
    probes: &mut Probes,
    kind: &str,
) -> anyhow::Result<Cut> {
    let n = probes.next();
    let acks = probes.acks.clone();
    let others: Vec<usize> = (0..s.cluster.len()).filter(|j| *j != i).collect();
    let before_epoch = s.controller(&others).map(|c| c.1).unwrap_or(0);
    let acks_before = acks.load(Ordering::Relaxed);
    let cut = Instant::now();
    s.net.isolate(i);
    let checks = (|| -> anyhow::Result<Cut> {
        let within = Duration::from_secs(60);
        let (pp, po) = probe(&s.lb, n, &mut probes.truth, within)
            .context("no write acknowledged through the majority while a node was cut off")?;
        let write_ms = cut.elapsed().as_secs_f64() * 1000.0;
        let key = format!("probe-{n}");
        loop {
            ensure!(
                cut.elapsed() < within * 2,
                "write to {pp}@{po} not read back while a node was cut off (committed {:?})",
                check::committed(&s.db, &s.topic)
            );
            if check::folded(&s.db, &s.topic, pp, po) {
                let got = s.read_sum(&key);
                ensure!(
                    got == Some(1),
                    "read of {key} during the partition: {got:?}, acknowledged once with 1"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let read_ms = cut.elapsed().as_secs_f64() * 1000.0;
        if kind == "controller_isolate" {
            while s
                .controller(&others)
                .is_none_or(|(c, e)| c == i || e <= before_epoch)
            {
                ensure!(
                    cut.elapsed() < within * 2,
                    "the majority elected no other controller: {:?}",
                    s.controller(&others)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The clients too keep being acknowledged while cut off.
        let inner = Instant::now();
        while acks.load(Ordering::Relaxed) == acks_before {
            ensure!(
                inner.elapsed() < within,
                "no client write acknowledged while node {} was cut off",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let extended = cut.elapsed() > hold;
        if !extended {
            std::thread::sleep(hold - cut.elapsed());
        }
        Ok(Cut {
            write_ms,
            read_ms,
            client_acks: acks.load(Ordering::Relaxed) - acks_before,
            extended,
        })
    })();
    s.net.heal(i);
    eprintln!(
        "cluster: node {} cut off for {:.1} s",
        i + 1,
        cut.elapsed().as_secs_f64()
    );
    checks
}
