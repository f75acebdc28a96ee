use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let config = ingest::Config::parse();
    match ingest::run(config, tally_pipeline::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ingest failed: {e:#}");
            std::process::ExitCode::from(tally_pipeline::kafka_access::exit_code(&e))
        }
    }
}
