use clap::Parser;

/// Times commits while a full idempotency window of requests expires (issue 15) and appends
/// the result to BENCHMARKS.md when --out is given.
#[derive(Parser, Debug)]
#[command(name = "prune-bench")]
struct Cli {
    #[arg(long, default_value_t = 10_000_000)]
    remembered: u64,
    #[arg(long, default_value_t = 3_000_000)]
    steady: u64,
    #[arg(long, default_value_t = 6_000)]
    batch: u64,
    /// Directory for the database (a temporary one under it is used and removed).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = tally_bench::prune::Config {
        remembered: cli.remembered,
        steady: cli.steady,
        batch: cli.batch,
        ..Default::default()
    };
    let dir = tempfile::Builder::new()
        .prefix("tally-prune-")
        .tempdir_in(&cli.dir)?;
    let report = tally_bench::prune::run(&cfg, dir.path())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let md = tally_bench::prune::markdown(
        &report,
        &tally_bench::report::machine(),
        &tally_bench::report::sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        &tally_bench::report::sh("git", &["rev-parse", "--short", "HEAD"]),
    );
    tally_bench::report::print_and_append(&md, cli.out.as_deref())?;
    Ok(())
}
