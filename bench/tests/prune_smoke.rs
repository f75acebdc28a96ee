//! The prune benchmark in miniature, so the suite keeps it runnable: a small window fills, then
//! expires while as many new requests arrive, and pruning keeps up (nothing dead is left behind
//! beyond one commit's budget) without touching what is still inside the window.

use std::time::Duration;

use tally_bench::prune::{run, Config};

#[test]
fn pruning_keeps_up_with_a_steady_load() {
    let cfg = Config {
        remembered: 30_000,
        steady: 30_000,
        batch: 3_000,
        partitions: 12,
        window: Duration::from_secs(60),
    };
    let dir = tempfile::tempdir().unwrap();
    let r = run(&cfg, dir.path()).unwrap();
    assert_eq!(
        r.rows_at_fill, 30_000,
        "nothing is pruned inside the window"
    );
    assert!(r.bytes_per_request > 0.0);
    // After a second window's worth, the first window's requests are gone but for at most
    // the last commit's newly dead ones; the second window's are all still remembered.
    assert!(r.dead_left <= cfg.batch, "{r:?}");
    assert!(
        (30_000..=30_000 + cfg.batch).contains(&r.rows_at_end),
        "{r:?}"
    );
}
