use clap::Parser;

/// Times the takeover of a killed aggregator's partitions with and without warm standbys
/// (issue 16) and appends the result to BENCHMARKS.md when --out is given.
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
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let cfg = tally_bench::failover::Config {
        records: cli.records,
        keys: cli.keys,
        partitions: cli.partitions,
        session_timeout_ms: cli.session_timeout_ms,
        work_dir: cli.work_dir,
        profile: cli.profile,
    };
    let r = tally_bench::failover::run(&cfg)?;
    let md = tally_bench::failover::markdown(
        &r,
        &tally_bench::report::machine(),
        &tally_bench::report::sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        &tally_bench::report::sh("git", &["rev-parse", "--short", "HEAD"]),
    );
    tally_bench::report::print_and_append(&md, cli.out.as_deref())?;
    Ok(if r.exact() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("failover-bench: a mode was not exact (see the table)");
        std::process::ExitCode::FAILURE
    })
}
