//! The failover benchmark in miniature, so the suite keeps it runnable and its claims checked
//! on a small log: after a member is killed, every key read through the survivor equals what
//! the broker acknowledged, losses and doubles counted apart, with and without standbys; and
//! with standbys the survivor's database already held the dead member's partitions (nothing
//! left to fold), without them all of it.

use tally_bench::failover::{run, Config};

#[test]
fn the_survivor_is_exact_and_a_standby_leaves_nothing_to_fold() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        records: 20_000,
        keys: 500,
        partitions: 6,
        profile: "debug".into(),
        ..Config::new(dir.path())
    };
    let r = run(&cfg).unwrap();
    for o in [&r.without_standby, &r.with_standby] {
        assert_eq!((o.lost, o.doubled), (0, 0), "lost/doubled: {o:?}");
        assert!(o.keys_checked >= 500, "{o:?}");
        assert!(o.failover_s >= o.owned_after_s, "{o:?}");
    }
    assert!(r.without_standby.left_to_fold > 0, "{r:?}");
    assert_eq!(r.with_standby.left_to_fold, 0, "{r:?}");
}
