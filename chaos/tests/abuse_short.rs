//! CI's short HTTP abuse run: 20,000 mixed valid and invalid requests (bad bodies, malformed
//! HTTP, slow clients) against a real ingest; fails on any 5xx but 503, any invalid request
//! accepted, ingest exiting or growing past 256 MiB, or sums that differ from the valid
//! requests acknowledged.

#[test]
fn abuse_mix_crashes_nothing_and_counts_the_valid_requests_exactly() {
    let seed = std::env::var("TALLY_ABUSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    let work = tally_testkit::workspace_root()
        .join("target/chaos-work")
        .join(format!("abuse-short-{seed}-{}", std::process::id()));
    let cfg = tally_chaos::AbuseConfig {
        seed,
        requests: 20_000,
        concurrency: 8,
        keys: 200,
        max_rss_mb: 256,
        work_dir: work,
    };
    let f = tally_chaos::abuse(&cfg).expect("the abuse run completes");
    println!("{}", serde_json::to_string_pretty(&f).unwrap());
    assert_eq!(f.server_errors, 0, "5xx other than 503 (seed {seed})");
    assert_eq!(
        f.invalid_accepted, 0,
        "invalid requests accepted (seed {seed})"
    );
    assert!(!f.ingest_exited, "ingest exited (seed {seed})");
    assert_eq!(f.valid_unfinished, 0, "valid requests never acknowledged");
    assert_eq!(
        (f.keys_wrong, f.sum_difference),
        (0, 0),
        "sums differ from the acknowledged valid increments (seed {seed})"
    );
    assert!(
        f.ingest_rss_mb.1 <= 256.0,
        "ingest RSS {:?}",
        f.ingest_rss_mb
    );
    assert!(
        f.valid_acknowledged > 1000,
        "load ran: {}",
        f.valid_acknowledged
    );
    // Every kind of request was sent, and the invalid ones were refused with a 4xx.
    for kind in [
        "empty_key",
        "truncated_json",
        "bad_ndjson_line",
        "oversize_body",
        "raw_huge_head",
    ] {
        let answers = &f.answers[kind];
        assert!(
            answers.keys().any(|s| s.starts_with('4')),
            "{kind} answered {answers:?}"
        );
    }
}
