//! What an acknowledgement (ingest's 200, acks=all) is worth on the topic: how Tally creates a
//! replicated topic so that it means two copies, and the report of a topic whose settings make
//! it mean less than README's durability table says.
//!
//! - A topic Tally creates with replication factor R >= 2 gets `min.insync.replicas=2`
//!   ([`create_configs`]): acks=all then waits for at least two brokers, and a partition whose
//!   in-sync replicas shrank to one refuses writes (ingest answers 503) instead of acknowledging
//!   a single copy. With R = 2 that means writes stop while one of the two brokers is down.
//! - At start, ingest and the aggregator read the topic's effective settings (DescribeConfigs:
//!   the topic's own value, else the broker's default) and its replication factor (metadata),
//!   and [`judge`] them: `min.insync.replicas` below 2 with R >= 2, or
//!   `unclean.leader.election.enable=true`, is one WARN line and the gauge
//!   [`WEAKER_THAN_PROMISED`] at 1 for each reason. A report, never a refusal: the operator may
//!   have chosen it. A broker that reports no `min.insync.replicas` (Raft-based brokers such as
//!   Redpanda, where acks=all waits for a majority) is not judged on it.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, ResourceSpecifier};

use crate::client_config;
use crate::kafka::KafkaArgs;

/// 1 per reason (`min_insync_replicas_below_2`, `unclean_leader_election`) while the topic's
/// settings make an acknowledged write weaker than README's durability table; else 0.
pub const WEAKER_THAN_PROMISED: &str = "tally_topic_weaker_than_promised";

/// Every reason [`WEAKER_THAN_PROMISED`] is labelled with.
pub const REASONS: [&str; 2] = ["min_insync_replicas_below_2", "unclean_leader_election"];

/// Settings a topic created with `replication_factor` gets besides
/// [`crate::topic::CREATE_CONFIGS`].
pub fn create_configs(replication_factor: i32) -> Vec<(&'static str, &'static str)> {
    if replication_factor >= 2 {
        vec![("min.insync.replicas", "2")]
    } else {
        Vec::new()
    }
}

/// A setting that makes an acknowledgement weaker than the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakness {
    /// acks=all may be answered by the leader alone once the other replicas fell out of sync.
    MinInsyncBelowTwo {
        replication_factor: i32,
        min_insync: String,
    },
    /// A replica that is not in sync may become leader, dropping acknowledged records.
    UncleanLeaderElection,
}

impl Weakness {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Weakness::MinInsyncBelowTwo { .. } => REASONS[0],
            Weakness::UncleanLeaderElection => REASONS[1],
        }
    }

    /// What it means and what to do, for the WARN line.
    pub fn describe(&self, topic: &str) -> String {
        match self {
            Weakness::MinInsyncBelowTwo {
                replication_factor,
                min_insync,
            } => format!(
                "min.insync.replicas={min_insync} with replication factor {replication_factor}: \
                 an acknowledged write may be on one broker only; set it to 2 \
                 (infra/kafka-cli.sh configs --alter --entity-type topics --entity-name {topic} \
                 --add-config min.insync.replicas=2)"
            ),
            Weakness::UncleanLeaderElection => format!(
                "unclean.leader.election.enable=true: a replica that missed acknowledged writes \
                 may become leader and drop them; set it to false (infra/kafka-cli.sh configs \
                 --alter --entity-type topics --entity-name {topic} --add-config \
                 unclean.leader.election.enable=false)"
            ),
        }
    }
}

/// Judges a topic's effective settings (name to value, as DescribeConfigs gives them) and its
/// replication factor.
pub fn judge(replication_factor: i32, configs: &HashMap<String, String>) -> Vec<Weakness> {
    let mut found = Vec::new();
    if let Some(min_insync) = configs.get("min.insync.replicas") {
        let weak = min_insync.trim().parse::<i32>().map_or(true, |n| n < 2);
        if replication_factor >= 2 && weak {
            found.push(Weakness::MinInsyncBelowTwo {
                replication_factor,
                min_insync: min_insync.clone(),
            });
        }
    }
    if configs
        .get("unclean.leader.election.enable")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        found.push(Weakness::UncleanLeaderElection);
    }
    found
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the topic's settings and replication factor, and reports what [`judge`] finds: one
/// WARN line naming every weakness, and [`WEAKER_THAN_PROMISED`] per reason. A failure to read
/// them is a WARN line too, and changes nothing else. Call it once the process's metrics
/// recorder is installed. Returns what was found.
pub async fn report(kafka: &KafkaArgs) -> Vec<Weakness> {
    let topic = &kafka.topic;
    let found = match read(kafka).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(%topic, "cannot check the topic's durability settings: {e:#}");
            return Vec::new();
        }
    };
    for reason in REASONS {
        let on = found.iter().any(|w| w.reason() == reason);
        metrics::gauge!(WEAKER_THAN_PROMISED, "reason" => reason).set(if on { 1.0 } else { 0.0 });
    }
    if !found.is_empty() {
        let what: Vec<String> = found.iter().map(|w| w.describe(topic)).collect();
        tracing::warn!(
            %topic,
            "topic {topic} makes an acknowledged write weaker than README's durability table \
             says: {}",
            what.join("; ")
        );
    }
    found
}

/// The topic's effective settings (DescribeConfigs) and replication factor (metadata), judged.
async fn read(kafka: &KafkaArgs) -> anyhow::Result<Vec<Weakness>> {
    let topic = &kafka.topic;
    let admin = client_config::admin(kafka)?;
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the broker returned no configuration"))?
        .map_err(|code| anyhow::anyhow!("{code}"))?;
    let configs: HashMap<String, String> = resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    // Blocking, once at start.
    let md = admin.inner().fetch_metadata(Some(topic), TIMEOUT)?;
    let replication_factor = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().map(|p| p.replicas().len()).min())
        .ok_or_else(|| anyhow::anyhow!("topic {topic} has no partitions"))?;
    Ok(judge(replication_factor as i32, &configs))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::topic::tests::configs;

    #[test]
    fn a_replicated_topic_is_created_with_two_in_sync_replicas() {
        assert_eq!(create_configs(1), vec![]);
        for r in [2, 3, 5] {
            assert_eq!(create_configs(r), vec![("min.insync.replicas", "2")]);
        }
    }

    #[test]
    fn what_tally_creates_passes_the_judge() {
        for r in [1, 2, 3] {
            let c: HashMap<String, String> = create_configs(r)
                .into_iter()
                .chain([("unclean.leader.election.enable", "false")])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(judge(r, &c), vec![], "replication factor {r}");
        }
    }

    #[test]
    fn one_in_sync_replica_is_weak_only_on_a_replicated_topic() {
        let c = configs(&[("min.insync.replicas", "1")]);
        assert_eq!(judge(1, &c), vec![], "one replica promises one copy");
        let found = judge(3, &c);
        assert_eq!(
            found,
            vec![Weakness::MinInsyncBelowTwo {
                replication_factor: 3,
                min_insync: "1".into()
            }]
        );
        assert_eq!(found[0].reason(), "min_insync_replicas_below_2");
        assert!(found[0].describe("inc").contains("--entity-name inc"));
        assert_eq!(judge(2, &configs(&[("min.insync.replicas", "3")])), vec![]);
        // Not reported at all (Raft-based brokers): not judged.
        assert_eq!(judge(3, &configs(&[])), vec![]);
    }

    #[test]
    fn unclean_leader_election_is_weak_whatever_the_replicas() {
        let c = configs(&[
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", "true"),
        ]);
        let found = judge(2, &c);
        let reasons: Vec<&str> = found.iter().map(Weakness::reason).collect();
        assert_eq!(reasons, REASONS);
        assert_eq!(judge(1, &c), vec![Weakness::UncleanLeaderElection]);
    }
}
