//! Origins: the logs one database folds. The local datacenter's topic is the local origin; the
//! same topic on another datacenter's cluster is a remote origin. Each origin has its own
//! offsets, log clock, request state and part of every sum (per origin and partition, moved by
//! one compare-and-set in [`crate::store`]); the global sum of a key is the sum over origins,
//! with a request retried across origins counted once ([`crate::across`]).
//!
//! What lives here: origin ids and names, the `--origin-name`/`--origin`/`--retire-origin`
//! flags both the aggregator and the replayer flatten ([`OriginArgs`]), and the judgments made
//! at start, pure and tested without a broker: an origin's identity (cluster id, topic id)
//! against the stored one ([`judge_identity`]), the origins given against the ones the
//! database folds ([`judge_origins`]), and partition counts ([`judge_partition_counts`]).

use std::collections::BTreeMap;

/// An origin's id in one database (ids differ between databases; names do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OriginId(pub i64);

/// The local origin: what a database folded before it knew origins.
pub const LOCAL: OriginId = OriginId(0);

/// Not an origin: the `sums` rows that take back deltas counted by more than one origin
/// ([`crate::across`]).
pub const ACROSS: OriginId = OriginId(-1);

/// The local origin's name unless `--origin-name` gives one.
pub const DEFAULT_LOCAL_NAME: &str = "local";

/// Another datacenter's cluster, as `--origin NAME=BROKERS` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOrigin {
    pub name: String,
    pub brokers: String,
}

/// The origin flags of the aggregator and the replayer.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginArgs {
    /// This datacenter's name for its own log (the local origin; `local` when not given).
    /// Stored in the database the first time it or `--origin` is given; another name later is
    /// refused. Every datacenter must call the same log by the same name.
    #[arg(long, global = true, env = "TALLY_ORIGIN_NAME", value_parser = parse_name)]
    pub origin_name: Option<String>,
    /// Another datacenter's cluster holding the same topic, `NAME=BROKERS` (repeatable; in
    /// the environment `NAME=BROKERS;NAME=BROKERS`). Its log is folded into this database as
    /// an origin of its own.
    #[arg(long = "origin", global = true, env = "TALLY_ORIGINS", value_delimiter = ';',
          value_parser = parse_remote)]
    pub origins: Vec<RemoteOrigin>,
    /// Stop folding a remote origin the database folds but that is no longer given with
    /// `--origin`: its part of every sum stays as folded, and it cannot be folded into this
    /// database again (rebuild to drop it). Repeatable; in the environment comma-separated.
    #[arg(long = "retire-origin", global = true, env = "TALLY_RETIRE_ORIGINS",
          value_delimiter = ',', value_parser = parse_name)]
    pub retire: Vec<String>,
}

impl OriginArgs {
    /// The flags judged together: names unique, the local name not also remote, nothing both
    /// given and forgotten. Errors are one line saying what to change.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        seen.insert(self.local_name(), "--origin-name");
        for o in &self.origins {
            if let Some(flag) = seen.insert(o.name.as_str(), "--origin") {
                return Err(format!(
                    "origin name '{}' is given twice ({flag} and --origin): give each datacenter one name",
                    o.name
                ));
            }
        }
        for f in &self.retire {
            if seen.contains_key(f.as_str()) {
                return Err(format!(
                    "--retire-origin {f} names an origin that is also given: drop one of them"
                ));
            }
        }
        Ok(())
    }

    /// The local origin's name: the one given, else [`DEFAULT_LOCAL_NAME`].
    pub fn local_name(&self) -> &str {
        self.origin_name.as_deref().unwrap_or(DEFAULT_LOCAL_NAME)
    }

    /// Whether any origin flag names origins: only then is the local name stored, so that a
    /// database used without them can still be named later.
    pub fn names_origins(&self) -> bool {
        self.origin_name.is_some() || !self.origins.is_empty()
    }

    /// The remote origins' names, in the order given.
    pub fn remote_names(&self) -> Vec<&str> {
        self.origins.iter().map(|o| o.name.as_str()).collect()
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not an origin name: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn parse_remote(s: &str) -> Result<RemoteOrigin, String> {
    let Some((name, brokers)) = s.split_once('=') else {
        return Err(format!(
            "'{s}' is not NAME=BROKERS (e.g. west=10.0.2.1:9092)"
        ));
    };
    let name = parse_name(name.trim())?;
    let brokers = brokers.trim();
    if brokers.is_empty() || brokers.split(',').any(|b| b.trim().is_empty()) {
        return Err(format!(
            "origin {name} has no brokers: give NAME=HOST:PORT[,HOST:PORT...]"
        ));
    }
    Ok(RemoteOrigin {
        name,
        brokers: brokers.to_owned(),
    })
}

/// What identifies an origin's log: the cluster's id and the topic's id, each `None` when the
/// broker gives none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: Option<String>,
    pub topic_id: Option<String>,
}

/// Judges an origin's identity as its brokers give it now against the one stored when the
/// database first met it. A part the broker does not give, or that was never stored, is not
/// judged; any other difference is refused: the stored offsets and sums describe another log.
pub fn judge_identity(origin: &str, stored: &Identity, current: &Identity) -> Result<(), String> {
    let pairs = [
        ("cluster", &stored.cluster_id, &current.cluster_id),
        ("topic", &stored.topic_id, &current.topic_id),
    ];
    for (what, stored, current) in pairs {
        if let (Some(s), Some(c)) = (stored, current) {
            if s != c {
                return Err(format!(
                    "origin {origin}: the {what} id is {c} now, but this database folded \
                     {what} id {s}: it is another log, so its stored offsets and sums do not \
                     describe it; nothing is folded (give the right brokers, or rebuild)"
                ));
            }
        }
    }
    Ok(())
}

/// A remote origin as a database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownOrigin {
    pub name: String,
    /// Retired by `--retire-origin`: no longer folded.
    pub retired: bool,
}

/// What to do with the origins a database knows, given the flags.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OriginPlan {
    /// Remote origins given that the database does not know yet: folded from their start.
    pub add: Vec<String>,
    /// Remote origins known, not given, and retired on purpose (`--retire-origin`) now.
    pub retire: Vec<String>,
}

/// Judges the remote origins the database knows against the flags: an origin folded but
/// neither given nor retired is refused (its part would silently stop moving); retiring one the
/// database does not fold is refused (a typo), and so is giving a retired one again (its log
/// was not folded meanwhile, and requests it shares with the others were forgotten).
pub fn judge_origins(known: &[KnownOrigin], args: &OriginArgs) -> Result<OriginPlan, String> {
    let given = args.remote_names();
    let mut plan = OriginPlan::default();
    for o in known {
        let name = &o.name;
        match (given.contains(&name.as_str()), o.retired) {
            (true, true) => {
                return Err(format!(
                    "origin {name} was retired from this database and cannot be folded into \
                     it again: rebuild a new database with it"
                ))
            }
            (true, false) | (false, true) => {}
            (false, false) if args.retire.contains(name) => plan.retire.push(name.clone()),
            (false, false) => {
                return Err(format!(
                    "this database folds origin {name}, which is not given: pass --origin \
                     {name}=BROKERS, or --retire-origin {name} to stop folding it"
                ))
            }
        }
    }
    for f in &args.retire {
        if !known.iter().any(|o| o.name == *f && !o.retired) {
            return Err(format!(
                "--retire-origin {f}: this database folds no origin of that name"
            ));
        }
    }
    plan.add = given
        .into_iter()
        .filter(|g| !known.iter().any(|o| o.name == *g))
        .map(str::to_owned)
        .collect();
    Ok(plan)
}

/// Judges the partition count of every origin's topic (name, count): all must be equal, since
/// a key must live in the same partition in every datacenter.
pub fn judge_partition_counts(counts: &[(String, i32)]) -> Result<(), String> {
    let Some((first, n)) = counts.first() else {
        return Ok(());
    };
    if let Some((other, m)) = counts.iter().find(|(_, m)| m != n) {
        let all: Vec<String> = counts.iter().map(|(o, c)| format!("{o}: {c}")).collect();
        return Err(format!(
            "origins {first} and {other} have {n} and {m} partitions: every origin's topic \
             must have the same partition count ({})",
            all.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        origins: OriginArgs,
    }

    /// Held while a test parses or changes the environment: clap reads `TALLY_ORIGINS` and the
    /// other variables, and tests run on parallel threads of one process.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn parse(args: &[&str]) -> Result<OriginArgs, String> {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        parse_with_env_held(args)
    }

    fn parse_with_env_held(args: &[&str]) -> Result<OriginArgs, String> {
        let mut all = vec!["cli"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map(|c| c.origins)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_flags_is_the_local_origin_alone() {
        assert_eq!(parse(&[]).unwrap(), OriginArgs::default());
    }

    #[test]
    fn origins_parse_from_flags_and_are_judged_together() {
        let a = parse(&[
            "--origin-name",
            "east",
            "--origin",
            "west=10.0.2.1:9092,10.0.2.2:9092",
            "--origin",
            "north = h:1",
        ])
        .unwrap();
        assert_eq!(a.local_name(), "east");
        assert!(a.names_origins());
        assert_eq!(OriginArgs::default().local_name(), "local");
        assert!(!OriginArgs::default().names_origins());
        assert_eq!(
            a.origins,
            vec![
                RemoteOrigin {
                    name: "west".into(),
                    brokers: "10.0.2.1:9092,10.0.2.2:9092".into()
                },
                RemoteOrigin {
                    name: "north".into(),
                    brokers: "h:1".into()
                }
            ]
        );
        assert_eq!(a.validate(), Ok(()));
        for bad in [
            &["--origin", "west"][..],
            &["--origin", "=h:1"],
            &["--origin", "w est=h:1"],
            &["--origin", "west="],
            &["--origin", "west=h:1,"],
            &["--origin-name", ""],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let twice = parse(&["--origin", "west=h:1", "--origin", "west=h:2"]).unwrap();
        assert!(twice.validate().unwrap_err().contains("given twice"));
        let local = parse(&["--origin", "local=h:1"]).unwrap();
        assert!(local.validate().unwrap_err().contains("--origin-name"));
        let both = parse(&["--origin", "w=h:1", "--retire-origin", "w"]).unwrap();
        assert!(both.validate().is_err());
    }

    #[test]
    fn origins_come_from_the_environment_separated_by_semicolons() {
        // The variable is set only while no other test parses (ENV is held).
        let env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        std::env::set_var("TALLY_ORIGINS", "west=h:1,h:2;north=n:9");
        let a = parse_with_env_held(&[]);
        std::env::remove_var("TALLY_ORIGINS");
        drop(env);
        assert_eq!(a.unwrap().remote_names(), vec!["west", "north"]);
    }

    #[test]
    fn a_known_origin_is_only_retired_when_asked_and_new_ones_are_added() {
        let stored = vec![
            KnownOrigin {
                name: "west".into(),
                retired: false,
            },
            KnownOrigin {
                name: "north".into(),
                retired: false,
            },
        ];
        let args = |remotes: &[&str], forget: &[&str]| OriginArgs {
            origins: remotes
                .iter()
                .map(|n| RemoteOrigin {
                    name: n.to_string(),
                    brokers: "h:1".into(),
                })
                .collect(),
            retire: forget.iter().map(|s| s.to_string()).collect(),
            ..OriginArgs::default()
        };
        assert_eq!(
            judge_origins(&stored, &args(&["north", "west", "south"], &[])),
            Ok(OriginPlan {
                add: vec!["south".into()],
                retire: vec![]
            })
        );
        let e = judge_origins(&stored, &args(&["west"], &[])).unwrap_err();
        assert!(e.contains("--retire-origin north"), "{e}");
        assert_eq!(
            judge_origins(&stored, &args(&["west"], &["north"])),
            Ok(OriginPlan {
                add: vec![],
                retire: vec!["north".into()]
            })
        );
        assert!(judge_origins(&stored, &args(&["west", "north"], &["nowhere"])).is_err());
        let retired = vec![KnownOrigin {
            name: "north".into(),
            retired: true,
        }];
        assert_eq!(
            judge_origins(&retired, &args(&[], &[])),
            Ok(OriginPlan::default())
        );
        let e = judge_origins(&retired, &args(&["north"], &[])).unwrap_err();
        assert!(e.contains("retired"), "{e}");
    }

    #[test]
    fn a_changed_identity_is_refused_and_an_unknown_part_is_not_judged() {
        let id = |c: Option<&str>, t: Option<&str>| Identity {
            cluster_id: c.map(str::to_owned),
            topic_id: t.map(str::to_owned),
        };
        let stored = id(Some("C1"), Some("T1"));
        assert_eq!(judge_identity("w", &stored, &stored), Ok(()));
        assert_eq!(judge_identity("w", &stored, &id(None, Some("T1"))), Ok(()));
        assert_eq!(judge_identity("w", &id(None, None), &stored), Ok(()));
        let e = judge_identity("w", &stored, &id(Some("C2"), Some("T1"))).unwrap_err();
        assert!(e.contains("cluster id is C2") && e.contains("C1"), "{e}");
        let e = judge_identity("w", &stored, &id(Some("C1"), Some("T9"))).unwrap_err();
        assert!(e.starts_with("origin w: the topic id is T9"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn partition_counts_must_agree() {
        let c = |v: &[(&str, i32)]| -> Vec<(String, i32)> {
            v.iter().map(|(o, n)| (o.to_string(), *n)).collect()
        };
        assert_eq!(judge_partition_counts(&c(&[("a", 12), ("b", 12)])), Ok(()));
        let e = judge_partition_counts(&c(&[("a", 12), ("b", 12), ("c", 6)])).unwrap_err();
        assert!(e.contains("a and c have 12 and 6"), "{e}");
    }
}
