//! Kafka's view of what the aggregator folded, for the tools that read a consumer group's
//! committed offsets (Kafka's `kafka-consumer-groups --describe`, lag exporters, consoles).
//!
//! After each SQLite commit the member commits the same next offsets to its consumer group,
//! asynchronously ([`commit`]); a partition revoked in a rebalance gets its final ones too.
//! SQLite stays the truth: start positions come from it on every assignment
//! ([`crate::consumer`]), so a Kafka commit that failed, came late or was changed by hand
//! (`--reset-offsets`) changes nothing but what the tools display. A failed one is a debug line
//! and [`GROUP_COMMITS`]`{result="error"}`. The standby reads outside the group and commits
//! nothing to it.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Offset commits to the consumer group, by `result` (`ok`, `error`): each is one commit of
/// every partition a SQLite commit moved.
pub const GROUP_COMMITS: &str = "tally_group_offset_commits_total";

/// The list of `(partition, next offset)` of `topic` to commit.
pub fn offsets(topic: &str, committed: &[(i32, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(committed.len());
    for &(p, next) in committed {
        tpl.add_partition_offset(topic, p, Offset::Offset(next))?;
    }
    Ok(tpl)
}

/// Commits `committed` (partition, next offset) to the group without waiting; the outcome
/// arrives at [`outcome`] through the consumer's commit callback.
pub fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    committed: &[(i32, i64)],
) {
    if committed.is_empty() {
        return;
    }
    let sent = offsets(topic, committed).and_then(|tpl| consumer.commit(&tpl, CommitMode::Async));
    if let Err(e) = sent {
        outcome(&Err(e));
    }
}

/// Counts a group commit's outcome; a failure is a debug line only (SQLite has the offsets).
pub fn outcome(result: &KafkaResult<()>) {
    let label = match result {
        Ok(()) => "ok",
        Err(e) => {
            tracing::debug!(error = %e, "offset commit to the consumer group failed (display only)");
            "error"
        }
    };
    metrics::counter!(GROUP_COMMITS, "result" => label).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_next_offsets_are_the_group_offsets() {
        let tpl = offsets("inc", &[(0, 12), (5, 0)]).unwrap();
        let got: Vec<(i32, Offset)> = tpl
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(got, vec![(0, Offset::Offset(12)), (5, Offset::Offset(0))]);
        assert!(tpl.elements().iter().all(|e| e.topic() == "inc"));
    }
}
