//! The benchmark suite's smoke run: every stage for a few seconds on a real broker, so the
//! suite never rots. It checks exactness, not speed, and that the run is recorded: its page
//! and raw numbers in the history folder, and the rows it measured replaced in the
//! current-figures table while the rows of other benchmarks are kept.

use tally_bench::report::{self, Stamp, TABLE_BEGIN, TABLE_END, TABLE_FILE, TABLE_HEAD};

#[test]
fn smoke_suite_runs_every_stage_is_exact_and_is_recorded() {
    let work = tempfile::tempdir().unwrap();
    let cfg = tally_bench::suite::Config::smoke(work.path());
    let res = tally_bench::suite::run(cfg.clone()).expect("the suite runs");
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
    for want in [
        "P1", "P1b", "P1c", "P1d", "P2", "P3", "P4", "P5@0.25", "P5", "P5sat", "P5b", "P6",
    ] {
        assert!(names.contains(&want), "stage {want} missing: {names:?}");
    }
    for (stage, ok, detail) in &res.exactness {
        assert!(ok, "{stage}: {detail}");
    }
    assert!(res.exact());

    // Recorded into a repository root whose table holds an old P1 row and a failover row.
    let root = tempfile::tempdir().unwrap();
    let old_p1 = "| P1 | old | 0.1 | | d | `c0` | b | m | x |";
    let failover = "| Failover | f | 11.7 s | | d | `c1` | b | m | y |";
    std::fs::write(
        root.path().join(TABLE_FILE),
        format!("# Benchmarks\n\n{TABLE_BEGIN}\n{TABLE_HEAD}\n{old_p1}\n{failover}\n{TABLE_END}\n\nText.\n"),
    )
    .unwrap();
    let stamp = Stamp::now();
    let run = tally_bench::suite::recorded(&res, &cfg, &stamp).unwrap();
    let page = report::record(root.path(), &stamp, &run).unwrap();
    let page_text = std::fs::read_to_string(&page).unwrap();
    assert!(page_text.contains("| P3 |"), "{page_text}");
    let raw_name = stamp.file("suite", "json");
    assert!(
        page_text.contains(&raw_name),
        "the page links its raw numbers: {page_text}"
    );
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(page.with_file_name(&raw_name)).unwrap())
            .unwrap();
    assert!(
        raw["results"]["raw"]["p3_aggregator_per_s"].is_number(),
        "{raw}"
    );
    let table = std::fs::read_to_string(root.path().join(TABLE_FILE)).unwrap();
    println!("{table}");
    assert!(
        !table.contains(old_p1),
        "the measured P1 row is replaced: {table}"
    );
    assert!(
        table.contains(failover),
        "rows the suite did not measure are kept: {table}"
    );
    for want in names {
        assert!(
            table.contains(&format!("| {want} | ")),
            "row {want} missing: {table}"
        );
    }
    assert!(
        table.ends_with(&format!("{TABLE_END}\n\nText.\n")),
        "{table}"
    );
}
