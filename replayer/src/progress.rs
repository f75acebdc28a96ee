//! Progress of a replay: an indicatif bar with records per second and ETA when stderr is a
//! terminal, a plain log line every few seconds otherwise (CI, systemd, pipes).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain log line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// `total`: records expected, when known (an estimate from the broker's watermarks).
    pub fn new(total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} replaying [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records ({per_sec}, ETA {eta})",
            )
            .expect("valid progress template");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                self.log("replay progress");
            }
            None => {}
        }
    }

    fn log(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta_secs = self
            .total
            .filter(|_| rate > 0.0)
            .map(|t| (t.saturating_sub(self.done) as f64 / rate).round() as u64);
        tracing::info!(
            records = self.done,
            total = ?self.total,
            records_per_sec = rate.round() as u64,
            eta_secs = ?eta_secs,
            "{what}"
        );
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.log("replay done"),
        }
    }
}
