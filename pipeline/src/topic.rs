//! What Tally needs from its topic, checked rather than assumed: every record kept (no
//! compaction, no retention by time or size, unless the operator accepts finite retention), and
//! each partition's log still holding everything past the offsets a database stores.
//!
//! The judgements are pure functions ([`judge_configs`], [`judge_position`]) so that they are
//! unit-tested without a broker; [`check`] reads the configuration with DescribeConfigs and
//! applies them at start in ingest, the aggregator and the replayer. The topic's creation
//! ([`ensure`]), its id ([`id`], [`check_id`]) and its partitions ([`partitions_of`]) are asked
//! of the broker here too.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use crate::client_config;
use crate::kafka::KafkaArgs;

/// How long an admin request (creation, configuration, id) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic settings Tally creates its topic with: never delete a record, never compact.
pub const CREATE_CONFIGS: [(&str, &str); 3] = [
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("cleanup.policy", "delete"),
];

/// What the check found acceptable but worth saying at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCheck {
    /// Every record is kept for ever.
    KeepsEverything,
    /// Records are deleted after a time or size, and the operator accepted it.
    FiniteRetentionAccepted(String),
}

/// Judges a topic's configuration (name to value, as DescribeConfigs returns it). Compaction
/// is refused always; finite retention unless `accept_finite_retention`.
pub fn judge_configs(
    topic: &str,
    configs: &HashMap<String, String>,
    accept_finite_retention: bool,
) -> Result<TopicCheck, String> {
    let get = |name: &str| configs.get(name).map(String::as_str);
    let policy = get("cleanup.policy").unwrap_or("delete");
    if policy.split(',').any(|p| p.trim() == "compact") {
        return Err(format!(
            "topic {topic} has cleanup.policy={policy}: compaction deletes all but the last \
             increment of each key, so sums would be wrong; set cleanup.policy=delete on the topic \
             (kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config \
             cleanup.policy=delete) and rebuild the database if records were already compacted"
        ));
    }
    let mut finite = Vec::new();
    for name in ["retention.ms", "retention.bytes"] {
        match get(name).map(str::parse::<i64>) {
            None => finite.push(format!("{name} unknown")),
            Some(Ok(-1)) => {}
            Some(Ok(v)) => finite.push(format!("{name}={v}")),
            Some(Err(_)) => finite.push(format!("{name}={}", get(name).unwrap_or_default())),
        }
    }
    if finite.is_empty() {
        return Ok(TopicCheck::KeepsEverything);
    }
    let what = finite.join(", ");
    if accept_finite_retention {
        return Ok(TopicCheck::FiniteRetentionAccepted(what));
    }
    Err(format!(
        "topic {topic} deletes records ({what}): rebuild, verify and as-of need the whole log; \
         set retention.ms=-1 and retention.bytes=-1 on the topic, or pass \
         --accept-finite-retention (TALLY_ACCEPT_FINITE_RETENTION=true) to run anyway"
    ))
}

/// Why a partition cannot be folded on from a stored next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// The log starts past the stored next offset: records in between were deleted (retention
    /// or DeleteRecords) before anything folded them.
    StartPastStored { next: i64, log_start: i64 },
    /// The log ends before the stored next offset: the topic was recreated or the broker lost
    /// data, so the stored offsets describe a log that no longer exists.
    EndBeforeStored { next: i64, log_end: i64 },
}

impl Unreadable {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Unreadable::StartPastStored { .. } => "log_start_past_stored_offset",
            Unreadable::EndBeforeStored { .. } => "log_end_before_stored_offset",
        }
    }

    /// The sentence an operator reads: topic, partition and offsets, and what to do.
    pub fn describe(&self, topic: &str, partition: i32) -> String {
        match *self {
            Unreadable::StartPastStored { next, log_start } => format!(
                "topic {topic} partition {partition}: the log starts at offset {log_start} but the \
                 next offset to fold is {next}; records {next}..{log_start} were deleted \
                 (retention or DeleteRecords) before they were folded (README, Recovery: records \
                 deleted before they were folded)"
            ),
            Unreadable::EndBeforeStored { next, log_end } => format!(
                "topic {topic} partition {partition}: the log ends at offset {log_end} but the \
                 database has folded up to offset {next}; the topic was recreated or the broker \
                 lost data (README, Recovery: topic recreated or broker wiped)"
            ),
        }
    }
}

/// Judges whether a partition whose next offset to read is `next` (0 when nothing is stored)
/// can be read on, given its log start and log end offsets (low and high watermarks).
pub fn judge_position(next: i64, log_start: i64, log_end: i64) -> Option<Unreadable> {
    if log_end < next {
        Some(Unreadable::EndBeforeStored { next, log_end })
    } else if log_start > next {
        Some(Unreadable::StartPastStored { next, log_start })
    } else {
        None
    }
}

/// Judges the broker's id of the topic against the one a database stored when it first folded
/// it. Another id means the topic was deleted and created again: the stored offsets and sums
/// describe a log that no longer exists, even once the new log has grown past them.
pub fn judge_topic_id(topic: &str, stored: &str, current: &str) -> Result<(), String> {
    if stored == current {
        return Ok(());
    }
    Err(format!(
        "topic {topic} has id {current} on the broker, but this database folded the topic with \
         id {stored}: the topic was deleted and created again, so its stored offsets and sums \
         describe another log; nothing is folded (README, Recovery: topic recreated or broker \
         wiped)"
    ))
}

/// Creates the topic when it is missing, keeping every record for ever ([`CREATE_CONFIGS`]),
/// then checks the topic's configuration as it is ([`check`]); an existing topic is fine
/// whatever its size.
pub async fn ensure(kafka: &KafkaArgs) -> anyhow::Result<()> {
    crate::kafka_access::check(kafka).await?;
    create(kafka).await?;
    check(kafka).await
}

/// Creates the topic with the flags' partitions and replication factor, unless it exists.
async fn create(kafka: &KafkaArgs) -> anyhow::Result<()> {
    let admin = client_config::admin(kafka)?;
    let mut topic = NewTopic::new(
        &kafka.topic,
        kafka.partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    let durability = crate::durability::create_configs(kafka.replication_factor);
    for (name, value) in CREATE_CONFIGS.into_iter().chain(durability) {
        topic = topic.set(name, value);
    }
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| format!("cannot create topic {} on {}", kafka.topic, kafka.brokers))?;
    for r in results {
        match r {
            Ok(_) => {
                tracing::info!(topic = %kafka.topic, partitions = kafka.partitions, "created topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %kafka.topic, "topic exists")
            }
            // A principal without CREATE (the usual ACLs: an administrator creates the topic):
            // the check that follows tells whether the topic is there.
            Err((
                _,
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            )) => tracing::debug!(topic = %kafka.topic, "not allowed to create the topic"),
            Err((t, code)) => bail!("cannot create topic {t} on {}: {code}", kafka.brokers),
        }
    }
    Ok(())
}

/// How long [`check`] waits for a topic's configuration to be described: a topic just created
/// on a cluster is known to the controller before every broker, and a broker that has not
/// learned of it yet describes it as unknown or with no entries at all.
const DESCRIBE_SETTLE: Duration = Duration::from_secs(30);

/// Reads the topic's configuration (DescribeConfigs) and refuses what would lose or miscount
/// increments ([`judge_configs`]); logs accepted finite retention as a warning.
pub async fn check(kafka: &KafkaArgs) -> anyhow::Result<()> {
    let configs = describe_settled(kafka).await?;
    match judge_configs(&kafka.topic, &configs, kafka.accept_finite_retention)
        .map_err(anyhow::Error::msg)?
    {
        TopicCheck::KeepsEverything => {
            tracing::debug!(topic = %kafka.topic, "topic keeps every record")
        }
        TopicCheck::FiniteRetentionAccepted(what) => tracing::warn!(
            topic = %kafka.topic, retention = %what,
            "topic deletes records; accepted by --accept-finite-retention: rebuild, verify \
             and as-of see only what is left of the log"
        ),
    }
    Ok(())
}

/// The topic's configuration as DescribeConfigs gives it (name to value), asked again until a
/// broker that knows the topic answers (within [`DESCRIBE_SETTLE`]): judging the empty answer
/// of a broker that has not learned of a new topic yet would refuse a topic that keeps
/// everything ("retention.ms unknown").
async fn describe_settled(kafka: &KafkaArgs) -> anyhow::Result<HashMap<String, String>> {
    let admin = client_config::admin(kafka)?;
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let deadline = tokio::time::Instant::now() + DESCRIBE_SETTLE;
    loop {
        let results = admin
            .describe_configs([&ResourceSpecifier::Topic(&kafka.topic)], &opts)
            .await
            .with_context(|| {
                format!(
                    "cannot read the configuration of topic {} on {}",
                    kafka.topic, kafka.brokers
                )
            })?;
        let Some(result) = results.into_iter().next() else {
            bail!(
                "the broker returned no configuration for topic {}",
                kafka.topic
            );
        };
        let settling = tokio::time::Instant::now() < deadline;
        match result {
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) if settling => {}
            Err(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                return Err(crate::kafka_access::Misconfigured(format!(
                    "cannot read the configuration of topic {} on {}: the broker's ACLs do not \
                     allow this principal DescribeConfigs on it (README, Security: ACLs)",
                    kafka.topic, kafka.brokers
                ))
                .into())
            }
            Err(code) => bail!(
                "cannot read the configuration of topic {} on {}: {code}",
                kafka.topic,
                kafka.brokers
            ),
            Ok(resource) if resource.entries.is_empty() && settling => {}
            Ok(resource) => {
                return Ok(resource
                    .entries
                    .into_iter()
                    .filter_map(|e| Some((e.name, e.value?)))
                    .collect())
            }
        }
        tracing::debug!(topic = %kafka.topic, "topic not described yet, asking again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`check`] for callers without an async runtime (the replayer).
pub fn check_blocking(kafka: &KafkaArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the topic check")?
        .block_on(async {
            crate::kafka_access::check(kafka).await?;
            check(kafka).await
        })
}

/// The topic's id as the broker gives it (DescribeTopics); `None` from a broker that gives
/// none. Blocking.
pub fn id(kafka: &KafkaArgs) -> anyhow::Result<Option<String>> {
    let admin = client_config::admin(kafka)?;
    let id = crate::topic_id::describe(admin.inner().native_ptr(), &kafka.topic, ADMIN_TIMEOUT)?;
    if id.is_none() {
        tracing::debug!(topic = %kafka.topic, "the broker gives no topic id");
    }
    Ok(id)
}

/// Binds `store` to the topic's id ([`crate::store::Store::bind_topic_id`]) and judges it
/// ([`judge_topic_id`]). The outer error is a failure to ask; the inner one says the topic
/// was recreated. A broker that gives no topic id passes (the log-end check of each
/// partition, [`judge_position`], is then what catches a recreated topic). Blocking.
pub fn check_id(
    kafka: &KafkaArgs,
    store: &mut crate::store::Store,
) -> anyhow::Result<Result<(), String>> {
    let Some(current) = id(kafka)? else {
        return Ok(Ok(()));
    };
    let stored = store
        .bind_topic_id(&current)
        .context("cannot store the topic id")?;
    Ok(judge_topic_id(&kafka.topic, &stored, &current))
}

/// Ids of the topic's partitions, from broker metadata.
pub fn partitions_of<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read metadata of topic {topic}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} is not in the broker's metadata"))?;
    if let Some(e) = t.error() {
        bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(e));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    Ok(ids)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A topic configuration as DescribeConfigs gives it, for the tests here and in
    /// `durability.rs`.
    pub(crate) fn configs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn another_topic_id_is_refused_and_names_both() {
        assert_eq!(judge_topic_id("t", "AbC", "AbC"), Ok(()));
        let e = judge_topic_id("t", "old-id", "new-id").unwrap_err();
        assert!(
            e.contains("old-id") && e.contains("new-id") && e.contains("topic t"),
            "{e}"
        );
    }

    #[test]
    fn the_creation_settings_pass_the_check() {
        let c = configs(&CREATE_CONFIGS);
        assert_eq!(
            judge_configs("t", &c, false),
            Ok(TopicCheck::KeepsEverything)
        );
    }

    #[test]
    fn compaction_is_refused_even_when_retention_is_accepted() {
        for policy in ["compact", "compact,delete", "delete, compact"] {
            let c = configs(&[
                ("cleanup.policy", policy),
                ("retention.ms", "-1"),
                ("retention.bytes", "-1"),
            ]);
            let e = judge_configs("inc", &c, true).unwrap_err();
            assert!(e.contains("topic inc has cleanup.policy="), "{e}");
            assert!(e.contains("set cleanup.policy=delete"), "{e}");
        }
    }

    #[test]
    fn finite_retention_needs_the_flag() {
        // Kafka's and Redpanda's default: seven days, no size limit.
        let c = configs(&[
            ("cleanup.policy", "delete"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
        ]);
        let e = judge_configs("inc", &c, false).unwrap_err();
        assert!(e.contains("retention.ms=604800000"), "{e}");
        assert!(e.contains("--accept-finite-retention"), "{e}");
        assert_eq!(
            judge_configs("inc", &c, true),
            Ok(TopicCheck::FiniteRetentionAccepted(
                "retention.ms=604800000".into()
            ))
        );
        // A size limit alone is finite too; an unreported setting is not assumed infinite.
        let c = configs(&[("retention.ms", "-1"), ("retention.bytes", "1073741824")]);
        assert!(judge_configs("inc", &c, false).is_err());
        let c = configs(&[("retention.bytes", "-1")]);
        assert!(judge_configs("inc", &c, false)
            .unwrap_err()
            .contains("retention.ms unknown"));
    }

    #[test]
    fn a_position_outside_the_log_is_judged_with_its_offsets() {
        assert_eq!(judge_position(5, 0, 9), None);
        assert_eq!(judge_position(0, 0, 0), None);
        assert_eq!(judge_position(9, 9, 9), None, "caught up at the end");
        let start = judge_position(3, 7, 20).unwrap();
        assert_eq!(
            start,
            Unreadable::StartPastStored {
                next: 3,
                log_start: 7
            }
        );
        let text = start.describe("inc", 4);
        assert!(text.starts_with("topic inc partition 4:"), "{text}");
        assert!(text.contains("records 3..7 were deleted"), "{text}");
        // A log that ends before the stored offset was recreated or wiped, whatever its start.
        let end = judge_position(50, 0, 10).unwrap();
        assert_eq!(end.reason(), "log_end_before_stored_offset");
        assert!(end.describe("inc", 1).contains("ends at offset 10"));
    }
}
