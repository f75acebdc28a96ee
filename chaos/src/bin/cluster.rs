use clap::Parser;

/// Runs Tally's cluster scenario (three Kafka nodes in network namespaces, two ingest
/// processes behind HAProxy, two aggregators) and prints its figures as JSON. Exit 0 only
/// when nothing was lost or doubled, every increment was acknowledged, and verify passed.
/// Needs root, `ip` and `haproxy`.
#[derive(Parser, Debug)]
#[command(name = "cluster")]
struct Cli {
    /// The long run (10 of each fault) instead of the short one (1 of each).
    #[arg(long)]
    long: bool,
    /// Random seed (default: from the clock; printed in the figures).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(tally_chaos::seed_from_clock);
    let work = tally_testkit::workspace_root()
        .join("target/chaos-work")
        .join(format!("cluster-{seed}-{}", std::process::id()));
    let cfg = if cli.long {
        tally_chaos::ClusterConfig::long(seed, work)
    } else {
        tally_chaos::ClusterConfig::short(seed, work)
    };
    eprintln!(
        "cluster: seed {seed}, work directory {}",
        cfg.work_dir.display()
    );
    tally_testkit::exit::finish_json(|| tally_chaos::run_cluster(&cfg), |f| f.passed())
}
