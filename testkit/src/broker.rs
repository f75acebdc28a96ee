//! Apache Kafka, the reference broker, as processes of one test: a single KRaft node
//! ([`Broker`]) or a three-node KRaft cluster ([`Cluster`]), each node broker and controller,
//! on free ports with a temporary data directory. A node can be SIGKILLed, SIGSTOPped and
//! resumed, and restarted on the same data; it counts as up once it answers metadata listing
//! itself. The jars come from `infra/install-kafka.sh` (the test command runs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::free_port;

/// The Kafka version `infra/kafka/pom.xml` pins.
pub fn kafka_version() -> &'static str {
    let pom = include_str!("../../infra/kafka/pom.xml");
    let start = pom
        .find("<kafka.version>")
        .expect("pom.xml names kafka.version")
        + 15;
    let end = start + pom[start..].find('<').expect("kafka.version closes");
    &pom[start..end]
}

/// Where the jars are: `TALLY_KAFKA_HOME`, else `$HOME/.cache/tally/kafka-VERSION`. Panics
/// when Kafka is not installed there.
pub fn kafka_home() -> PathBuf {
    let home = std::env::var("TALLY_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set"))
                .join(format!(".cache/tally/kafka-{}", kafka_version()))
        });
    let jar = home
        .join("lib")
        .join(format!("kafka_2.13-{}.jar", kafka_version()));
    assert!(
        jar.is_file(),
        "Apache Kafka is not installed at {} ({} is missing): run infra/install-kafka.sh \
         (the test command does)",
        home.display(),
        jar.display()
    );
    home
}

/// How the broker runs.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// JVM heap (`-Xmx`), in MiB.
    pub heap_mb: u32,
    /// `log.flush.interval.messages=1`: fsync every record before acknowledging it, as
    /// Redpanda does. Kafka's default acknowledges from the page cache (durable against a
    /// process kill, not against power loss of every replica at once).
    pub flush_every_message: bool,
    /// More `name=value` lines for `server.properties`, after Tally's.
    pub extra: Vec<String>,
    /// More arguments for `StorageTool format` (SCRAM users: [`crate::secured`]).
    pub format_args: Vec<String>,
    /// Client settings with which the test kit itself asks the node for metadata (a secured
    /// listener's TLS and SASL settings).
    pub client: Vec<(String, String)>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            heap_mb: 512,
            flush_every_message: false,
            // One partition for group offsets: the coordinator is ready at once.
            extra: vec!["offsets.topic.num.partitions=1".into()],
            format_args: Vec::new(),
            client: Vec::new(),
        }
    }
}

/// Where one node listens and in which network namespace it runs (`None`: this one).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub controller_port: u16,
    pub netns: Option<String>,
}

impl NodeSpec {
    /// A node on 127.0.0.1 with two free ports.
    pub fn local(id: u32) -> NodeSpec {
        NodeSpec {
            id,
            host: "127.0.0.1".into(),
            port: free_port(),
            controller_port: free_port(),
            netns: None,
        }
    }

    /// `HOST:PORT` of its client listener.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One Kafka process and its data directory.
pub struct KafkaNode {
    pub spec: NodeSpec,
    child: Option<Child>,
    dir: PathBuf,
    opts: KafkaOptions,
}

impl KafkaNode {
    fn config_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Writes `server.properties` from `infra/kafka/server.properties.in` and formats the
    /// data directory with the cluster id.
    fn format(&self, voters: &str, nodes: usize, cluster_id: &str) {
        std::fs::create_dir_all(&self.dir).expect("cannot create the node's directory");
        let rf = nodes.min(3);
        let min_isr = if rf >= 3 { 2 } else { 1 };
        let mut conf = include_str!("../../infra/kafka/server.properties.in")
            .replace("@NODE_ID@", &self.spec.id.to_string())
            .replace("@VOTERS@", voters)
            .replace("@INTERNAL_RF@", &rf.to_string())
            .replace("@INTERNAL_MIN_ISR@", &min_isr.to_string())
            .replace("@HOST@", &self.spec.host)
            .replace("@PORT@", &self.spec.port.to_string())
            .replace("@CONTROLLER_PORT@", &self.spec.controller_port.to_string())
            .replace("@DATA@", &self.dir.display().to_string());
        if self.opts.flush_every_message {
            conf.push_str("log.flush.interval.messages=1\n");
        }
        for line in &self.opts.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        std::fs::write(self.config_path(), conf).expect("cannot write server.properties");
        let out = self
            .java()
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
            ])
            .arg("--config")
            .arg(self.config_path())
            .args(&self.opts.format_args)
            .output()
            .expect("cannot run java (is OpenJDK installed?)");
        assert!(
            out.status.success(),
            "kafka.tools.StorageTool format failed for node {}: {}{}",
            self.spec.id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn java(&self) -> Command {
        let home = kafka_home();
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "java"]);
                c
            }
            None => Command::new("java"),
        };
        cmd.arg(format!("-Xmx{}m", self.opts.heap_mb))
            .arg("-Xms128m")
            .arg("-XX:+UseG1GC")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                home.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/lib/*", home.display()))
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the broker log");
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.config_path())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start java (is OpenJDK installed?)");
        self.child = Some(child);
    }

    /// Whether the process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// SIGKILLs the node (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = crate::process::unsafe_kill(c.id() as i32, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node as an operator would (SIGTERM: a controlled shutdown that hands its
    /// leaderships over first), SIGKILL after `grace`; its data stays.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = crate::process::unsafe_kill(c.id() as i32, libc::SIGCONT);
            let _ = crate::process::unsafe_kill(c.id() as i32, libc::SIGTERM);
            let start = std::time::Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node's data directory (its `log` subdirectory holds the partitions and
    /// `__cluster_metadata-0/quorum-state`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGSTOPs the node: its connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONTs a paused node.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("the node is running").id() as i32;
        assert_eq!(
            crate::process::unsafe_kill(pid, sig),
            0,
            "kill(broker, {sig})"
        );
    }

    /// The node's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ids of the brokers that `bootstrap` lists in a metadata answer, or `None` when it does not
/// answer within `timeout`.
pub fn metadata_brokers(bootstrap: &str, timeout: Duration) -> Option<Vec<i32>> {
    metadata_brokers_with(bootstrap, &[], timeout)
}

/// [`metadata_brokers`] with more client settings (a secured listener's).
pub fn metadata_brokers_with(
    bootstrap: &str,
    settings: &[(String, String)],
    timeout: Duration,
) -> Option<Vec<i32>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0");
    for (k, v) in settings {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().ok()?;
    let md = consumer.fetch_metadata(None, timeout).ok()?;
    let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    ids.sort_unstable();
    Some(ids)
}

/// A random Kafka cluster id (a UUID in URL-safe base64 without padding, as StorageTool's
/// `random-uuid` prints). Like Kafka's own `Uuid.randomUuid`, it never starts with `-`:
/// StorageTool's argument parser would take such an id for an option and fail with
/// "argument --cluster-id/-t: expected one argument" (one start in 64 did, in CI).
fn cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let bytes: [u8; 16] = rand::random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// Nodes that share one cluster id and controller quorum.
struct Nodes {
    nodes: Vec<KafkaNode>,
    dir: tempfile::TempDir,
}

impl Nodes {
    fn start(specs: Vec<NodeSpec>, opts: KafkaOptions, prefix: &str) -> Nodes {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("cannot create the broker's data directory");
        let voters = specs
            .iter()
            .map(|s| format!("{}@{}:{}", s.id, s.host, s.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let id = cluster_id();
        let n = specs.len();
        let mut nodes: Vec<KafkaNode> = specs
            .into_iter()
            .map(|spec| KafkaNode {
                dir: dir.path().join(format!("node-{}", spec.id)),
                spec,
                child: None,
                opts: opts.clone(),
            })
            .collect();
        for node in &nodes {
            node.format(&voters, n, &id);
        }
        for node in &mut nodes {
            node.spawn();
        }
        let mut nodes = Nodes { nodes, dir };
        for i in 0..n {
            nodes.wait_up(i);
        }
        nodes
    }

    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.spec.addr())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until node `i` answers metadata that lists itself.
    fn wait_up(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let addr = node.spec.addr();
        let id = node.spec.id as i32;
        let start = std::time::Instant::now();
        loop {
            let settings = &node.opts.client;
            if let Some(ids) = metadata_brokers_with(&addr, settings, Duration::from_secs(2)) {
                if ids.contains(&id) {
                    return;
                }
            }
            let exited = !node.is_running();
            if exited || start.elapsed() > Duration::from_secs(90) {
                let log = node.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "Kafka node {id} at {addr} did not come up; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
        self.wait_up(i);
    }

    fn keep_on_panic(&mut self) {
        if std::thread::panicking() {
            for n in &mut self.nodes {
                n.kill();
            }
            self.dir.disable_cleanup(true);
            eprintln!("broker directory kept: {}", self.dir.path().display());
        }
    }
}

/// A single Kafka node (broker and controller) for one test.
pub struct Broker {
    nodes: Nodes,
}

impl Broker {
    /// Starts a broker on free ports with a new data directory; returns once it answers.
    pub fn start() -> Broker {
        Broker::start_with(KafkaOptions::default())
    }

    pub fn start_with(opts: KafkaOptions) -> Broker {
        Broker::start_on(NodeSpec::local(1), opts)
    }

    /// One node where `spec` says: on an address of [`crate::netns`]'s bridge, say, so that
    /// processes in the namespaces reach it (and one cut off does not).
    pub fn start_on(spec: NodeSpec, opts: KafkaOptions) -> Broker {
        Broker {
            nodes: Nodes::start(vec![spec], opts, "tally-kafka-"),
        }
    }

    /// `HOST:PORT` (`127.0.0.1:PORT` unless started elsewhere), for `--brokers`.
    pub fn addr(&self) -> String {
        self.nodes.bootstrap()
    }

    pub fn data_dir(&self) -> &Path {
        self.nodes.dir.path()
    }

    /// SIGKILLs the broker (its data stays).
    pub fn kill(&mut self) {
        self.nodes.nodes[0].kill();
    }

    /// SIGSTOPs the broker: its connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.nodes.nodes[0].pause();
    }

    /// SIGCONTs a paused broker.
    pub fn resume(&self) {
        self.nodes.nodes[0].resume();
    }

    /// Kills the broker if it runs, starts it again on the same ports and data, and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.nodes.restart(0);
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        self.nodes.nodes[0].log()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.nodes.keep_on_panic();
    }
}

/// A three-node KRaft cluster (each node broker and controller; internal topics with
/// replication factor 3 and `min.insync.replicas` 2), with the same controls per node.
pub struct Cluster {
    nodes: Nodes,
}

impl Cluster {
    /// Three nodes on 127.0.0.1.
    pub fn start() -> Cluster {
        Cluster::start_on(
            (1..=3).map(NodeSpec::local).collect(),
            KafkaOptions::default(),
        )
    }

    /// Nodes where `specs` say (their own network namespaces, say).
    pub fn start_on(specs: Vec<NodeSpec>, opts: KafkaOptions) -> Cluster {
        Cluster {
            nodes: Nodes::start(specs, opts, "tally-kafka-cluster-"),
        }
    }

    /// Every node's client address, comma-separated, for `--brokers`.
    pub fn bootstrap(&self) -> String {
        self.nodes.bootstrap()
    }

    pub fn len(&self) -> usize {
        self.nodes.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.nodes.is_empty()
    }

    pub fn node(&mut self, i: usize) -> &mut KafkaNode {
        &mut self.nodes.nodes[i]
    }

    pub fn data_dir(&self) -> &Path {
        self.nodes.dir.path()
    }

    /// Kills node `i` if it runs, starts it again on the same data, waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.nodes.restart(i);
    }

    /// Starts a killed node again without waiting.
    pub fn spawn_again(&mut self, i: usize) {
        self.nodes.nodes[i].spawn();
    }

    /// Waits until node `i` answers metadata listing itself.
    pub fn wait_up(&mut self, i: usize) {
        self.nodes.wait_up(i);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.keep_on_panic();
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_id;

    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        // One random id in 64 would; 10,000 draws make a missing guard all but certain to show.
        for _ in 0..10_000 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
