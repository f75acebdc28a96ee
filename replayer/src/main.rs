use clap::Parser;

fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let cli = replayer::cli::Cli::parse();
    replayer::cli::run(cli)
}
