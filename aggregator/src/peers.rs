//! Who owns which partition, and on which database, as the consumer group itself says: no
//! coordination service of its own. Every aggregator announces itself in its Kafka `client.id`
//! ([`client_id`]): the identity of the database it commits to
//! (`tally_pipeline::store::Store::database_id`) and, with `--advertise-url`, the URL of its
//! HTTP API. A thread asks the group coordinator for the group's members and their assignments
//! (DescribeGroups) every [`REFRESH`]; the read path decides from that where a key's partition
//! is answered ([`crate::read_route`]).
//!
//! The announcement is `tally-aggregator/2 db=ID run=TOKEN` with ` url=URL` after it when there
//! is one (the run token tells a member itself among members on its database).
//! Members of older versions announced `tally-aggregator URL` (a URL, no database) or nothing
//! (the default client id): both are still read, as a member whose database is unknown.
//!
//! A group is mixed when one member's partitions cannot be read by another: a member without a
//! URL, and another member on a different (or unknown) database. The thread says so once, in a
//! WARN line when it first sees it (and an INFO line when it ends), in the
//! [`crate::instruments::MIXED_DATABASES`] gauge, and in [`Table::mixed`], which `/readyz`
//! shows.
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
/// Prefix of an aggregator's `client.id`, before its database and URL.
const CLIENT_ID_PREFIX: &str = "tally-aggregator/2 ";
/// Prefix of the `client.id` of older aggregators, before their URL.
const CLIENT_ID_PREFIX_V1: &str = "tally-aggregator ";

/// What a member announces of itself: the identity of the database it commits to, the URL of
/// its HTTP API, and a token drawn once per process (`run`), by which a member finds itself in
/// the group. Each is `None` when the member did not say (no `--advertise-url`; an older
/// version).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Member {
    pub db: Option<String>,
    pub url: Option<String>,
    pub run: Option<String>,
}

impl Member {
    /// This process, committing to database `db`, reached at `url`.
    pub fn this(db: String, url: Option<String>) -> Member {
        Member {
            db: Some(db),
            url,
            run: Some(run_token().to_owned()),
        }
    }

    /// Whether `other` is this very process (same run token).
    pub fn is(&self, other: &Member) -> bool {
        self.run.is_some() && self.run == other.run
    }

    /// Whether `self` and `other` commit to one database: both said which, and it is the same.
    pub fn shares_database_with(&self, other: &Member) -> bool {
        self.db.is_some() && self.db == other.db
    }
}

/// This process's run token: 64 random bits (std's per-process random hash keys), drawn once.
fn run_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    })
}

/// The `client.id` that announces `me` to the other members.
pub fn client_id(me: &Member) -> String {
    let mut id = format!("{CLIENT_ID_PREFIX}db={}", me.db.as_deref().unwrap_or("-"));
    if let Some(run) = &me.run {
        id.push_str(&format!(" run={run}"));
    }
    if let Some(url) = &me.url {
        id.push_str(&format!(" url={url}"));
    }
    id
}

/// What a member's `client.id` announces.
fn announced(client_id: &str) -> Member {
    if let Some(rest) = client_id.strip_prefix(CLIENT_ID_PREFIX) {
        let mut m = Member::default();
        for field in rest.split(' ') {
            if let Some(db) = field.strip_prefix("db=").filter(|d| *d != "-") {
                m.db = Some(db.to_owned());
            } else if let Some(run) = field.strip_prefix("run=") {
                m.run = Some(run.to_owned());
            } else if let Some(url) = field.strip_prefix("url=") {
                m.url = Some(url.to_owned());
            }
        }
        return m;
    }
    Member {
        url: client_id
            .strip_prefix(CLIENT_ID_PREFIX_V1)
            .map(str::to_owned),
        ..Member::default()
    }
}

/// The group as last read: each partition's owner, every member (assigned or not), the
/// topic's partition count, and what makes the group mixed, if anything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub owners: BTreeMap<i32, Member>,
    pub members: Vec<Member>,
    pub partitions: Option<i32>,
    pub mixed: Option<String>,
}

/// Why a group that `me` belongs to is mixed: a member without a URL whose partitions another
/// member, on another database, cannot read. `None` when every member can read every key
/// (one shared database, or a URL for each member on a database of its own).
pub fn mixed(me: &Member, members: &[Member]) -> Option<String> {
    let mut all: Vec<&Member> = vec![me];
    all.extend(members.iter().filter(|m| *m != me));
    all.iter().enumerate().find(|(i, x)| {
        x.url.is_none()
            && all
                .iter()
                .enumerate()
                .any(|(j, y)| j != *i && !x.shares_database_with(y))
    })?;
    let databases: std::collections::BTreeSet<Option<&str>> =
        all.iter().map(|m| m.db.as_deref()).collect();
    let unknown = if databases.contains(&None) {
        " (one announces no database: an older version?)"
    } else {
        ""
    };
    Some(format!(
        "the group's members commit to {} databases, and a member on one advertises no \
         URL{unknown}: reads of the partitions it owns are refused elsewhere (owner_not_shared); \
         give every member --advertise-url, or one shared --db",
        databases.len()
    ))
}

/// A shared, refreshed [`Table`].
#[derive(Clone, Default)]
pub struct Peers(Arc<RwLock<Table>>);

impl Peers {
    pub fn table(&self) -> Table {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the table; says when the group becomes mixed, or stops being so.
    fn set(&self, t: Table) {
        let mut cur = self.0.write().unwrap_or_else(|p| p.into_inner());
        match (&cur.mixed, &t.mixed) {
            (None, Some(why)) => tracing::warn!("mixed group: {why}"),
            (Some(_), None) => tracing::info!("the group is no longer mixed"),
            _ => {}
        }
        crate::instruments::mixed_databases(t.mixed.is_some());
        *cur = t;
    }

    /// A table set by hand, for tests of the read path.
    #[cfg(test)]
    pub fn fixed(t: Table) -> Peers {
        Peers(Arc::new(RwLock::new(t)))
    }

    /// Reads the group once, then starts the thread that reads it until `stop`; `me` is what
    /// this member announces.
    pub fn watch(
        kafka: &KafkaArgs,
        group: &str,
        me: Member,
        stop: CancellationToken,
    ) -> anyhow::Result<Peers> {
        let peers = Peers::default();
        let client: BaseConsumer = client_config::reader(kafka, &Fetch::default()).create()?;
        let (topic, group, out) = (kafka.topic.clone(), group.to_owned(), peers.clone());
        let refresh = move || match read(&client, &topic, &group, &me) {
            Ok(t) => out.set(t),
            Err(e) => tracing::debug!(error = %e, "cannot read the group's members"),
        };
        refresh();
        std::thread::Builder::new()
            .name("peers".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    std::thread::sleep(REFRESH);
                    refresh();
                }
            })?;
        Ok(peers)
    }
}

fn read(client: &BaseConsumer, topic: &str, group: &str, me: &Member) -> anyhow::Result<Table> {
    let timeout = Duration::from_secs(5);
    let partitions = tally_pipeline::topic::partitions_of(client, topic, timeout)?.len() as i32;
    let list = client.fetch_group_list(Some(group), timeout)?;
    let mut owners = BTreeMap::new();
    let mut members = Vec::new();
    for g in list.groups().iter().filter(|g| g.name() == group) {
        for m in g.members() {
            let member = announced(m.client_id());
            let assigned = m.assignment().and_then(|b| assigned(b, topic));
            for p in assigned.unwrap_or_default() {
                owners.insert(p, member.clone());
            }
            members.push(member);
        }
    }
    let mixed = mixed(me, &members);
    Ok(Table {
        owners,
        members,
        partitions: Some(partitions),
        mixed,
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
    fn the_database_and_url_ride_in_the_client_id() {
        let both = Member::this("ab12".into(), Some("http://10.0.0.2:8081".into()));
        assert_eq!(announced(&client_id(&both)), both);
        let db_only = Member::this("ab12".into(), None);
        let token = db_only.run.clone().unwrap();
        assert_eq!(token.len(), 16);
        assert_eq!(
            client_id(&db_only),
            format!("tally-aggregator/2 db=ab12 run={token}")
        );
        assert_eq!(announced(&client_id(&db_only)), db_only);
        assert!(db_only.is(&both), "one process, one token");
        // Older members: a URL and no database, or nothing at all.
        let old = announced("tally-aggregator http://10.0.0.2:8081");
        assert_eq!(
            (old.db, old.url.as_deref()),
            (None, Some("http://10.0.0.2:8081"))
        );
        assert_eq!(announced("rdkafka"), Member::default());
    }

    fn m(db: Option<&str>, url: Option<&str>) -> Member {
        Member {
            db: db.map(str::to_owned),
            url: url.map(str::to_owned),
            run: None,
        }
    }

    #[test]
    fn a_group_is_mixed_when_a_member_without_url_is_on_another_database() {
        let shared = m(Some("x"), None);
        // One shared file, me included in the members (as once joined) or not yet.
        assert_eq!(mixed(&shared, &[shared.clone(), shared.clone()]), None);
        assert_eq!(mixed(&shared, &[]), None);
        // A database each, every member with a URL.
        let a = m(Some("a"), Some("http://a"));
        let b = m(Some("b"), Some("http://b"));
        assert_eq!(mixed(&a, &[a.clone(), b.clone()]), None);
        // A shared file and URLs as well: fine.
        let s1 = m(Some("x"), Some("http://1"));
        assert_eq!(mixed(&s1, &[shared.clone(), s1.clone()]), None);
        // The misconfiguration: a database each, no URLs.
        let (na, nb) = (m(Some("a"), None), m(Some("b"), None));
        let why = mixed(&na, &[na.clone(), nb.clone()]).expect("mixed");
        assert!(
            why.contains("2 databases") && why.contains("--advertise-url"),
            "{why}"
        );
        // Seen from a member with a URL: another without one, on another database.
        assert!(mixed(&a, &[a.clone(), nb.clone()]).is_some());
        // Seen from a member without a URL: others reach it by no means.
        assert!(mixed(&na, &[na.clone(), b.clone()]).is_some());
        // An older member that announces no database and no URL.
        let why = mixed(&shared, &[shared.clone(), Member::default()]).expect("mixed");
        assert!(why.contains("older version"), "{why}");
        // An older member with a URL, next to members with URLs: reads are forwarded to it.
        assert_eq!(mixed(&a, &[a.clone(), m(None, Some("http://old"))]), None);
    }
}
