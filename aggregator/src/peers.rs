//! Who owns which partition, as the consumer group itself says: no coordination service of its
//! own. Each aggregator that serves reads for the whole group puts the URL of its HTTP API in
//! its Kafka `client.id` ([`client_id`]); a thread asks the group coordinator for the group's
//! members and their assignments (DescribeGroups) every [`REFRESH`], and the read path looks a
//! key's partition up here to forward the read to its owner ([`crate::api`]).
//!
//! A member's assignment is the consumer protocol's `Assignment` (version, then per topic its
//! name and partitions, then user data), which the coordinator hands back as bytes; only the
//! topic and partitions are read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tally_pipeline::client_config::{self, Fetch};
use tally_pipeline::kafka::KafkaArgs;
use tokio_util::sync::CancellationToken;

/// How often the group's members are read.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Prefix of an aggregator's `client.id`, before the URL of its HTTP API.
const CLIENT_ID_PREFIX: &str = "tally-aggregator ";

/// The `client.id` that advertises `url` to the other members.
pub fn client_id(url: &str) -> String {
    format!("{CLIENT_ID_PREFIX}{url}")
}

fn url_of(client_id: &str) -> Option<&str> {
    client_id.strip_prefix(CLIENT_ID_PREFIX)
}

/// The group as last read: each partition's owner URL, and the topic's partition count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub owners: BTreeMap<i32, String>,
    pub partitions: Option<i32>,
}

/// A shared, refreshed [`Table`].
#[derive(Clone, Default)]
pub struct Peers(Arc<RwLock<Table>>);

impl Peers {
    pub fn table(&self) -> Table {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, t: Table) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Starts the thread that reads the group until `stop`.
    pub fn watch(kafka: &KafkaArgs, group: &str, stop: CancellationToken) -> anyhow::Result<Peers> {
        let peers = Peers::default();
        let client: BaseConsumer = client_config::reader(kafka, &Fetch::default()).create()?;
        let (topic, group, out) = (kafka.topic.clone(), group.to_owned(), peers.clone());
        std::thread::Builder::new()
            .name("peers".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    match read(&client, &topic, &group) {
                        Ok(t) => out.set(t),
                        Err(e) => tracing::debug!(error = %e, "cannot read the group's members"),
                    }
                    std::thread::sleep(REFRESH);
                }
            })?;
        Ok(peers)
    }
}

fn read(client: &BaseConsumer, topic: &str, group: &str) -> anyhow::Result<Table> {
    let timeout = Duration::from_secs(5);
    let partitions = tally_pipeline::topic::partitions_of(client, topic, timeout)?.len() as i32;
    let list = client.fetch_group_list(Some(group), timeout)?;
    let mut owners = BTreeMap::new();
    for g in list.groups().iter().filter(|g| g.name() == group) {
        for m in g.members() {
            let (Some(url), Some(bytes)) = (url_of(m.client_id()), m.assignment()) else {
                continue;
            };
            for p in assigned(bytes, topic).unwrap_or_default() {
                owners.insert(p, url.to_owned());
            }
        }
    }
    Ok(Table {
        owners,
        partitions: Some(partitions),
    })
}

/// The partitions of `topic` in a consumer protocol `Assignment`; `None` when the bytes are
/// cut short.
pub fn assigned(bytes: &[u8], topic: &str) -> Option<Vec<i32>> {
    let mut r = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (r.get(..n)?, r.get(n..)?);
        r = rest;
        Some(head)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = take(len.max(0) as usize)?;
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..count.max(0) {
            let p = i32::from_be_bytes(take(4)?.try_into().ok()?);
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 0];
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn reads_the_partitions_of_its_topic() {
        let b = assignment(&[("other", &[0, 1]), ("increments", &[2, 5])]);
        assert_eq!(assigned(&b, "increments"), Some(vec![2, 5]));
        assert_eq!(assigned(&b, "none"), Some(vec![]));
        assert_eq!(assigned(&b[..b.len() - 9], "increments"), None, "cut short");
        assert_eq!(assigned(&[], "increments"), None);
    }

    #[test]
    fn the_url_rides_in_the_client_id() {
        let id = client_id("http://10.0.0.2:8081");
        assert_eq!(url_of(&id), Some("http://10.0.0.2:8081"));
        assert_eq!(url_of("rdkafka"), None);
    }
}
