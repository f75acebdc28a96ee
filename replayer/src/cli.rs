//! The replayer's command line: subcommands, their flags, and exit codes
//! (0 success, 1 verify found differences, 2 the command could not run).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_pipeline::applier::Applier;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::store::{OpenMode, Store};

use crate::positions::{From, To};

#[derive(Parser, Debug)]
#[command(
    name = "replayer",
    version,
    about = "Rebuilds or verifies Tally's SQLite state from the log"
)]
pub struct Cli {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Folds a range of the log into a new database (same schema as the aggregator's).
    Rebuild {
        /// The database to create; it must not exist.
        #[arg(long)]
        db: PathBuf,
        /// Where to start: `earliest` or PARTITION:OFFSET,... (unlisted partitions: earliest).
        #[arg(long, default_value = "earliest")]
        from: From,
        /// Where to stop: `end` (each partition's end when reached) or PARTITION:OFFSET,...
        /// (exclusive; unlisted partitions: end).
        #[arg(long, default_value = "end")]
        to: To,
    },
    /// Replays into a temporary database up to LIVE's committed offsets and compares every sum.
    Verify {
        /// The live database to check (read only).
        #[arg(long)]
        db: PathBuf,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rebuild { db, from, to } => {
            let store = Store::open(&db, &cli.kafka.topic, OpenMode::CreateNew)
                .map_err(|e| anyhow::anyhow!("{e}; choose a path that does not exist yet"))?;
            let mut applier = Applier::new(store);
            let s = crate::replay::replay(&cli.kafka, &mut applier, &from, &to, None)?;
            println!(
                "rebuilt {}: {} records over {} partitions ({} quarantined)",
                db.display(),
                s.records,
                s.partitions,
                s.rejected
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { db } => {
            let report = crate::verify::verify(&cli.kafka, &db, None)?;
            println!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
