use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let config = aggregator::Config::parse();
    match aggregator::run(config, tally_pipeline::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<tally_pipeline::origin_start::Refused>() => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("aggregator failed: {e:#}");
            std::process::ExitCode::from(tally_pipeline::kafka_access::exit_code(&e))
        }
    }
}
