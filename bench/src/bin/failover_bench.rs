use clap::Parser;

/// Times the takeover of a killed aggregator's partitions with and without warm standbys
/// (issue 16). With --out-dir, writes the run into the history folder and replaces its rows in
/// BENCHMARKS.md's current-figures table. Exit 0 when both modes were exact, 1 when a mode lost
/// or doubled an increment, 2 when the benchmark could not run.
#[derive(Parser, Debug)]
#[command(name = "failover-bench")]
struct Cli {
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    #[arg(long, default_value_t = 6_000)]
    session_timeout_ms: u64,
    /// Build of the aggregator to run (`cargo build --release` first).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Directory for logs and databases.
    #[arg(long, default_value = "target/bench-work")]
    work_dir: std::path::PathBuf,
    /// The repository root to record the run in (BENCHMARKS.md and docs/history/bench/).
    #[arg(long)]
    out_dir: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = tally_bench::failover::Config {
        records: cli.records,
        keys: cli.keys,
        partitions: cli.partitions,
        session_timeout_ms: cli.session_timeout_ms,
        work_dir: cli.work_dir,
        profile: cli.profile,
    };
    tally_testkit::exit::finish(
        || tally_bench::failover::run(&cfg),
        |r| {
            let stamp = tally_bench::report::Stamp::now();
            let run = tally_bench::failover::recorded(r, &stamp)?;
            println!("{}", run.page);
            if let Some(out) = &cli.out_dir {
                tally_bench::report::record(out, &stamp, &run)?;
            }
            if !r.exact() {
                eprintln!("failover-bench: a mode lost or doubled increments (see the table)");
            }
            Ok(r.exact())
        },
    )
}
