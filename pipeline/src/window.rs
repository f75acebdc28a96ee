//! The idempotency window as the aggregator and the replayer both take it on the command line
//! (`--idempotency-window-secs`); the database keeps the one it was first folded with
//! ([`crate::store::Store::bind_idempotency_window`]).

use std::time::Duration;

/// The idempotency-window flag, flattened into each binary that folds.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WindowArgs {
    /// How long a request with an Idempotency-Key is remembered, in seconds of log time (record
    /// timestamps): a retry within it is not counted again. A database keeps the window it was
    /// first folded with (3600 when none was given then); a later start, `rebuild --continue`
    /// or `verify` with another one is refused. Give `rebuild` and `as-of` the live
    /// aggregator's window.
    #[arg(long, global = true, env = "TALLY_IDEMPOTENCY_WINDOW_SECS",
          value_parser = clap::value_parser!(u64).range(1..=365 * 24 * 60 * 60))]
    pub idempotency_window_secs: Option<u64>,
}

impl WindowArgs {
    /// The window asked for, if any.
    pub fn window(&self) -> Option<Duration> {
        self.idempotency_window_secs.map(Duration::from_secs)
    }
}
