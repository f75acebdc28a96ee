use clap::Parser;

/// Runs Tally's HTTP abuse mix against a fresh pipeline and prints its figures as JSON. Exit 0
/// only when ingest answered no 5xx but 503, accepted nothing invalid, stayed up and under the
/// memory bound, and the sums equal the acknowledged valid increments.
#[derive(Parser, Debug)]
#[command(name = "abuse")]
struct Cli {
    /// Requests to send in all (valid and invalid).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Client threads sending at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Distinct keys of the valid increments.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Ingest's resident memory bound, in MiB.
    #[arg(long, default_value_t = 256)]
    max_rss_mb: u64,
    /// Random seed (default: from the clock; printed in the figures).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(tally_chaos::seed_from_clock);
    let cfg = tally_chaos::AbuseConfig {
        seed,
        requests: cli.requests,
        concurrency: cli.concurrency,
        keys: cli.keys,
        max_rss_mb: cli.max_rss_mb,
        work_dir: tally_testkit::workspace_root()
            .join("target/chaos-work")
            .join(format!("abuse-{seed}")),
    };
    eprintln!("abuse: seed {seed}, logs in {}", cfg.work_dir.display());
    tally_testkit::exit::finish_json(|| tally_chaos::abuse(&cfg), |f| f.passed(cfg.max_rss_mb))
}
