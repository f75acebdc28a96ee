//! The operator's own Kafka client settings (`--kafka-config KEY=VALUE`, `TALLY_KAFKA_CONFIG`,
//! `--kafka-config-file PATH`): security (TLS, SASL), timeouts, anything librdkafka takes. They
//! are applied to every client Tally makes, after Tally's own settings ([`Overrides::apply`]).
//!
//! Two rules live here and nowhere else:
//! - a setting that would break a guarantee Tally gives (acknowledgement by every in-sync
//!   replica, the idempotent producer, reading committed records only, offsets kept in SQLite
//!   and never moved by the client, Java-compatible key partitioning) is refused at start with
//!   one line saying why ([`refusal`]);
//! - a secret (a password, a private key, a client secret: [`is_secret`]) is never shown: not
//!   in a log line, not in an error message, not in `Debug` output. Settings are named by key
//!   only in every message this module writes.
//!
//! Order: the file first, then the flags (or the environment variable) in the order given; a
//! key given twice keeps its last value.

use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

/// An error that the operator must fix (a setting, a credential, a certificate, an ACL); the
/// binaries end with exit 2 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Misconfigured(pub String);

/// The exit code for an error: 2 for a [`Misconfigured`] anywhere in its chain, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<Misconfigured>()) {
        2
    } else {
        1
    }
}

/// The flags every binary takes (flattened into [`crate::kafka::KafkaArgs`]). The raw values
/// are kept in [`Raw`], whose `Debug` shows no value, and judged by [`KafkaConfigArgs::load`]:
/// a parse error from the command-line parser would echo the value, which may be a password.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KafkaConfigArgs {
    /// A librdkafka client setting, KEY=VALUE, applied to every Kafka client after Tally's own
    /// (repeatable; the environment variable takes KEY=VALUE;KEY=VALUE). Settings that would
    /// break a guarantee (acks, idempotence, isolation level, offset handling, partitioner)
    /// are refused.
    #[arg(long = "kafka-config", global = true, env = "TALLY_KAFKA_CONFIG",
          value_name = "KEY=VALUE", value_delimiter = ';', hide_env_values = true,
          value_parser = Raw::parse)]
    pub kafka_config: Vec<Raw>,
    /// A file of librdkafka client settings in Java properties form (`key=value` lines, `#`
    /// comments), as Kafka's tools take with --command-config; applied before --kafka-config.
    /// Keep it readable by Tally's user only (mode 0600) when it holds a password.
    #[arg(
        long = "kafka-config-file",
        global = true,
        env = "TALLY_KAFKA_CONFIG_FILE",
        value_name = "PATH"
    )]
    pub kafka_config_file: Option<PathBuf>,
}

/// One `--kafka-config` value as given. Its `Debug` hides it.
#[derive(Clone)]
pub struct Raw(String);

impl Raw {
    fn parse(s: &str) -> Result<Raw, std::convert::Infallible> {
        Ok(Raw(s.to_owned()))
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('=') {
            Some((k, _)) => write!(f, "{}=<hidden>", k.trim()),
            None => f.write_str("<hidden>"),
        }
    }
}

/// Why a key is refused, or `None` when the operator may set it.
pub fn refusal(key: &str) -> Option<&'static str> {
    Some(match key {
        "acks" | "request.required.acks" => {
            "Tally answers 200 only once every in-sync replica has the record (acks=all)"
        }
        "enable.idempotence" => {
            "the idempotent producer is what keeps the producer's own retries from doubling records"
        }
        "max.in.flight.requests.per.connection" | "max.in.flight" => {
            "the idempotent producer keeps order and exactness only with its own limit"
        }
        "transactional.id" => "Tally's producer is idempotent, not transactional",
        "isolation.level" => {
            "Tally folds committed records only (read_committed), as rebuilds and verify do"
        }
        "enable.auto.commit" | "enable.auto.offset.store" | "auto.commit.interval.ms" => {
            "offsets live in SQLite with the sums they produced; the client never commits them"
        }
        "auto.offset.reset" => {
            "a start position outside the log is an error, never a silent jump to either end"
        }
        "enable.partition.eof" => "the replayer and the standby learn a partition's end from it",
        "partitioner" | "partitioner.class" => {
            "keys are placed with Java clients' murmur2 partitioner, which the aggregators' key \
             ownership relies on"
        }
        "group.id" => "the aggregator's group is set with --group",
        "bootstrap.servers" | "metadata.broker.list" => "the brokers are set with --brokers",
        "group.protocol" | "partition.assignment.strategy" | "group.instance.id" => {
            "the aggregators' partition ownership relies on Tally's own group settings"
        }
        _ => return None,
    })
}

/// Whether the value of `key` is a secret: never written anywhere by Tally.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("jaas")
        || k.contains("oauthbearer.config")
        || k.ends_with(".pem")
        || k.ends_with("key")
        || k.contains("token")
}

/// The operator's settings, judged and in order. `Debug` shows keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    settings: Vec<(String, String)>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.settings.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Overrides {
    /// Judges settings given as (key, value) pairs, in order; the error names the key only.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Overrides, String> {
        for (key, _) in &pairs {
            if key.is_empty() {
                return Err("a Kafka client setting has an empty key".into());
            }
            if let Some(why) = refusal(key) {
                return Err(format!(
                    "Kafka client setting {key} is refused: {why}; remove it from \
                     --kafka-config / --kafka-config-file"
                ));
            }
        }
        Ok(Overrides { settings: pairs })
    }

    /// Sets every setting on `c`, over what Tally set before.
    pub fn apply(&self, c: &mut ClientConfig) {
        for (k, v) in &self.settings {
            c.set(k, v);
        }
    }

    /// The keys, in order (for a start-up line; never the values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.settings.iter().map(|(k, _)| k.as_str())
    }

    /// The value of `key` when it is not a secret (for messages such as "over SASL_SSL").
    pub fn shown(&self, key: &str) -> Option<&str> {
        if is_secret(key) {
            return None;
        }
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The secret values, to tell them apart in text that must not hold them (tests, and
    /// [`Overrides::redact`]).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.settings
            .iter()
            .filter(|(k, v)| is_secret(k) && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `text` with every secret value replaced by `<hidden>`: for messages that quote what a
    /// library said, which Tally does not control.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self.secrets() {
            out = out.replace(s, "<hidden>");
        }
        out
    }
}

impl KafkaConfigArgs {
    /// Reads the file, splits the flags, and judges every setting. The error is one line that
    /// names a key or the file, never a value.
    pub fn load(&self) -> Result<Overrides, String> {
        let mut pairs = Vec::new();
        if let Some(path) = &self.kafka_config_file {
            pairs.extend(read_file(path)?);
        }
        for raw in &self.kafka_config {
            let text = raw.0.trim();
            if text.is_empty() {
                continue;
            }
            let Some((k, v)) = text.split_once('=') else {
                return Err(
                    "a --kafka-config value (TALLY_KAFKA_CONFIG) is not KEY=VALUE; its text is not \
                     shown, as it may hold a secret"
                        .into(),
                );
            };
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Overrides::from_pairs(pairs)
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot read the Kafka client settings file {}: {e}",
            path.display()
        )
    })?;
    let mut pairs = Vec::new();
    java_properties::PropertiesIter::new(std::io::BufReader::new(file))
        .read_into(|k, v| pairs.push((k, v)))
        .map_err(|e| {
            // The library's message may quote the line; say where only.
            let line = e
                .line_number()
                .map(|n| format!(" at line {n}"))
                .unwrap_or_default();
            format!(
                "the Kafka client settings file {} is not in Java properties form{line}",
                path.display()
            )
        })?;
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        k: KafkaConfigArgs,
    }

    fn load(args: &[&str]) -> Result<Overrides, String> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().k.load()
    }

    #[test]
    fn flags_apply_in_order_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        std::fs::write(
            &path,
            "# managed cluster\nsecurity.protocol=SASL_SSL\nsasl.mechanisms : SCRAM-SHA-512\n\
             sasl.username=tally\nsasl.password=s3cr=t\n",
        )
        .unwrap();
        let o = load(&[
            "--kafka-config-file",
            path.to_str().unwrap(),
            "--kafka-config",
            "sasl.username=other",
            "--kafka-config",
            "socket.timeout.ms = 5000",
        ])
        .unwrap();
        let mut c = ClientConfig::new();
        c.set("socket.timeout.ms", "10000");
        o.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(
            c.get("sasl.username"),
            Some("other"),
            "flags after the file"
        );
        assert_eq!(c.get("sasl.password"), Some("s3cr=t"));
        assert_eq!(
            c.get("socket.timeout.ms"),
            Some("5000"),
            "after Tally's own"
        );
        assert_eq!(o.shown("security.protocol"), Some("SASL_SSL"));
        assert_eq!(o.shown("sasl.password"), None);
    }

    #[test]
    fn guarantee_breaking_keys_are_refused_by_name() {
        for key in [
            "acks",
            "enable.idempotence",
            "isolation.level",
            "enable.auto.commit",
            "auto.offset.reset",
            "partitioner",
        ] {
            let e = load(&["--kafka-config", &format!("{key}=zzz-value")]).unwrap_err();
            assert!(e.contains(key) && e.contains("refused"), "{e}");
            assert!(!e.contains("zzz-value"), "{e}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let o = load(&[
            "--kafka-config",
            "sasl.password=hunter2",
            "--kafka-config",
            "ssl.key.password=swordfish",
            "--kafka-config",
            "sasl.oauthbearer.client.secret=opensesame",
            "--kafka-config",
            "security.protocol=SASL_SSL",
        ])
        .unwrap();
        let shown = format!("{o:?}");
        for s in ["hunter2", "swordfish", "opensesame"] {
            assert!(!shown.contains(s), "{shown}");
        }
        assert!(shown.contains("sasl.password"), "{shown}");
        assert_eq!(o.secrets().count(), 3);
        assert_eq!(
            o.redact("login as x with hunter2 failed"),
            "login as x with <hidden> failed"
        );
        // The parsed command line's Debug (what a `{config:?}` would print) hides values too.
        let cli = Cli::try_parse_from(["t", "--kafka-config", "sasl.password=hunter2"]).unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
        // A malformed value is not echoed.
        let e = load(&["--kafka-config", "sasl.passwordhunter2"]).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_environment_variable_splits_on_semicolons() {
        let raw: Vec<Raw> = "security.protocol=SSL;ssl.ca.location=/etc/ca.pem"
            .split(';')
            .map(|s| Raw(s.into()))
            .collect();
        let args = KafkaConfigArgs {
            kafka_config: raw,
            kafka_config_file: None,
        };
        let o = args.load().unwrap();
        assert_eq!(
            o.keys().collect::<Vec<_>>(),
            ["security.protocol", "ssl.ca.location"]
        );
        // And clap splits the flag's values the same way (the env var goes through it too).
        let cli = Cli::try_parse_from(["t", "--kafka-config", "a.b=1;c.d=2"]).unwrap();
        assert_eq!(cli.k.load().unwrap().keys().count(), 2);
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let e = load(&["--kafka-config-file", "/nonexistent/client.properties"]).unwrap_err();
        assert!(e.contains("/nonexistent/client.properties"), "{e}");
    }
}
