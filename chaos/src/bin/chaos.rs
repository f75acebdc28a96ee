use clap::Parser;

/// Runs Tally's chaos scenario and prints its figures as JSON. Exit 0 only when nothing was
/// lost or doubled, every increment was acknowledged, and verify passed.
#[derive(Parser, Debug)]
#[command(name = "chaos")]
struct Cli {
    /// The long run (100 aggregator kills, 20 ingest kills, 10 broker restarts, 10 zombies,
    /// 10 disk-full episodes) instead of the short one (10, 3, 2, 2, 2).
    #[arg(long)]
    long: bool,
    /// Random seed (default: from the clock; printed in the figures).
    #[arg(long)]
    seed: Option<u64>,
    /// Broker SIGKILLs and restarts instead of the run's own target (2 short, 10 long).
    #[arg(long)]
    broker_kills: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(tally_chaos::seed_from_clock);
    let work = tally_testkit::workspace_root().join("target/chaos-work");
    let mut cfg = if cli.long {
        tally_chaos::Config::long(seed, work)
    } else {
        tally_chaos::Config::short(seed, work)
    };
    if let Some(n) = cli.broker_kills {
        cfg.targets[2] = n;
    }
    eprintln!("chaos: seed {seed}");
    tally_testkit::exit::finish_json(|| tally_chaos::run(&cfg), |f| f.passed())
}
