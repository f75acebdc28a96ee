//! CI's short chaos run: 10 aggregator kills and a few of every other fault (3 ingest kills,
//! 2 broker kills, 2 zombies, 2 disk-full episodes) under load; fails
//! if anything acknowledged is lost or doubled, or the live database does not verify.

#[test]
fn short_chaos_run_loses_and_doubles_nothing() {
    let seed = std::env::var("TALLY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    // Kept after the run (process logs for a failed run): target/chaos-work/short-SEED-PID.
    let work = tally_testkit::workspace_root()
        .join("target/chaos-work")
        .join(format!("short-{seed}-{}", std::process::id()));
    let cfg = tally_chaos::Config::short(seed, work.clone());
    println!("chaos work directory: {}", work.display());
    let f = tally_chaos::run(&cfg).expect("the chaos run completes");
    println!("{}", serde_json::to_string_pretty(&f).unwrap());
    assert_eq!(f.lost, 0, "lost increments (seed {seed})");
    assert_eq!(f.doubled, 0, "doubled increments (seed {seed})");
    assert_eq!(
        f.unfinished, 0,
        "increments never acknowledged (seed {seed})"
    );
    assert_eq!(f.verify_exit, Some(0), "replayer verify (seed {seed})");
    assert_eq!(
        f.rebuild_differences,
        Some(0),
        "replayer rebuild against the live database (seed {seed})"
    );
    for (kind, at_least) in [
        ("aggregator_kill", 10),
        ("ingest_kill", 3),
        ("broker_kill", 2),
        ("zombie", 2),
        ("disk_full", 2),
    ] {
        assert!(f.faults[kind] >= at_least, "{kind}: {:?}", f.faults);
    }
    // The run waits for this much load (however fast the machine), so this cannot be luck.
    assert!(
        f.acknowledged >= cfg.min_acknowledged,
        "load ran: {}",
        f.acknowledged
    );
}
