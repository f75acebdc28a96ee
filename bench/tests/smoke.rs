//! The benchmark suite's smoke run: every stage for a few seconds on a real broker, so the
//! suite never rots. It checks exactness, not speed.

#[test]
fn smoke_suite_runs_every_stage_and_is_exact() {
    let work = tempfile::tempdir().unwrap();
    let cfg = tally_bench::suite::Config::smoke(work.path());
    let res = tally_bench::suite::run(cfg).expect("the suite runs");
    for r in &res.ratios {
        println!(
            "{} {}: {:.3} ({} target {})",
            r.name, r.what, r.value, r.unit, r.target
        );
        assert!(
            r.value.is_finite() || r.name.starts_with("P5"),
            "{} produced no number",
            r.name
        );
    }
    let names: Vec<_> = res.ratios.iter().map(|r| r.name.as_str()).collect();
    for want in ["P1", "P2", "P3", "P4", "P6"] {
        assert!(names.contains(&want), "stage {want} missing: {names:?}");
    }
    for (stage, ok, detail) in &res.exactness {
        assert!(ok, "{stage}: {detail}");
    }
    assert!(res.exact());
}
