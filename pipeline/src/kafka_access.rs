//! Whether Tally may talk to its brokers at all: TLS trust, SASL login, ACLs. These failures do
//! not heal by retrying (a wrong password stays wrong), so they are told apart from a broker
//! that is merely down and said plainly:
//!
//! - at start, [`probe`] connects once with the binary's own client settings and, within
//!   [`PROBE_DEADLINE`], either sees the topic's metadata or returns a [`Misconfigured`] error
//!   naming the cause; every binary ends then with exit 2 and that one line;
//! - while running, every client's error callback ([`crate::kafka_log::ClientLog`]) hands its
//!   reports to [`note`]; an access problem is logged once per episode (an episode ends after
//!   [`EPISODE_OVER_AFTER`] without a report) and [`current`] returns it, for `/readyz` to
//!   answer 503 with the reason.
//!
//! What must not live here: logging of other client reports (that is `kafka_log`), the
//! settings themselves (`kafka_overrides` and `kafka`). No message written here holds a secret:
//! the settings are never quoted, and librdkafka's reasons name hosts, users and mechanisms,
//! never passwords.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::kafka::KafkaArgs;

pub use crate::kafka_overrides::{exit_code, Misconfigured};

/// Judges the operator's settings and probes the brokers with them ([`probe`]): a
/// [`Misconfigured`] error when they refuse Tally. Every binary's start-up check begins here.
pub async fn check(kafka: &KafkaArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    kafka.overrides()?;
    let me = kafka.clone();
    tokio::task::spawn_blocking(move || probe(&me))
        .await
        .context("the access probe panicked")?
}

/// How long the start-up probe waits for an answer or a refusal. A broker that is only down
/// is not a refusal: the probe then lets start-up go on (and fail as it did before).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// An access problem is current while reports of it keep coming at least this often;
/// librdkafka retries a refused login at least every `reconnect.backoff.max.ms` (10 s).
pub const EPISODE_OVER_AFTER: Duration = Duration::from_secs(30);

/// What is wrong, from one librdkafka report; `None` when the report is no access problem.
pub fn classify(error: &KafkaError, reason: &str) -> Option<String> {
    let code = error.rdkafka_error_code()?;
    let what = match code {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::UnsupportedSASLMechanism
        | RDKafkaErrorCode::IllegalSASLState => {
            "the broker refused the SASL login (check sasl.username, sasl.password and \
             sasl.mechanisms)"
        }
        RDKafkaErrorCode::SSL if reason.contains("hostname mismatch") => {
            "the broker's TLS certificate is not for the address connected to (hostname \
             mismatch: connect by a name the certificate lists, or fix the certificate)"
        }
        RDKafkaErrorCode::SSL if reason.contains("verify") => {
            "the broker's TLS certificate is not trusted (unknown CA or a certificate for \
             another name: check ssl.ca.location and the address in --brokers)"
        }
        RDKafkaErrorCode::SSL => "the TLS connection to the broker failed",
        RDKafkaErrorCode::TopicAuthorizationFailed => {
            "the broker's ACLs do not allow this principal what it needs on the topic (README, \
             Security: ACLs)"
        }
        RDKafkaErrorCode::GroupAuthorizationFailed => {
            "the broker's ACLs do not allow this principal to use its consumer group (README, \
             Security: ACLs)"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => {
            "the broker's ACLs do not allow this principal what it needs on the cluster \
             (IdempotentWrite for ingest; README, Security: ACLs)"
        }
        _ => return None,
    };
    Some(format!(
        "{what}: {}",
        one_line(&format!("{error}: {reason}"))
    ))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The process's current access problem and its episode.
#[derive(Debug, Default)]
struct Watch {
    /// The problem, when it was first and last reported.
    current: Option<(String, Instant, Instant)>,
}

impl Watch {
    /// Records a report; returns whether it is the first of its episode (to be logged).
    fn note(&mut self, now: Instant, problem: String) -> bool {
        match &mut self.current {
            Some((p, _, last)) if now.duration_since(*last) < EPISODE_OVER_AFTER => {
                *last = now;
                if *p != problem {
                    // The same episode with a newer wording: report the latest.
                    *p = problem;
                }
                false
            }
            _ => {
                self.current = Some((problem, now, now));
                true
            }
        }
    }

    fn current(&self, now: Instant) -> Option<String> {
        match &self.current {
            Some((p, _, last)) if now.duration_since(*last) < EPISODE_OVER_AFTER => Some(p.clone()),
            _ => None,
        }
    }
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

/// A client report: when it is an access problem, remembers it and logs it once per episode.
/// Returns whether it was one (the caller then logs nothing more).
pub fn note(error: &KafkaError, reason: &str) -> bool {
    let Some(problem) = classify(error, reason) else {
        return false;
    };
    let first = WATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Watch::default)
        .note(Instant::now(), problem.clone());
    if first {
        tracing::error!("kafka access refused: {problem}");
    } else {
        tracing::debug!("kafka access refused (again): {problem}");
    }
    true
}

/// The access problem reported within the last [`EPISODE_OVER_AFTER`], for `/readyz`.
pub fn current() -> Option<String> {
    WATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|w| w.current(Instant::now()))
}

/// Collects what the probe's client reports.
#[derive(Default)]
struct ProbeContext {
    problem: Mutex<Option<String>>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", "probe {fac} {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "probe report");
        if let Some(p) = classify(&error, reason) {
            self.problem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(p);
        }
    }
}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Connects with `kafka`'s settings (the operator's included) and asks for the topic's
/// metadata until it comes or [`PROBE_DEADLINE`] passes. A refused login, an untrusted
/// certificate or a topic this principal may not describe is a [`Misconfigured`] error; a
/// topic that does not exist yet, or brokers that do not answer at all, are not (start-up goes
/// on and creates the topic, or fails as it would have). Blocking.
pub fn probe(kafka: &KafkaArgs) -> anyhow::Result<()> {
    // A plain client: no group (whose coordinator lookup needs ACLs of its own), no idempotence.
    let client: BaseProducer<ProbeContext> = crate::client_config::plain(kafka)
        .create_with_context(ProbeContext::default())
        .map_err(|e| {
            Misconfigured(format!(
                "the Kafka client settings are not valid: {}",
                kafka.overrides_redact(&e.to_string())
            ))
        })?;
    let start = Instant::now();
    loop {
        let answer = client
            .client()
            .fetch_metadata(Some(&kafka.topic), Duration::from_secs(1));
        // Error events reach the context only from a poll.
        client.poll(Duration::from_millis(100));
        let problem = client
            .context()
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = problem {
            // librdkafka says "certificate verify failed" for an unknown CA and for a name
            // mismatch alike: a handshake of our own tells which.
            let p = match diagnose_certificate(kafka) {
                Some(why) if p.contains("not trusted") => why,
                _ => p,
            };
            return Err(Misconfigured(format!(
                "cannot use the Kafka brokers {}: {p}",
                kafka.brokers
            ))
            .into());
        }
        if let Ok(md) = answer {
            let err = md
                .topics()
                .iter()
                .find(|t| t.name() == kafka.topic)
                .and_then(|t| t.error())
                .map(RDKafkaErrorCode::from);
            if err == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
                return Err(Misconfigured(format!(
                    "cannot use topic {} on {}: the broker's ACLs do not allow this principal to \
                     describe it (README, Security: ACLs)",
                    kafka.topic, kafka.brokers
                ))
                .into());
            }
            return Ok(());
        }
        if start.elapsed() >= PROBE_DEADLINE {
            tracing::debug!("no broker answered the start-up probe; going on");
            return Ok(());
        }
    }
}

/// Why the first bootstrap broker's certificate fails verification, from a TLS handshake with
/// the CA librdkafka uses (`ssl.ca.location`, else the system's): a name mismatch when it
/// verifies without the name check, else OpenSSL's verdict on the chain. `None` when the
/// handshake cannot tell (no answer, or a CA given in a way this check does not read).
fn diagnose_certificate(kafka: &KafkaArgs) -> Option<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let overrides = kafka.overrides().ok()?;
    if overrides.shown("ssl.ca.pem").is_some()
        || overrides.shown("ssl.ca.certificate.stores").is_some()
    {
        return None;
    }
    let broker = kafka.brokers.split(',').next()?.trim();
    let broker = broker.rsplit_once("://").map_or(broker, |(_, b)| b);
    let (host, _) = broker.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let handshake = |check_name: bool| -> Result<(), String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        match overrides.shown("ssl.ca.location") {
            Some(path) => b.set_ca_file(path).map_err(|e| e.to_string())?,
            None => b.set_default_verify_paths().map_err(|e| e.to_string())?,
        }
        b.set_verify(SslVerifyMode::PEER);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(broker)
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let conf = b
            .build()
            .configure()
            .map_err(|e| e.to_string())?
            .verify_hostname(check_name);
        match conf.connect(host, tcp) {
            Ok(_) => Ok(()),
            Err(openssl::ssl::HandshakeError::Failure(m)) => {
                Err(m.ssl().verify_result().error_string().to_owned())
            }
            Err(e) => Err(e.to_string()),
        }
    };
    match (handshake(true), handshake(false)) {
        (Err(_), Ok(())) => Some(format!(
            "the broker's TLS certificate is not for the name {host} (hostname mismatch): \
             connect by a name or address the certificate lists, or have the certificate list \
             {host}"
        )),
        (Err(_), Err(why)) => Some(format!(
            "the broker's TLS certificate is not trusted ({why}): ssl.ca.location must name the \
             CA that signed the brokers' certificates"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_problems_are_told_apart_from_outages() {
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        let p = classify(
            &auth,
            "SASL authentication error: Authentication failed during authentication due to \
             invalid credentials with SASL mechanism SCRAM-SHA-512",
        )
        .unwrap();
        assert!(p.contains("refused the SASL login"), "{p}");
        let ssl = KafkaError::Global(RDKafkaErrorCode::SSL);
        let p = classify(&ssl, "SSL handshake failed: certificate verify failed").unwrap();
        assert!(p.contains("not trusted"), "{p}");
        let p = classify(&ssl, "certificate verify failed: hostname mismatch").unwrap();
        assert!(p.contains("hostname mismatch"), "{p}");
        let acl = KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(classify(&acl, "").unwrap().contains("ACLs"));
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::PartitionEOF,
        ] {
            assert_eq!(classify(&KafkaError::Global(code), "x"), None, "{code:?}");
        }
    }

    #[test]
    fn a_problem_is_logged_once_per_episode_and_current_while_it_lasts() {
        let mut w = Watch::default();
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        assert!(w.note(at(0), "wrong password".into()));
        for s in (5..=60).step_by(5) {
            assert!(!w.note(at(s), "wrong password".into()), "at {s}s");
        }
        assert_eq!(w.current(at(61)).as_deref(), Some("wrong password"));
        assert_eq!(w.current(at(60) + EPISODE_OVER_AFTER), None);
        // After a quiet gap, a new episode is logged again.
        assert!(w.note(at(60) + EPISODE_OVER_AFTER, "wrong password".into()));
    }

    #[test]
    fn exit_code_finds_the_refusal_in_the_chain() {
        let e = anyhow::Error::from(Misconfigured("bad".into())).context("starting");
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("broker down")), 1);
    }
}
