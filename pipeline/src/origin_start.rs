//! What the aggregator and the replayer check about their origins at start, against each
//! origin's brokers, before anything is folded: the flags judged together, the local origin's
//! name bound to the database, every origin the database folds still given (or retired on
//! purpose), the same partition count everywhere, and each remote origin's identity (cluster
//! id, topic id) stored when first met and equal at every later start. The local origin's log
//! is judged by its topic id as it always was ([`crate::topic`]). The judgments themselves
//! are pure and live in [`crate::origin`]; this module asks the brokers and binds the store.
//!
//! A remote origin whose brokers cannot be reached at start is not refused (a datacenter
//! answers on its own while another is away); it is reported as unchecked, and nothing of it
//! may be folded until a later check passes.

use std::time::Duration;

use anyhow::Context as _;

use crate::kafka::KafkaArgs;
use crate::origin::{
    judge_identity, judge_origins, judge_partition_counts, Identity, OriginArgs, OriginId,
    RemoteOrigin, LOCAL,
};
use crate::store::{Store, StoreError};

/// How long one origin's brokers may take to answer at start.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

/// A refusal to start over the origins: one line saying what to change. Binaries exit 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// [`bind`] for callers that stop on a refusal: the refusal becomes a [`Refused`] error.
pub fn bind_or_refuse(
    kafka: &KafkaArgs,
    args: &OriginArgs,
    store: &mut Store,
) -> anyhow::Result<Origins> {
    bind(kafka, args, store)?.map_err(|why| Refused(why).into())
}

/// What an origin's brokers say about its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginFacts {
    pub identity: Identity,
    pub partitions: i32,
}

/// The origins a started process folds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// Remote origins checked and bound, each with its id in the database.
    pub checked: Vec<(OriginId, RemoteOrigin)>,
    /// Remote origins whose brokers did not answer: not folded until checked.
    pub unchecked: Vec<RemoteOrigin>,
}

/// Asks an origin's brokers for its cluster id, the topic's id and its partition count.
/// Blocking.
pub fn ask(kafka: &KafkaArgs) -> anyhow::Result<OriginFacts> {
    let admin = crate::client_config::admin(kafka)?;
    let client = admin.inner();
    let metadata = client
        .fetch_metadata(Some(&kafka.topic), ASK_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {}", kafka.brokers))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {} does not exist on {}", kafka.topic, kafka.brokers))?;
    let partitions = topic.partitions().len() as i32;
    let cluster_id = client.fetch_cluster_id(ASK_TIMEOUT);
    let topic_id = crate::topic::id(kafka)?;
    Ok(OriginFacts {
        identity: Identity {
            cluster_id,
            topic_id,
        },
        partitions,
    })
}

/// The flags' origins checked against the brokers and bound to `store` (see the module doc).
/// The outer error is a failure to ask the local brokers or the database; the inner one is a
/// refusal, one line saying what to change.
pub fn bind(
    kafka: &KafkaArgs,
    args: &OriginArgs,
    store: &mut Store,
) -> anyhow::Result<Result<Origins, String>> {
    let local = ask(kafka)?;
    let mut remotes = Vec::new();
    let mut unchecked = Vec::new();
    for remote in &args.origins {
        let theirs = kafka.with_brokers(&remote.brokers);
        match ask(&theirs) {
            Ok(facts) => remotes.push((remote.clone(), facts)),
            Err(e) => {
                tracing::warn!(
                    origin = %remote.name, brokers = %remote.brokers,
                    "origin not checked at start, not folded until it is: {e:#}"
                );
                unchecked.push(remote.clone());
            }
        }
    }
    bind_facts(args, store, &local, &remotes)
        .map(|r| r.map(|checked| Origins { checked, unchecked }))
}

/// [`bind`] once the brokers have answered: `local` for the local origin, `remotes` for the
/// remote ones that answered. Separate so that it is tested without brokers.
pub fn bind_facts(
    args: &OriginArgs,
    store: &mut Store,
    local: &OriginFacts,
    remotes: &[(RemoteOrigin, OriginFacts)],
) -> anyhow::Result<Result<Vec<(OriginId, RemoteOrigin)>, String>> {
    if let Err(why) = args.validate() {
        return Ok(Err(why));
    }
    if args.names_origins() {
        match store.bind_local_origin(args.local_name()) {
            Ok(()) => {}
            Err(StoreError::OriginName(why)) => return Ok(Err(why)),
            Err(e) => return Err(e.into()),
        }
    } else if let Some(stored) = store
        .local_origin_name()
        .filter(|n| *n != args.local_name())
    {
        return Ok(Err(format!(
            "this database's local origin is named {stored}: pass --origin-name {stored}"
        )));
    }
    let plan = match judge_origins(&store.known_origins(), args) {
        Ok(plan) => plan,
        Err(why) => return Ok(Err(why)),
    };
    let mut counts = vec![(args.local_name().to_owned(), local.partitions)];
    counts.extend(remotes.iter().map(|(r, f)| (r.name.clone(), f.partitions)));
    if let Err(why) = judge_partition_counts(&counts) {
        return Ok(Err(why));
    }
    // The local log is judged by its topic id as before ([`crate::topic::check_id`]: a
    // recreated topic stops folding and is reported by `/readyz`); its cluster id is only
    // recorded here.
    store.bind_identity(
        LOCAL,
        &Identity {
            cluster_id: local.identity.cluster_id.clone(),
            topic_id: None,
        },
    )?;
    // Every identity is judged before any new origin is stored.
    for (remote, facts) in remotes {
        if let Some(id) = store.origin_id(&remote.name) {
            if let Err(why) =
                judge_identity(&remote.name, &store.stored_identity(id)?, &facts.identity)
            {
                return Ok(Err(why));
            }
        }
    }
    let mut checked = Vec::new();
    for (remote, facts) in remotes {
        let id = store.add_origin(&remote.name)?;
        if plan.add.contains(&remote.name) {
            tracing::info!(origin = %remote.name, "new origin: folded from its start");
        }
        store.bind_identity(id, &facts.identity)?;
        checked.push((id, remote.clone()));
    }
    for name in &plan.retire {
        store.retire_origin(name)?;
        tracing::warn!(origin = %name, "origin retired: its part stays as folded");
    }
    Ok(Ok(checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cluster: &str, topic: &str, partitions: i32) -> OriginFacts {
        OriginFacts {
            identity: Identity {
                cluster_id: Some(cluster.into()),
                topic_id: Some(topic.into()),
            },
            partitions,
        }
    }

    fn args(local: &str, remotes: &[&str], retire: &[&str]) -> OriginArgs {
        OriginArgs {
            origin_name: Some(local.into()),
            origins: remotes
                .iter()
                .map(|n| RemoteOrigin {
                    name: n.to_string(),
                    brokers: format!("{n}:9092"),
                })
                .collect(),
            retire: retire.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn remote(name: &str, f: OriginFacts) -> (RemoteOrigin, OriginFacts) {
        (
            RemoteOrigin {
                name: name.into(),
                brokers: format!("{name}:9092"),
            },
            f,
        )
    }

    #[test]
    fn no_flags_binds_the_local_origin_only() {
        let mut s = Store::in_memory("t").unwrap();
        let out = bind_facts(&OriginArgs::default(), &mut s, &facts("C", "T", 12), &[]).unwrap();
        assert_eq!(out, Ok(vec![]));
        // Unnamed until a flag names origins: it can still be named later.
        assert_eq!(s.local_origin_name(), None);
        // The cluster id is recorded; the topic id is bound by the topic check, as before.
        assert_eq!(
            s.stored_identity(LOCAL).unwrap(),
            Identity {
                cluster_id: Some("C".into()),
                topic_id: None
            }
        );
        assert!(!s.folds_several_origins());
    }

    #[test]
    fn origins_are_added_checked_refused_and_retired() {
        let mut s = Store::in_memory("t").unwrap();
        let east = facts("CE", "TE", 6);
        let a = args("east", &["west"], &[]);
        let out = bind_facts(&a, &mut s, &east, &[remote("west", facts("CW", "TW", 6))]);
        let west = s.origin_id("west").unwrap();
        assert_eq!(out.unwrap().unwrap()[0].0, west);
        // The same again: fine. Another cluster behind west's name: refused, one line.
        assert!(
            bind_facts(&a, &mut s, &east, &[remote("west", facts("CW", "TW", 6))])
                .unwrap()
                .is_ok()
        );
        let why = bind_facts(&a, &mut s, &east, &[remote("west", facts("CX", "TW", 6))])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("origin west: the cluster id is CX"), "{why}");
        // Another partition count anywhere: refused before anything is stored.
        let b = args("east", &["west", "north"], &[]);
        let why = bind_facts(
            &b,
            &mut s,
            &east,
            &[
                remote("west", facts("CW", "TW", 6)),
                remote("north", facts("CN", "TN", 12)),
            ],
        )
        .unwrap()
        .unwrap_err();
        assert!(why.contains("same partition count"), "{why}");
        assert_eq!(s.origin_id("north"), None);
        // Another local name, a known origin dropped silently: refused.
        let why = bind_facts(&args("local", &["west"], &[]), &mut s, &east, &[])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("--origin-name east"), "{why}");
        let why = bind_facts(&args("east", &[], &[]), &mut s, &east, &[])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("--retire-origin west"), "{why}");
        let why = bind_facts(&OriginArgs::default(), &mut s, &east, &[])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("--origin-name east"), "{why}");
        // Retired on purpose: its part stays, and it cannot come back.
        let out = bind_facts(&args("east", &[], &["west"]), &mut s, &east, &[]).unwrap();
        assert_eq!(out, Ok(vec![]));
        let why = bind_facts(&a, &mut s, &east, &[remote("west", facts("CW", "TW", 6))])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("retired"), "{why}");
    }
}
