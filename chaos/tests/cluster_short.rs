//! The test suite's cluster run: three Kafka nodes (replication factor 3,
//! `min.insync.replicas=2`), each in a network namespace of its own, two ingest processes
//! behind HAProxy and two aggregators, under idempotent load while one fault of each kind
//! comes from the seed (leader SIGKILL, SIGSTOP past `replica.lag.time.max.ms`, a node cut off
//! 10-14 s, the active controller cut off, a rolling restart, an ingest SIGKILL, an
//! aggregator SIGKILL). Fails if anything acknowledged is lost or doubled (counted apart), if
//! a write through the majority is not acknowledged and read back exactly while a node is cut
//! off, if the majority elects no other controller, or if the live database does not verify.
//! Needs root, `ip` and `haproxy` (scripts/test.sh installs it): a missing one fails the test.

#[test]
fn short_cluster_run_loses_and_doubles_nothing() {
    let seed = std::env::var("TALLY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    // Kept after the run (process logs for a failed run): target/chaos-work/cluster-SEED-PID.
    let work = tally_testkit::workspace_root()
        .join("target/chaos-work")
        .join(format!("cluster-{seed}-{}", std::process::id()));
    let cfg = tally_chaos::ClusterConfig::short(seed, work.clone());
    println!("cluster work directory: {}", work.display());
    let started = std::time::Instant::now();
    let f = tally_chaos::run_cluster(&cfg).expect("the cluster run completes");
    println!("{}", serde_json::to_string_pretty(&f).unwrap());
    println!("wall time {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(f.run.lost, 0, "lost increments (seed {seed})");
    assert_eq!(f.run.doubled, 0, "doubled increments (seed {seed})");
    assert_eq!(
        f.run.unfinished, 0,
        "increments never acknowledged (seed {seed})"
    );
    assert_eq!(f.run.verify_exit, Some(0), "replayer verify (seed {seed})");
    assert_eq!(
        f.run.rebuild_differences,
        Some(0),
        "replayer rebuild against the live database (seed {seed})"
    );
    for kind in tally_chaos::cluster::CLUSTER_FAULTS {
        assert!(f.run.faults[kind] >= 1, "{kind}: {:?}", f.run.faults);
        assert!(
            f.run.recovery_ms.contains_key(kind),
            "{kind} recovered: {:?}",
            f.run.recovery_ms
        );
    }
    // Both isolations were minority partitions in which the majority kept working.
    assert_eq!(f.minority.cuts, 2, "{:?}", f.minority);
    assert!(f.minority.client_acks_min > 0, "{:?}", f.minority);
    assert_eq!(f.minority.controller_moved, 1, "{:?}", f.minority);
    // The run waits for this much load (however fast the machine), so this cannot be luck.
    assert!(
        f.run.acknowledged >= cfg.min_acknowledged,
        "load ran: {}",
        f.run.acknowledged
    );
}
