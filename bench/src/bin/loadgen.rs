use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let args = tally_bench::loadgen::Args::parse();
    match tally_bench::loadgen::run(&args).await {
        Ok((report, _truth)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("report serializes")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
