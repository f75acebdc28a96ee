use clap::Parser;

/// Times commits while a full idempotency window of requests expires (issue 15). With
/// --out-dir, writes the run into the history folder and replaces its rows in BENCHMARKS.md's
/// current-figures table. Exit 0 when pruning kept up (nothing dead left beyond one commit's
/// budget), 1 when it did not, 2 when the benchmark could not run.
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
    /// The repository root to record the run in (BENCHMARKS.md and docs/history/bench/).
    #[arg(long)]
    out_dir: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = tally_bench::prune::Config {
        remembered: cli.remembered,
        steady: cli.steady,
        batch: cli.batch,
        ..Default::default()
    };
    tally_testkit::exit::finish(
        || {
            let dir = tempfile::Builder::new()
                .prefix("tally-prune-")
                .tempdir_in(&cli.dir)?;
            tally_bench::prune::run(&cfg, dir.path())
        },
        |r| {
            println!("{}", serde_json::to_string_pretty(r)?);
            let stamp = tally_bench::report::Stamp::now();
            let run = tally_bench::prune::recorded(r, &stamp)?;
            println!("{}", run.page);
            if let Some(out) = &cli.out_dir {
                tally_bench::report::record(out, &stamp, &run)?;
            }
            Ok(tally_bench::prune::kept_up(r))
        },
    )
}
