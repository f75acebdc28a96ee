//! Where a read is answered: the one rule every read path asks ([`decide`] for one key's
//! partition, [`plan`] for a read over every partition). A read is answered only from a
//! database that holds the key's partition:
//!
//! - [`Route::Owner`]: this member owns the partition, and folds it into its database;
//! - [`Route::Shared`]: another member owns it and commits to this member's database (the same
//!   identity, [`crate::peers::Member::db`]: one shared file);
//! - [`Route::Forward`]: the owner is on another database and advertised a URL: the read goes
//!   there;
//! - [`Route::Refuse`]: the owner is on another database and advertises no URL
//!   (`owner_not_shared`), or no member owns the partition now, or the group has not been read
//!   yet (`owner_unknown`): 503, never a sum this database cannot vouch for.
//!
//! A partition that no member owns at the moment (a rebalance) keeps the behaviour of each
//! documented mode: a member without a URL answers it from its database when every member of
//! the group announces that same database (one shared file holds every partition); a member
//! with a URL refuses it with `owner_unknown` and `Retry-After`, as before. In a mixed group it
//! is refused too.
//!
//! A read forwarded by another member is never forwarded again (no bouncing on stale views of
//! the group): it is answered here when this database holds the partition, else refused as
//! moved (`owner_unknown`), and the member that forwarded it retries.

use crate::contract::Code;
use std::collections::BTreeSet;

use tally_http::ApiError;
use warp::http::StatusCode;

use crate::peers::{Member, Table};

/// Where a read of one partition is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Owner,
    Shared,
    /// The owner's URL.
    Forward(String),
    Refuse(Refusal),
}

/// Why a read is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The group's members have not been read yet.
    GroupUnread,
    /// No member owns the partition now (a rebalance), and this database is not known to hold
    /// it.
    NoOwner(i32),
    /// The owner commits to another database and advertises no URL.
    NotShared(i32),
    /// A forwarded read reached a member whose database does not hold the partition (it moved
    /// away meanwhile).
    Moved(i32),
}

impl Refusal {
    /// The answer: 503 with a code naming the cause.
    pub fn error(&self) -> ApiError {
        let unavailable = |code: Code, message: String| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
        };
        match self {
            Refusal::GroupUnread => unavailable(
                Code::OwnerUnknown,
                "the group's members have not been read yet".into(),
            ),
            Refusal::NoOwner(p) => unavailable(
                Code::OwnerUnknown,
                format!("partition {p} has no owner in the group now (a rebalance is under way)"),
            ),
            Refusal::Moved(p) => unavailable(
                Code::OwnerUnknown,
                format!(
                    "partition {p} moved away from the member the read was forwarded to; retry"
                ),
            ),
            // Not a passing state: no Retry-After.
            Refusal::NotShared(p) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::OwnerNotShared,
                format!(
                    "partition {p} is owned by a member on another database that advertises no \
                     URL; give every member --advertise-url, or one shared --db"
                ),
            ),
        }
    }
}

/// The partition of `key`, once the group's partition count is known.
pub fn partition_of(table: &Table, key: &str) -> Result<i32, Refusal> {
    let n = table.partitions.ok_or(Refusal::GroupUnread)?;
    Ok(tally_pipeline::partition::partition_for(key.as_bytes(), n))
}

/// Where a read of `partition` is answered by the member `me`, which owns `owned` now, given
/// the group as last read; `forwarded` when another member sent the read here.
pub fn decide(
    me: &Member,
    owned: &BTreeSet<i32>,
    table: &Table,
    partition: i32,
    forwarded: bool,
) -> Route {
    if owned.contains(&partition) {
        return Route::Owner;
    }
    if table.partitions.is_none() {
        return Route::Refuse(Refusal::GroupUnread);
    }
    // One shared file: every member of the group commits to this database.
    let all_here = || table.members.iter().all(|m| me.shares_database_with(m));
    match table.owners.get(&partition) {
        // The group names this process, its consumer does not own it (not yet, or no longer:
        // the group's view is up to a refresh old); its database holds the partition only
        // when every member's does.
        Some(owner) if me.is(owner) && all_here() => Route::Shared,
        Some(owner) if me.is(owner) => Route::Refuse(Refusal::NoOwner(partition)),
        Some(owner) if me.shares_database_with(owner) => Route::Shared,
        Some(_) if forwarded => Route::Refuse(Refusal::Moved(partition)),
        Some(owner) => match &owner.url {
            Some(url) => Route::Forward(url.clone()),
            None => Route::Refuse(Refusal::NotShared(partition)),
        },
        None if me.url.is_none() && all_here() => Route::Shared,
        None => Route::Refuse(Refusal::NoOwner(partition)),
    }
}

/// How a read over every partition is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// This database holds every partition: read all of it.
    Everything,
    /// This database answers for `local` (perhaps none); each of `remote` answers for the
    /// partitions it owns.
    Gather {
        local: BTreeSet<i32>,
        remote: BTreeSet<String>,
    },
}

/// [`decide`] for every partition of the topic. A forwarded read answers for the partitions
/// this member owns (the member gathering checks that the answers cover each partition once).
pub fn plan(
    me: &Member,
    owned: &BTreeSet<i32>,
    table: &Table,
    forwarded: bool,
) -> Result<Plan, Refusal> {
    if forwarded {
        return Ok(Plan::Gather {
            local: owned.clone(),
            remote: BTreeSet::new(),
        });
    }
    let n = table.partitions.ok_or(Refusal::GroupUnread)?;
    let (mut local, mut remote) = (BTreeSet::new(), BTreeSet::new());
    for p in 0..n {
        match decide(me, owned, table, p, false) {
            Route::Owner | Route::Shared => {
                local.insert(p);
            }
            Route::Forward(url) => {
                remote.insert(url);
            }
            Route::Refuse(why) => return Err(why),
        }
    }
    Ok(if remote.is_empty() {
        Plan::Everything
    } else {
        Plan::Gather { local, remote }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn m(db: &str, url: Option<&str>) -> Member {
        Member {
            db: Some(db.into()),
            url: url.map(str::to_owned),
            run: Some(format!("{db}-{url:?}")),
        }
    }

    /// A group of `members` over 4 partitions, `owners[p]` an index into `members`.
    fn table(members: &[Member], owners: &[(i32, usize)]) -> Table {
        Table {
            owners: owners
                .iter()
                .map(|(p, i)| (*p, members[*i].clone()))
                .collect::<BTreeMap<_, _>>(),
            members: members.to_vec(),
            partitions: Some(4),
            mixed: None,
        }
    }

    fn owned(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    #[test]
    fn the_owner_answers_from_its_database() {
        let me = m("a", None);
        let t = table(&[me.clone(), m("b", None)], &[(0, 1)]);
        // Owned by the consumer now, even when the group as last read says otherwise.
        assert_eq!(decide(&me, &owned(&[0]), &t, 0, false), Route::Owner);
        assert_eq!(decide(&me, &owned(&[0]), &t, 0, true), Route::Owner);
        // Before the group is read: only owned partitions.
        let unread = Table::default();
        assert_eq!(decide(&me, &owned(&[1]), &unread, 1, false), Route::Owner);
        assert_eq!(
            decide(&me, &owned(&[1]), &unread, 2, false),
            Route::Refuse(Refusal::GroupUnread)
        );
    }

    #[test]
    fn a_member_on_the_owners_database_answers_from_it() {
        // One shared file, with or without URLs.
        for url in [None, Some("http://a")] {
            let me = m("x", url);
            let other = Member {
                run: Some("other".into()),
                ..m("x", None)
            };
            let t = table(&[me.clone(), other], &[(0, 0), (1, 1)]);
            assert_eq!(decide(&me, &owned(&[]), &t, 1, false), Route::Shared);
            assert_eq!(decide(&me, &owned(&[]), &t, 1, true), Route::Shared);
            // The group says this member owns it before its consumer does: the same database.
            assert_eq!(decide(&me, &owned(&[]), &t, 0, false), Route::Shared);
        }
        // A database each: the group still names this member for a partition its consumer
        // gave up (the view is a refresh old): its database may be behind, so refused.
        let me = m("a", None);
        let t = table(&[me.clone(), m("b", Some("http://b"))], &[(0, 0)]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 0, false),
            Route::Refuse(Refusal::NoOwner(0))
        );
    }

    #[test]
    fn an_owner_on_another_database_is_asked_when_it_has_a_url() {
        let me = m("a", None);
        let t = table(&[me.clone(), m("b", Some("http://b"))], &[(2, 1)]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 2, false),
            Route::Forward("http://b".into())
        );
        // Never forwarded twice: a forwarded read here was sent to the wrong member.
        assert_eq!(
            decide(&me, &owned(&[]), &t, 2, true),
            Route::Refuse(Refusal::Moved(2))
        );
        // An older member announces a URL and no database: asked.
        let old = Member {
            url: Some("http://old".into()),
            ..Member::default()
        };
        let t = table(&[me.clone(), old], &[(2, 1)]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 2, false),
            Route::Forward("http://old".into())
        );
    }

    #[test]
    fn an_owner_on_another_database_without_url_is_refused() {
        // The misconfiguration: a database each, no URLs.
        let me = m("a", None);
        let t = table(&[me.clone(), m("b", None)], &[(3, 1)]);
        let r = decide(&me, &owned(&[]), &t, 3, false);
        assert_eq!(r, Route::Refuse(Refusal::NotShared(3)));
        let e = Refusal::NotShared(3).error();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "owner_not_shared");
        assert!(e.message.contains("partition 3") && e.message.contains("--advertise-url"));
        // The same from a member that has a URL; and an older member without either.
        let me = m("a", Some("http://a"));
        let t = table(&[me.clone(), m("b", None)], &[(3, 1)]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 3, false),
            Route::Refuse(Refusal::NotShared(3))
        );
        let t = table(&[me.clone(), Member::default()], &[(3, 1)]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 3, false),
            Route::Refuse(Refusal::NotShared(3))
        );
    }

    #[test]
    fn a_partition_without_owner_keeps_each_modes_behaviour() {
        // One shared file, no URL: answered from it, as before.
        let me = m("x", None);
        let t = table(&[me.clone(), m("x", None)], &[]);
        assert_eq!(decide(&me, &owned(&[]), &t, 1, false), Route::Shared);
        // A member alone before it joins: the group is empty.
        assert_eq!(
            decide(&me, &owned(&[]), &table(&[], &[]), 1, false),
            Route::Shared
        );
        // A URL: refused for a retry, as before.
        let me = m("a", Some("http://a"));
        let t = table(&[me.clone(), m("b", Some("http://b"))], &[]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 1, false),
            Route::Refuse(Refusal::NoOwner(1))
        );
        // A mixed group: this database is not known to hold it.
        let me = m("a", None);
        let t = table(&[me.clone(), m("b", None)], &[]);
        assert_eq!(
            decide(&me, &owned(&[]), &t, 1, false),
            Route::Refuse(Refusal::NoOwner(1))
        );
        assert_eq!(Refusal::NoOwner(1).error().code, "owner_unknown");
    }

    #[test]
    fn a_read_over_every_partition_follows_the_same_rule() {
        let (a, c) = (m("a", None), m("c", Some("http://c")));
        let b = Member {
            run: Some("b".into()),
            ..m("x", None)
        };
        let me = m("x", None);
        // Owned, shared and forwarded partitions.
        let t = table(
            &[me.clone(), b, c.clone()],
            &[(0, 0), (1, 1), (2, 2), (3, 2)],
        );
        assert_eq!(
            plan(&me, &owned(&[0]), &t, false),
            Ok(Plan::Gather {
                local: owned(&[0, 1]),
                remote: ["http://c".to_owned()].into()
            })
        );
        // All on this database: the whole of it.
        let t = table(
            &[me.clone(), m("x", None)],
            &[(0, 0), (1, 1), (2, 1), (3, 1)],
        );
        assert_eq!(plan(&me, &owned(&[0]), &t, false), Ok(Plan::Everything));
        // One partition on a database without URL: the whole read is refused.
        let t = table(&[me.clone(), a, c], &[(0, 0), (1, 1), (2, 2), (3, 2)]);
        assert_eq!(
            plan(&me, &owned(&[0]), &t, false),
            Err(Refusal::NotShared(1))
        );
        assert_eq!(
            plan(&me, &owned(&[]), &Table::default(), false),
            Err(Refusal::GroupUnread)
        );
        // Forwarded: the partitions owned here, whatever the group says.
        assert_eq!(
            plan(&me, &owned(&[2]), &Table::default(), true),
            Ok(Plan::Gather {
                local: owned(&[2]),
                remote: BTreeSet::new()
            })
        );
    }
}
