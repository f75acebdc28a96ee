//! A Kafka node secured as a managed cluster is: clients connect over `SASL_SSL` only (TLS with
//! a certificate the test made, SCRAM-SHA-512 logins created when the node is formatted), and
//! the `StandardAuthorizer` lets each principal do only what an ACL allows
//! (`allow.everyone.if.no.acl.found=false`).
//!
//! - Certificates: a CA and a broker certificate for `127.0.0.1` only (so `localhost` does not
//!   match it), made with rcgen; a second CA that signed nothing, for "unknown CA".
//! - Listeners: `SASL_SSL` for clients and between brokers (the broker logs in as `broker`),
//!   and the controller listener over TLS with client certificates (principal `CN=broker`).
//!   Super users: `broker`, `CN=broker` and `admin`.
//! - Users ([`USERS`]): `admin` (the test's administrator), `ingest`, `aggregator`, `replayer`,
//!   and `nobody`, who may log in and nothing else. Each has a random password.
//! - ACLs: granted and revoked through Kafka's Admin API as `admin`, by a small Java program run
//!   with Kafka's own client jars (`testkit/java/TallyKafkaAdmin.java`), which returns once the
//!   broker's authorizer applies them. [`SecuredBroker::grant_tally`] gives each of Tally's
//!   principals exactly what README's "Security" section lists.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::broker::{kafka_home, Broker, KafkaOptions, NodeSpec};

/// The SCRAM users the node is formatted with.
pub const USERS: [&str; 5] = ["admin", "ingest", "aggregator", "replayer", "nobody"];

/// The group id of Tally's readers of assigned partitions (never joined).
pub const READER_GROUP: &str = "tally-replayer-unused";

/// The SCRAM mechanism of every user.
pub const MECHANISM: &str = "SCRAM-SHA-512";

/// One secured node, its certificates and its users' passwords.
pub struct SecuredBroker {
    broker: Broker,
    dir: tempfile::TempDir,
    passwords: BTreeMap<String, String>,
}

fn password() -> String {
    // Distinctive, so that a test can grep every log for it.
    format!("pw{:032x}", rand::random::<u128>())
}

struct Pki {
    ca: String,
    other_ca: String,
    /// The broker's private key and certificate chain, as Kafka's PEM key store reads them.
    broker_store: String,
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(p, KeyPair::generate().expect("CA key")).expect("CA cert")
    };
    let issuer = ca("Tally test CA");
    let other = ca("Some other CA");
    let key = KeyPair::generate().expect("broker key");
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("broker params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "broker");
    let cert = p.signed_by(&key, &issuer).expect("broker cert");
    Pki {
        ca: issuer.pem(),
        other_ca: other.pem(),
        broker_store: format!("{}{}{}", key.serialize_pem(), cert.pem(), issuer.pem()),
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write");
}

fn settings_for(user: &str, password: &str, ca: &Path) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanisms", MECHANISM.to_string()),
        ("sasl.username", user.to_string()),
        ("sasl.password", password.to_string()),
        ("ssl.ca.location", ca.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl SecuredBroker {
    /// Starts one secured node on 127.0.0.1 and returns once it answers `admin`.
    pub fn start() -> SecuredBroker {
        let dir = tempfile::Builder::new()
            .prefix("tally-secured-")
            .tempdir()
            .expect("cannot create the certificates' directory");
        let pki = make_pki();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca).expect("write ca.pem");
        std::fs::write(dir.path().join("other-ca.pem"), &pki.other_ca).expect("write other CA");
        let store = dir.path().join("broker.pem");
        write_private(&store, &pki.broker_store);
        let mut passwords: BTreeMap<String, String> =
            USERS.iter().map(|u| (u.to_string(), password())).collect();
        passwords.insert("broker".into(), password());
        let spec = NodeSpec::local(1);
        let (host, port, cport) = (spec.host.clone(), spec.port, spec.controller_port);
        let mut opts = KafkaOptions::default();
        opts.extra.extend([
            format!("listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{cport}"),
            format!("advertised.listeners=SASL_SSL://{host}:{port}"),
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL".into(),
            "inter.broker.listener.name=SASL_SSL".into(),
            format!("sasl.enabled.mechanisms={MECHANISM}"),
            format!("sasl.mechanism.inter.broker.protocol={MECHANISM}"),
            format!(
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required \
                 username=\"broker\" password=\"{}\";",
                passwords["broker"]
            ),
            "listener.name.controller.ssl.client.auth=required".into(),
            "ssl.keystore.type=PEM".into(),
            format!("ssl.keystore.location={}", store.display()),
            "ssl.truststore.type=PEM".into(),
            format!("ssl.truststore.location={}", ca.display()),
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
            "allow.everyone.if.no.acl.found=false".into(),
            "super.users=User:broker;User:CN=broker;User:admin".into(),
        ]);
        for (user, pw) in &passwords {
            opts.format_args.push("--add-scram".into());
            opts.format_args
                .push(format!("{MECHANISM}=[name={user},password={pw}]"));
        }
        opts.client = settings_for("admin", &passwords["admin"], &ca);
        SecuredBroker {
            broker: Broker::start_on(spec, opts),
            dir,
            passwords,
        }
    }

    /// `127.0.0.1:PORT`: the address the certificate is for.
    pub fn addr(&self) -> String {
        self.broker.addr()
    }

    /// `localhost:PORT`: the same listener by a name the certificate does not list.
    pub fn mismatched_addr(&self) -> String {
        self.addr().replace("127.0.0.1", "localhost")
    }

    pub fn password(&self, user: &str) -> &str {
        &self.passwords[user]
    }

    /// Every password the node knows (for tests that grep logs for them).
    pub fn passwords(&self) -> Vec<&str> {
        self.passwords.values().map(String::as_str).collect()
    }

    /// The CA that signed the broker's certificate (for `ssl.ca.location`).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing the broker shows.
    pub fn other_ca_pem(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// librdkafka settings that log `user` in over SASL_SSL and trust the test's CA.
    pub fn client_settings(&self, user: &str) -> Vec<(String, String)> {
        settings_for(user, &self.passwords[user], &self.ca_pem())
    }

    /// Writes `settings` as a Java properties file readable by its owner only (mode 0600), for
    /// `--kafka-config-file`; returns its path.
    pub fn properties_file(&self, name: &str, settings: &[(String, String)]) -> PathBuf {
        let path = self.dir.path().join(name);
        let text: String = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        write_private(&path, &text);
        path
    }

    /// [`SecuredBroker::properties_file`] of [`SecuredBroker::client_settings`].
    pub fn client_file(&self, user: &str) -> PathBuf {
        self.properties_file(&format!("{user}.properties"), &self.client_settings(user))
    }

    /// Runs `commands` (see `TallyKafkaAdmin.java`: `topic`, `allow`, `revoke` lines) as
    /// `admin`; panics with the tool's output when it fails.
    pub fn admin(&self, commands: &str) {
        let props = self.dir.path().join("admin-java.properties");
        write_private(
            &props,
            &format!(
                "security.protocol=SASL_SSL\nsasl.mechanism={MECHANISM}\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
                 required username=\"admin\" password=\"{}\";\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={}\n",
                self.passwords["admin"],
                self.ca_pem().display()
            ),
        );
        let lib = kafka_home().join("lib");
        let mut jars: Vec<String> = std::fs::read_dir(&lib)
            .expect("Kafka's lib directory")
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.ends_with(".jar"))
            .collect();
        jars.sort();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/java/TallyKafkaAdmin.java");
        let mut child = Command::new("java")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                kafka_home().join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(jars.join(":"))
            .arg(source)
            .arg(self.addr())
            .arg(&props)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run java (is OpenJDK installed?)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(commands.as_bytes())
            .expect("write the admin commands");
        let out = child.wait_with_output().expect("the admin tool");
        assert!(
            out.status.success(),
            "TallyKafkaAdmin failed on:\n{commands}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates `topic` (as `admin`: Tally's principals have no CREATE) with Tally's settings.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.admin(&format!("topic {topic} {partitions} 1\n"));
    }

    /// The ACL lines that give Tally's principals what they need on `topic` and `group`:
    /// ingest writes idempotently, the aggregator reads and uses its group, the replayer reads.
    pub fn tally_acls(topic: &str, group: &str) -> String {
        let mut lines = String::new();
        let mut allow = |user: &str, kind: &str, name: &str, op: &str| {
            lines.push_str(&format!("allow User:{user} {kind} {name} {op}\n"));
        };
        for op in ["WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"] {
            allow("ingest", "TOPIC", topic, op);
        }
        allow("ingest", "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE");
        for user in ["aggregator", "replayer"] {
            for op in ["READ", "DESCRIBE", "DESCRIBE_CONFIGS"] {
                allow(user, "TOPIC", topic, op);
            }
        }
        allow("aggregator", "GROUP", group, "READ");
        // The readers of assigned partitions (replayer, standby, the member table) carry a group
        // id they never join; librdkafka still looks its coordinator up, which needs DESCRIBE.
        for user in ["aggregator", "replayer"] {
            allow(user, "GROUP", READER_GROUP, "DESCRIBE");
        }
        lines
    }

    /// Grants [`SecuredBroker::tally_acls`].
    pub fn grant_tally(&self, topic: &str, group: &str) {
        self.admin(&Self::tally_acls(topic, group));
    }

    /// SIGKILLs the node (its data stays).
    pub fn kill(&mut self) {
        self.broker.kill();
    }

    /// Kills the node if it runs, starts it again on the same data and waits until it answers.
    pub fn restart(&mut self) {
        self.broker.restart();
    }

    /// The node's log.
    pub fn log(&self) -> String {
        self.broker.log()
    }
}
