use clap::Parser;

/// Runs Tally's benchmark suite against a local broker and appends the results to
/// BENCHMARKS.md. Exit 1 when any stage was not exact.
#[derive(Parser, Debug)]
#[command(name = "bench-suite")]
struct Cli {
    /// A few seconds per stage on debug binaries: checks exactness, not speed.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10.0)]
    stage_s: f64,
    /// Connections for the HTTP stages other than P1.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Connections P1 is measured at, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 256, 1024])]
    p1_concurrency: Vec<usize>,
    /// The P1 concurrency its targets apply to.
    #[arg(long, default_value_t = 256)]
    p1_at: usize,
    #[arg(long, default_value_t = 2_000_000)]
    p6_records: u64,
    #[arg(long, default_value_t = 100_000)]
    p6_keys: u64,
    /// The broker fsyncs every record before acknowledging it (as Redpanda does); default:
    /// Kafka's own default, acknowledged from the page cache.
    #[arg(long)]
    broker_fsync: bool,
    /// Where to append the results (nothing is written with --smoke unless given).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let cli = Cli::parse();
    let work = tally_testkit::workspace_root().join("target/bench-work");
    let mut cfg = tally_bench::suite::Config::smoke(&work);
    cfg.broker_fsync = cli.broker_fsync;
    if !cli.smoke {
        cfg.stage_s = cli.stage_s;
        cfg.concurrency = cli.concurrency;
        cfg.p1_concurrencies = cli.p1_concurrency;
        cfg.p1_at = cli.p1_at;
        cfg.keys = 1000;
        cfg.ndjson_batch = 500;
        cfg.partitions = 12;
        cfg.p6_records = cli.p6_records;
        cfg.p6_keys = cli.p6_keys;
        cfg.profile = "release".into();
    }
    match tally_bench::report::run_and_record(
        cfg,
        cli.out
            .as_deref()
            .or((!cli.smoke).then_some(std::path::Path::new("BENCHMARKS.md"))),
    ) {
        Ok(exact) if exact => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
