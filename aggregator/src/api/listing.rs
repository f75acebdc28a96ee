//! `GET /sums?prefix=&after=&limit=`: sums by key prefix, in key order, in pages. With one
//! shared database the page is read from it; with a database per member it is gathered from
//! every owner ([`super::gather`]) and merged in key order.

use crate::contract::Code;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tally_http::ApiError;
use warp::reply::Response;

use super::gather;
use super::{Api, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    sum: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Page {
    sums: Vec<Entry>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<String>,
}

pub(super) async fn list_sums(
    q: ListQuery,
    forwarded: bool,
    api: Api,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            Code::InvalidLimit,
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after;
    let mut query = vec![("prefix", prefix.clone()), ("limit", limit.to_string())];
    query.extend(after.clone().map(|a| ("after", a)));
    let read = |owned| local(&api, prefix.clone(), after.clone(), limit, owned);
    gather::answer(&api, forwarded, "/sums", &query, read, |pages| {
        merge(pages, limit)
    })
    .await
}

/// A page from this member's database: every partition in it, or only `owned`.
async fn local(
    api: &Api,
    prefix: String,
    after: Option<String>,
    limit: usize,
    owned: Option<BTreeSet<i32>>,
) -> Result<Page, ApiError> {
    let rows = api
        .reader
        .read(move |s| {
            s.list_sums_of(&prefix, after.as_deref(), limit, |p| {
                owned.as_ref().is_none_or(|o| o.contains(&p))
            })
        })
        .await?;
    let next_after = (rows.len() == limit).then(|| rows[rows.len() - 1].0.clone());
    let sums = rows
        .into_iter()
        .map(|(key, sum)| Entry { key, sum })
        .collect();
    Ok(Page { sums, next_after })
}

/// The first `limit` keys of the owners' pages in key order; another page follows when one
/// owner had more or the merge was cut.
fn merge(pages: Vec<Page>, limit: usize) -> Page {
    let more = pages.iter().any(|p| p.next_after.is_some());
    let mut sums: Vec<Entry> = pages.into_iter().flat_map(|p| p.sums).collect();
    sums.sort_by(|a, b| a.key.cmp(&b.key));
    // A key lives in one partition, so with one owner; were it in two (a topic written with
    // another partitioner), both rows are added, as one database adds them.
    sums.dedup_by(|later, first| {
        let same = later.key == first.key;
        if same {
            first.sum = first.sum.saturating_add(later.sum);
        }
        same
    });
    let cut = sums.len() > limit;
    sums.truncate(limit);
    let next_after = (cut || more)
        .then(|| sums.last().map(|e| e.key.clone()))
        .flatten();
    Page { sums, next_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[(&str, i64)], more: bool) -> Page {
        Page {
            sums: keys
                .iter()
                .map(|(k, s)| Entry {
                    key: (*k).into(),
                    sum: *s,
                })
                .collect(),
            next_after: more.then(|| keys.last().unwrap().0.into()),
        }
    }

    fn keys(p: &Page) -> Vec<&str> {
        p.sums.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn pages_merge_in_key_order_and_say_when_more_follow() {
        let m = merge(
            vec![
                page(&[("b", 1), ("d", 2)], true),
                page(&[("a", 3), ("c", 4)], false),
            ],
            3,
        );
        assert_eq!(keys(&m), ["a", "b", "c"]);
        assert_eq!(m.next_after.as_deref(), Some("c"));
        let m = merge(vec![page(&[("b", 1)], false), page(&[("a", 3)], false)], 3);
        assert_eq!(keys(&m), ["a", "b"]);
        assert_eq!(m.next_after, None);
        // An owner with a full page means more may follow even when nothing was cut.
        let m = merge(vec![page(&[("a", 1), ("b", 2)], true), page(&[], false)], 2);
        assert_eq!(m.next_after.as_deref(), Some("b"));
        let m = merge(vec![page(&[("a", 1)], false), page(&[("a", 2)], false)], 5);
        assert_eq!((keys(&m), m.sums[0].sum), (vec!["a"], 3));
    }
}
