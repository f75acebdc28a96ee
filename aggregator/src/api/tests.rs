//! The API through its routes: status codes and bodies as a client sees them.

use super::*;
use crate::progress::{self, Progress, ProgressTx};
use metrics_exporter_prometheus::PrometheusBuilder;

fn api_with(keys: &[(&str, i64)], max_lag: i64) -> (Api, ProgressTx) {
    let mut s = Store::in_memory("t").unwrap();
    let mut b = crate::test_support::batch_of(keys);
    b.fold(keys.len() as i64, None, Some(b"\x07junk"), |_| {
        Ok::<_, std::convert::Infallible>(0)
    })
    .unwrap();
    s.apply([(2, &b)]).unwrap();
    let (tx, rx) = progress::channel();
    let limits = Limits {
        max_wait: Duration::from_millis(300),
        ready_max_lag: max_lag,
    };
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    (Api::new(Reader::new(s), rx, metrics, limits), tx)
}

async fn get(api: &Api, path: &str) -> (u16, serde_json::Value) {
    let r = warp::test::request()
        .path(path)
        .reply(&routes(api.clone()))
        .await;
    let v = serde_json::from_slice(r.body()).unwrap_or(serde_json::Value::Null);
    (r.status().as_u16(), v)
}

#[tokio::test]
async fn top_lists_the_largest_sums_first_and_checks_its_limit() {
    let (api, _tx) = api_with(&[("a", 3), ("b", 9), ("c", -1), ("a", 2)], 0);
    let api = routes(api);
    let r = warp::test::request().path("/top?limit=2").reply(&api).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.body(),
        r#"{"keys":[{"key":"b","sum":9},{"key":"a","sum":5}]}"#
    );
    let r = warp::test::request().path("/top").reply(&api).await;
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["keys"].as_array().unwrap().len(), 3);
    for bad in ["0", "-1", "x", "1001"] {
        let r = warp::test::request()
            .path(&format!("/top?limit={bad}"))
            .reply(&api)
            .await;
        assert_eq!(r.status(), 400, "limit={bad}");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_limit");
    }
}

#[tokio::test]
async fn sums_are_served_with_percent_decoded_keys() {
    let (api, _tx) = api_with(&[("a/b c", 5), ("x", -2)], 0);
    let routes = routes(api.clone());
    let r = warp::test::request()
        .path("/sums/a%2Fb%20c")
        .reply(&routes)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), r#"{"key":"a/b c","sum":5}"#);
    let (s, v) = get(&api, "/sums/nope").await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "key_not_found");
    assert_eq!(get(&api, "/sums/%FF").await.0, 400);
    let r = warp::test::request()
        .method("POST")
        .path("/offsets")
        .reply(&routes)
        .await;
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn offsets_carry_log_end_and_lag_of_owned_partitions() {
    let (api, tx) = api_with(&[("a", 1), ("b", 2)], 0);
    let (_, v) = get(&api, "/offsets").await;
    assert_eq!(
        v,
        serde_json::json!({"partitions":[{"partition":2,"owned":false,"next_offset":3,"log_end":null,"lag":null}],"total_lag":null})
    );
    tx.send_modify(|p| {
        p.owned.extend([2, 5]);
        p.log_end.extend([(2, 10), (5, 4)]);
    });
    let (_, v) = get(&api, "/offsets").await;
    assert_eq!(v["partitions"][0]["lag"], 7);
    assert_eq!(v["partitions"][0]["owned"], true);
    assert_eq!(v["partitions"][0]["log_end"], 10);
    assert_eq!(v["partitions"][1]["partition"], 5);
    assert_eq!(v["partitions"][1]["next_offset"], 0);
    assert_eq!(v["total_lag"], 7 + 4);
}

#[tokio::test]
async fn read_your_writes_waits_for_the_watch_and_times_out_with_the_offset() {
    let (api, tx) = api_with(&[("a", 1)], 0);
    // Already past: answers at once.
    let (s, v) = get(&api, "/sums/a?min_offset=2:1&wait_ms=0").await;
    assert_eq!((s, v["sum"].as_i64()), (200, Some(1)));
    // Not reached: 504 with the committed offset, after the capped wait.
    let started = std::time::Instant::now();
    let (s, v) = get(&api, "/sums/a?min_offset=2:5&wait_ms=100000").await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "offset_not_reached");
    assert_eq!(v["next_offset"], 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Published by the consumer while waiting: answered.
    tx.send_modify(|p| {
        p.owned.insert(2);
    });
    let waiter = tokio::spawn({
        let api = api.clone();
        async move { get(&api, "/sums/a?min_offset=2:5&wait_ms=250").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send_modify(|p: &mut Progress| {
        p.committed.insert(2, 6);
    });
    assert_eq!(waiter.await.unwrap().0, 200);
    for bad in [
        "x",
        "1",
        "1:x",
        ":3",
        "-1:2",
        "1:-2",
        "+1:2",
        "1234567890:0",
    ] {
        let (s, v) = get(&api, &format!("/sums/a?min_offset={bad}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_position"))
        );
    }
}

#[tokio::test]
async fn sums_list_by_prefix_with_paging() {
    let (api, _tx) = api_with(&[("p:1", 1), ("p:2", 2), ("p:3", 3), ("q", 4)], 0);
    let (_, v) = get(&api, "/sums?prefix=p%3A&limit=2").await;
    assert_eq!(
        v,
        serde_json::json!({"sums":[{"key":"p:1","sum":1},{"key":"p:2","sum":2}],"next_after":"p:2"})
    );
    let (_, v) = get(&api, "/sums?prefix=p%3A&limit=2&after=p%3A2").await;
    assert_eq!(
        v,
        serde_json::json!({"sums":[{"key":"p:3","sum":3}],"next_after":null})
    );
    assert_eq!(
        get(&api, "/sums").await.1["sums"].as_array().unwrap().len(),
        4
    );
    assert_eq!(get(&api, "/sums?limit=0").await.0, 400);
    assert_eq!(get(&api, "/sums?limit=x").await.0, 400);
}

#[tokio::test]
async fn rejected_records_are_listed_with_their_bytes() {
    let (api, _tx) = api_with(&[("a", 1)], 0);
    let (s, v) = get(&api, "/rejected").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 1);
    let r = &v["records"][0];
    assert_eq!(
        (r["partition"].as_i64(), r["offset"].as_i64()),
        (Some(2), Some(1))
    );
    assert!(r["reason"].as_str().unwrap().starts_with("missing_key"));
    assert_eq!(r["key_base64"], serde_json::Value::Null);
    assert_eq!(r["value_base64"], "B2p1bms=");
    let (_, v) = get(&api, "/rejected?after=2:1").await;
    assert_eq!(
        (v["count"].as_i64(), v["records"].as_array().unwrap().len()),
        (Some(1), 0)
    );
    assert_eq!(get(&api, "/rejected?after=nope").await.0, 400);
}

#[tokio::test]
async fn readyz_follows_the_lag_bound() {
    let (api, tx) = api_with(&[("a", 1)], 5);
    assert_eq!(get(&api, "/readyz").await.0, 503);
    tx.send_modify(|p| {
        p.joined = true;
        p.owned.insert(2);
        p.committed.insert(2, 2);
    });
    let (s, v) = get(&api, "/readyz").await;
    assert_eq!(s, 503, "log end unknown: {v}");
    tx.send_modify(|p| {
        p.log_end.insert(2, 10);
    });
    let (s, v) = get(&api, "/readyz").await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("not_ready")));
    tx.send_modify(|p| {
        p.committed.insert(2, 6);
    });
    assert_eq!(get(&api, "/readyz").await.0, 200);
    tx.send_modify(|p| {
        p.stopped
            .insert(2, "topic t partition 2: the log starts at offset 9".into());
    });
    let (s, v) = get(&api, "/readyz").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("partition_stopped"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("partition 2: the log starts at offset 9"));
    let r = warp::test::request()
        .path("/metrics")
        .reply(&routes(api))
        .await;
    assert_eq!(r.status(), 200);
}

/// Every read path asks `crate::read_route::decide` or `plan`: shown on a group whose owner of
/// every partition is on another database without a URL, then on one shared database.
mod read_route_paths {
    use super::{api_with, get};
    use crate::api::{Api, Forward};
    use crate::peers::{mixed, Member, Peers, Table};
    use crate::progress::ProgressTx;

    fn member(db: &str, run: &str) -> Member {
        Member {
            db: Some(db.into()),
            url: None,
            run: Some(run.into()),
        }
    }

    /// A member on database `a` holding key `k` = 7 (and a quarantined record), in a group where
    /// `owner` owns every one of 4 partitions.
    fn api(owner: Member) -> (Api, ProgressTx) {
        let me = member("a", "me");
        let members = vec![me.clone(), owner.clone()];
        let table = Table {
            owners: (0..4).map(|p| (p, owner.clone())).collect(),
            mixed: mixed(&me, &members),
            members,
            partitions: Some(4),
        };
        let forward = Forward::new(me, Peers::fixed(table), None).unwrap();
        let (api, tx) = api_with(&[("k", 7)], 10);
        (api.forwarding(Some(forward)), tx)
    }

    const READS: [&str; 5] = [
        "/sums/k",
        "/sums/k?min_offset=2:0",
        "/sums",
        "/top",
        "/rejected",
    ];

    #[tokio::test]
    async fn no_read_path_answers_from_a_database_without_the_partition() {
        let (api, tx) = api(member("b", "other"));
        for path in READS {
            let (s, v) = get(&api, path).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (503, Some("owner_not_shared")),
                "{path}: {v}"
            );
        }
        // The member still serves what it owns, and stays ready, saying why reads are refused.
        tx.send_modify(|p| {
            p.joined = true;
            p.owned.extend(0..4);
            p.log_end.extend((0..4).map(|p| (p, 0)));
        });
        for path in READS {
            assert_eq!(get(&api, path).await.0, 200, "{path}");
        }
        let (s, v) = get(&api, "/readyz").await;
        assert_eq!(s, 200, "{v}");
        let why = v["mixed_databases"].as_str().unwrap();
        assert!(why.contains("--advertise-url"), "{why}");
    }

    #[tokio::test]
    async fn a_member_on_the_owners_database_answers_every_read() {
        let (api, tx) = api(member("a", "other"));
        for path in READS {
            let (s, v) = get(&api, path).await;
            assert_eq!(s, 200, "{path}: {v}");
        }
        assert_eq!(get(&api, "/sums/k").await.1["sum"], 7);
        tx.send_modify(|p| {
            p.joined = true;
            p.log_end.insert(2, 0);
            p.owned.insert(2);
        });
        let (s, v) = get(&api, "/readyz").await;
        assert_eq!((s, v.get("mixed_databases")), (200, None), "{v}");
    }
}
