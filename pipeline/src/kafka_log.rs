//! What librdkafka reports outside any request, logged once and at the level it deserves.
//! Every client context of the binaries hands its `ClientContext::log` and `::error` calls to a
//! [`ClientLog`].
//!
//! - librdkafka reports a broker failure twice: as a `FAIL` log line and as an error event. The
//!   log line goes to debug; the error event is the one logged.
//! - rdkafka 0.39 hands a producer's error event to the context twice in a row (`Client::poll_event`
//!   and `BaseProducer::poll` both call `ClientContext::error`); a consumer's error event reaches
//!   the context once and is also returned by `poll` (callers log those at debug only). The same
//!   error with the same reason within [`REPEAT_WINDOW`] is logged once.
//! - Reaching a partition's end is how a replay finishes: debug.
//! - A broker that cannot be reached (refused connection, all brokers down, name resolution) is a
//!   warning: it happens on every broker restart and librdkafka reconnects by itself. While the
//!   outage lasts the same warning is repeated at most every [`REPEAT_WINDOW`] (librdkafka
//!   reports it on every poll of a consumer). When the brokers stayed unreachable for
//!   [`OUTAGE_ERROR_AFTER`] (no gap of [`OUTAGE_OVER_AFTER`] without such a report), one ERROR
//!   line says so; the next outage starts over.
//! - Access problems (TLS trust, SASL login, ACLs) go to [`crate::kafka_access::note`], which
//!   logs each once per episode and keeps it for `/readyz`.
//! - Anything else librdkafka reports as an error is logged as an error.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Brokers unreachable for longer than this is an ERROR (once per outage).
pub const OUTAGE_ERROR_AFTER: Duration = Duration::from_secs(30);
/// An outage is over when no connectivity error came for this long. librdkafka retries a
/// connection at least every `reconnect.backoff.max.ms` (10 s by default) and reports the
/// failures, so a longer silence means the brokers answered again.
pub const OUTAGE_OVER_AFTER: Duration = Duration::from_secs(20);
/// The same report again within this time is not logged again.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// How to log one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not logged (a repeat, or a report another call already logged).
    Skip,
    Debug,
    Warn,
    Error,
    /// The brokers have been unreachable this long: an ERROR, once per outage.
    OutageError(Duration),
}

#[derive(Debug, Default)]
struct State {
    /// The first and the latest connectivity error of the current outage.
    outage: Option<(Instant, Instant)>,
    escalated: bool,
    /// The last report logged, and when.
    last: Option<(String, Instant)>,
}

impl State {
    fn judge(&mut self, now: Instant, error: &KafkaError, reason: &str) -> Verdict {
        let code = match error {
            KafkaError::PartitionEOF(_) => return Verdict::Debug,
            other => other.rdkafka_error_code(),
        };
        if code == Some(RDKafkaErrorCode::PartitionEOF) {
            return Verdict::Debug;
        }
        let event = format!("{error}: {reason}");
        let repeat = matches!(&self.last, Some((e, at)) if *e == event && now.duration_since(*at) < REPEAT_WINDOW);
        if !code.is_some_and(unreachable) {
            if repeat {
                return Verdict::Skip;
            }
            self.last = Some((event, now));
            return Verdict::Error;
        }
        let (since, _) = match self.outage {
            Some((since, latest)) if now.duration_since(latest) < OUTAGE_OVER_AFTER => {
                (since, latest)
            }
            _ => {
                self.escalated = false;
                (now, now)
            }
        };
        self.outage = Some((since, now));
        let lasted = now.duration_since(since);
        if !self.escalated && lasted >= OUTAGE_ERROR_AFTER {
            self.escalated = true;
            self.last = Some((event, now));
            return Verdict::OutageError(lasted);
        }
        if repeat {
            return Verdict::Skip;
        }
        self.last = Some((event, now));
        Verdict::Warn
    }
}

/// Errors that mean "no broker answers right now"; librdkafka keeps reconnecting.
fn unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
    )
}

/// The shared judge of one client's reports (see the module docs).
#[derive(Debug, Default)]
pub struct ClientLog {
    state: Mutex<State>,
}

impl ClientLog {
    pub fn new() -> Self {
        ClientLog::default()
    }

    /// `ClientContext::error`. Returns the verdict, for callers that count errors.
    pub fn error(&self, error: &KafkaError, reason: &str) -> Verdict {
        // Refused logins, untrusted certificates, missing ACLs: logged once per episode there.
        if crate::kafka_access::note(error, reason) {
            return Verdict::Skip;
        }
        let verdict = self.state.lock().unwrap_or_else(|e| e.into_inner()).judge(
            Instant::now(),
            error,
            reason,
        );
        match verdict {
            Verdict::Skip => {}
            Verdict::Debug => tracing::debug!(%error, reason, "kafka client report"),
            Verdict::Warn => {
                tracing::warn!(%error, reason, "kafka broker unreachable, reconnecting")
            }
            Verdict::Error => tracing::error!(%error, reason, "kafka client error"),
            Verdict::OutageError(lasted) => tracing::error!(
                %error,
                reason,
                lasted_secs = lasted.as_secs(),
                "no kafka broker reachable for {}s; check the brokers and --brokers",
                lasted.as_secs()
            ),
        }
        verdict
    }

    /// `ClientContext::log`: librdkafka's own log lines, at their level, except broker failures
    /// (`FAIL`), which also arrive as error events and are logged by [`ClientLog::error`].
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            _ if fac == "FAIL" => tracing::debug!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }
}

/// A client context that only logs through a [`ClientLog`]: the admin client, and readers of
/// assigned partitions (the replayer's, the aggregator's standby).
#[derive(Debug, Default)]
pub struct LoggingContext(pub ClientLog);

impl rdkafka::ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LoggingContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    }

    fn refused() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
    }

    #[test]
    fn partition_end_is_debug_in_both_shapes() {
        let mut s = State::default();
        let t = Instant::now();
        assert_eq!(s.judge(t, &KafkaError::PartitionEOF(3), ""), Verdict::Debug);
        let global = KafkaError::Global(RDKafkaErrorCode::PartitionEOF);
        assert_eq!(s.judge(t, &global, "reached end"), Verdict::Debug);
    }

    #[test]
    fn the_same_report_twice_in_a_row_is_logged_once() {
        let mut s = State::default();
        let t = Instant::now();
        assert_eq!(s.judge(t, &refused(), "a: refused"), Verdict::Warn);
        assert_eq!(s.judge(t, &refused(), "a: refused"), Verdict::Skip);
        assert_eq!(s.judge(t, &refused(), "b: refused"), Verdict::Warn);
        let other = KafkaError::Global(RDKafkaErrorCode::Fatal);
        assert_eq!(s.judge(t, &other, "x"), Verdict::Error);
        assert_eq!(s.judge(t, &other, "x"), Verdict::Skip);
        assert_eq!(s.judge(t + REPEAT_WINDOW, &other, "x"), Verdict::Error);
    }

    #[test]
    fn a_short_outage_warns_and_a_long_one_is_an_error_once() {
        let mut s = State::default();
        let t = Instant::now();
        let at = |secs: u64| t + Duration::from_secs(secs);
        // A restart: a few seconds of refused connections, then silence.
        assert_eq!(
            s.judge(at(0), &down(), "1/1 brokers are down"),
            Verdict::Warn
        );
        assert_eq!(s.judge(at(3), &refused(), "a: refused"), Verdict::Warn);
        // Reports every few seconds (each a new one, or a repeat once the window passed).
        let mut verdicts = Vec::new();
        for secs in (5..=40).step_by(5) {
            verdicts.push(s.judge(at(secs), &down(), "1/1 brokers are down"));
        }
        let errors: Vec<_> = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::OutageError(_)))
            .collect();
        assert_eq!(errors, vec![&Verdict::OutageError(Duration::from_secs(30))]);
        assert!(!verdicts.contains(&Verdict::Error));
        // After a silence the next outage starts over: a warning again.
        let later = at(40) + OUTAGE_OVER_AFTER;
        assert_eq!(s.judge(later, &down(), "again"), Verdict::Warn);
        let mid = later + Duration::from_secs(15);
        assert_eq!(s.judge(mid, &down(), "again,"), Verdict::Warn);
        assert_eq!(
            s.judge(later + Duration::from_secs(29), &down(), "again."),
            Verdict::Warn
        );
        assert_eq!(
            s.judge(later + Duration::from_secs(31), &down(), "again.."),
            Verdict::OutageError(Duration::from_secs(31))
        );
    }

    #[test]
    fn reports_further_apart_than_the_quiet_gap_are_separate_outages() {
        let mut s = State::default();
        let t = Instant::now();
        for i in 0..5 {
            let v = s.judge(t + OUTAGE_OVER_AFTER * i, &down(), &format!("{i}"));
            assert_eq!(v, Verdict::Warn, "report {i}");
        }
    }
}
