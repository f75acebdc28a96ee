use clap::Parser;

/// Runs Tally's chaos scenario and prints its figures as JSON. Exit 0 only when nothing was
/// lost or doubled, every increment was acknowledged, and verify passed.
#[derive(Parser, Debug)]
#[command(name = "chaos")]
struct Cli {
    /// The long run (100 aggregator kills, 20 ingest kills, 10 broker restarts, 10 zombies,
    /// 10 disk-full episodes) instead of the short one.
    #[arg(long)]
    long: bool,
    /// Random seed (default: from the clock; printed in the figures).
    #[arg(long)]
    seed: Option<u64>,
    /// Also SIGKILL and restart the broker this many times (tansu 0.6 does not always come
    /// back in a state our clients recover from; see RELIABILITY.md).
    #[arg(long, default_value_t = 0)]
    broker_kills: u64,
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
    cfg.targets[2] = cli.broker_kills;
    eprintln!("chaos: seed {seed}");
    tally_chaos::exit_with(tally_chaos::run(&cfg), |f| f.passed())
}
