use clap::Parser;

/// Exit 0 when the load ran (its report is printed as JSON), 2 when it could not run.
fn main() -> std::process::ExitCode {
    tally_pipeline::telemetry::init();
    let args = tally_bench::loadgen::Args::parse();
    tally_testkit::exit::finish_json(
        || {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(tally_bench::loadgen::run(&args))
                .map(|(report, _truth)| report)
        },
        |_| true,
    )
}
