//! The replayer's command line: subcommands, their flags, and exit codes
//! (0 success, 1 verify found differences, 2 the command could not run).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tally_pipeline::applier::Applier;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::origin::OriginArgs;
use tally_pipeline::store::{OpenMode, Store};
use tally_pipeline::topic;
use tally_pipeline::window::WindowArgs;

use crate::as_of::{Filter, Format};
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
    #[command(flatten)]
    pub window: WindowArgs,
    /// Origins: `rebuild` names the new database's local origin with `--origin-name`; folding
    /// remote origins (`--origin`) is not built into the replayer yet and is refused.
    #[command(flatten)]
    pub origins: OriginArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Folds a range of the log into a new database (same schema as the aggregator's).
    Rebuild {
        /// The database to create; it must not exist unless --continue is given.
        #[arg(long, env = "TALLY_DB", default_value = "tally.db")]
        db: PathBuf,
        /// Where to start: `earliest` (offset 0: a log that no longer starts there is refused),
        /// `log-start` (wherever each log starts now), PARTITION:OFFSET,... (unlisted
        /// partitions: earliest),
        /// `ts:MILLIS` or an RFC 3339 time (each partition's first record at or after it).
        #[arg(long, env = "TALLY_REPLAY_FROM", default_value = "earliest")]
        from: From,
        /// Where to stop: `end` (each partition's end when reached), PARTITION:OFFSET,...
        /// (exclusive; unlisted partitions: end), `ts:MILLIS` or an RFC 3339 time (before each
        /// partition's first record at or after it).
        #[arg(long, env = "TALLY_REPLAY_TO", default_value = "end")]
        to: To,
        /// Write into an existing database, starting each partition from its stored offset
        /// (resume a rebuild that was stopped, or extend a snapshot).
        #[arg(
            long = "continue",
            env = "TALLY_REPLAY_CONTINUE",
            default_value_t = false
        )]
        resume: bool,
    },
    /// Replays into a temporary database up to LIVE's committed offsets and compares every sum.
    Verify {
        /// The live database to check (read only).
        #[arg(long, env = "TALLY_DB", default_value = "tally.db")]
        db: PathBuf,
        /// Check only these partitions (comma-separated ids); all of LIVE's by default.
        #[arg(
            long = "partitions",
            env = "TALLY_VERIFY_PARTITIONS",
            value_delimiter = ','
        )]
        only: Vec<i32>,
    },
    /// Prints the sums as they were at a point of the log.
    AsOf {
        /// The point: PARTITION:OFFSET,... (exclusive; unlisted partitions: their end),
        /// `ts:MILLIS` or an RFC 3339 time, or `end`.
        #[arg(long, env = "TALLY_AS_OF_AT", default_value = "end")]
        at: To,
        /// Only this key.
        #[arg(long, env = "TALLY_AS_OF_KEY", conflicts_with = "prefix")]
        key: Option<String>,
        /// Only keys starting with this prefix.
        #[arg(long, env = "TALLY_AS_OF_PREFIX")]
        prefix: Option<String>,
        /// Where to write: FILE.csv, FILE.json, or - for CSV on standard output.
        #[arg(long, env = "TALLY_AS_OF_OUT", default_value = "-")]
        out: String,
    },
}

/// The line a rebuild ends with. A `--continue` that found nothing to fold says that the
/// database was already complete, so an operator who reran it to be sure knows where they stand.
fn rebuilt_line(db: &std::path::Path, s: &crate::replay::Summary, resume: bool) -> String {
    if resume && s.records == 0 {
        let read = match s.partitions {
            0 => String::new(),
            n => format!(" ({n} partitions read to their end)"),
        };
        return format!(
            "nothing left to replay: {} already holds the whole range asked for{read}",
            db.display()
        );
    }
    format!(
        "rebuilt {}: {} records over {} partitions ({} quarantined)",
        db.display(),
        s.records,
        s.partitions,
        s.rejected
    )
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
    if !cli.origins.origins.is_empty() {
        anyhow::bail!(
            "the replayer folds the local origin only in this version: drop --origin (and \
             TALLY_ORIGINS)"
        );
    }
    topic::check_blocking(&cli.kafka)?;
    let window = cli.window.window();
    match cli.command {
        Command::Rebuild {
            db,
            from,
            to,
            resume,
        } => {
            let mode = if resume {
                OpenMode::Existing
            } else {
                OpenMode::CreateNew
            };
            let mut store = Store::open(&db, &cli.kafka.topic, mode).map_err(|e| {
                let hint = if resume {
                    "drop --continue to create it"
                } else {
                    "choose a path that does not exist yet, or add --continue to resume into it"
                };
                anyhow::anyhow!("{e}; {hint}")
            })?;
            if let Err(why) = topic::check_id(&cli.kafka, &mut store)? {
                anyhow::bail!("{why}; rebuild into a new database");
            }
            if store.folds_several_origins() {
                anyhow::bail!(
                    "{} folds remote origins; the replayer folds the local origin only in \
                     this version",
                    db.display()
                );
            }
            tally_pipeline::origin_start::bind_or_refuse(&cli.kafka, &cli.origins, &mut store)?;
            store.bind_idempotency_window(window)?;
            let mut applier = Applier::new(store);
            let s = crate::replay::replay(&cli.kafka, &mut applier, &from, &to, None)?;
            println!("{}", rebuilt_line(&db, &s, resume));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { db, only } => {
            let only: BTreeSet<i32> = only.into_iter().collect();
            let report = crate::verify::verify(
                &cli.kafka,
                &db,
                window,
                (!only.is_empty()).then_some(&only),
            )?;
            println!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::AsOf {
            at,
            key,
            prefix,
            out,
        } => {
            let format = Format::for_path(&out).map_err(anyhow::Error::msg)?;
            let filter = match (key, prefix) {
                (Some(k), _) => Filter::Key(k),
                (None, Some(p)) => Filter::Prefix(p),
                (None, None) => Filter::All,
            };
            let result = crate::as_of::as_of(&cli.kafka, &at, window, &filter)?;
            if out == "-" {
                crate::as_of::write(std::io::stdout().lock(), &result, format)?;
            } else {
                let file = std::fs::File::create(&out).with_context(|| {
                    format!("cannot create {out}; check the directory exists and is writable")
                })?;
                crate::as_of::write(std::io::BufWriter::new(file), &result, format)?;
            }
            eprintln!(
                "as of offsets {:?}: {} keys",
                result.offsets,
                result.sums.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("replayer").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn broker_and_topic_go_before_or_after_the_subcommand() {
        for args in [
            &["--brokers", "b:1", "--topic", "t", "verify", "--db", "x.db"][..],
            &["verify", "--brokers", "b:1", "--topic", "t", "--db", "x.db"],
            &["--brokers", "b:1", "verify", "--db", "x.db", "--topic", "t"],
        ] {
            let cli = parse(args);
            assert_eq!(
                (cli.kafka.brokers.as_str(), cli.kafka.topic.as_str()),
                ("b:1", "t")
            );
            assert!(
                matches!(cli.command, Command::Verify { ref db, .. } if db.as_os_str() == "x.db")
            );
        }
        let cli = parse(&["rebuild", "--db", "n.db", "--continue", "--topic", "t2"]);
        assert_eq!(cli.kafka.topic, "t2");
        assert!(matches!(cli.command, Command::Rebuild { resume: true, .. }));
        let cli = parse(&["as-of", "--brokers", "b:2"]);
        assert_eq!(cli.kafka.brokers, "b:2");
    }

    #[test]
    fn verify_partitions_after_the_subcommand_is_the_filter() {
        let cli = parse(&["--partitions", "4", "verify", "--partitions", "0,3"]);
        assert_eq!(cli.kafka.partitions, 4);
        assert!(matches!(cli.command, Command::Verify { ref only, .. } if only == &[0, 3]));
    }

    #[test]
    fn a_continue_with_nothing_to_do_says_so() {
        let db = std::path::Path::new("x.db");
        let nothing = crate::replay::Summary {
            records: 0,
            rejected: 0,
            partitions: 12,
        };
        assert!(rebuilt_line(db, &nothing, true).starts_with("nothing left to replay: x.db"));
        assert!(rebuilt_line(db, &nothing, false).starts_with("rebuilt x.db: 0 records"));
        let some = crate::replay::Summary {
            records: 5,
            ..nothing
        };
        assert!(rebuilt_line(db, &some, true).starts_with("rebuilt x.db: 5 records"));
        let skipped = crate::replay::Summary {
            partitions: 0,
            ..nothing
        };
        assert_eq!(
            rebuilt_line(db, &skipped, true),
            "nothing left to replay: x.db already holds the whole range asked for"
        );
    }
}
