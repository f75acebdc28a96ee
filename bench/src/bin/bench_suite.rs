use clap::Parser;

/// Runs Tally's benchmark suite against a local broker, writes the run into the history folder
/// (docs/history/bench/) and replaces the rows it measured in BENCHMARKS.md's current-figures
/// table. Exit 0 when every stage was exact, 1 when one was not, 2 when the suite could not run.
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
    /// The fixed rates P5 is measured at, as fractions of the highest P1 rate, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5])]
    p5_fraction: Vec<f64>,
    #[arg(long, default_value_t = 2_000_000)]
    p6_records: u64,
    #[arg(long, default_value_t = 100_000)]
    p6_keys: u64,
    /// The broker fsyncs every record before acknowledging it (as Redpanda does); default:
    /// Kafka's own default, acknowledged from the page cache.
    #[arg(long)]
    broker_fsync: bool,
    /// The repository root to record the run in (BENCHMARKS.md and docs/history/bench/);
    /// default: this workspace, except with --smoke, which records nothing unless given.
    #[arg(long)]
    out_dir: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let cli = Cli::parse();
    let root = tally_testkit::workspace_root();
    let mut cfg = tally_bench::suite::Config::smoke(&root.join("target/bench-work"));
    cfg.broker_fsync = cli.broker_fsync;
    cfg.p5_fractions = cli.p5_fraction;
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
    let out = cli.out_dir.or((!cli.smoke).then_some(root));
    tally_testkit::exit::finish(
        || tally_bench::suite::run(cfg.clone()),
        |res| {
            let stamp = tally_bench::report::Stamp::now();
            let run = tally_bench::suite::recorded(res, &cfg, &stamp)?;
            println!("{}", run.page);
            if let Some(out) = &out {
                let page = tally_bench::report::record(out, &stamp, &run)?;
                eprintln!("bench-suite: recorded in {}", page.display());
            }
            Ok(res.exact())
        },
    )
}
