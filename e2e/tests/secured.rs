//! Tally on a secured broker (testkit's `secured`: SASL_SSL with SCRAM-SHA-512 logins, a CA
//! the test made, the StandardAuthorizer with least-privilege ACLs), configured the way an
//! operator would: `--kafka-config-file` with the principal's settings.
//!
//! - `misconfigured_access_ends_each_binary_fast_with_one_line`: one shared broker; a wrong
//!   password, an unknown CA, an address the certificate is not for, and a principal without
//!   ACLs each end ingest, the aggregator and the replayer within seconds with exit 2 and one
//!   line naming the cause; then, with the right settings, a revoked ACL while running turns
//!   `/readyz` to 503 with the reason, said once in the log; reads need the read token.
//! - `secured_pipeline_is_exact_through_broker_and_aggregator_kills`: load with ground truth
//!   through a broker kill and an aggregator kill (each restarted at once) on a single secured
//!   node; losses and doubles counted apart.
//!
//! Both grep every log their processes wrote for every password the broker knows.

#[allow(dead_code)]
mod browser;
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::members::{self, Acked};
use tally_testkit::client::http;
use tally_testkit::process::{bin, Proc};
use tally_testkit::secured::SecuredBroker;
use tally_testkit::{free_port, unique, wait_for};

/// How long a misconfigured binary may take to end: the probe's own deadline is 15 s, and a
/// refusal comes in the first second or two of it.
const FAIL_FAST: Duration = Duration::from_secs(15);

struct Setup {
    broker: SecuredBroker,
    topic: String,
    group: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(partitions: u32) -> Setup {
        let broker = SecuredBroker::start();
        let (topic, group) = (unique("secured"), unique("secured-group"));
        broker.create_topic(&topic, partitions);
        broker.grant_tally(&topic, &group);
        Setup {
            broker,
            topic,
            group,
            dir: tempfile::Builder::new()
                .prefix("tally-secured-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    /// `--brokers`, `--topic` and `--kafka-config-file` for `user`, connecting to `addr`.
    fn args(&self, addr: &str, file: &Path) -> Vec<String> {
        vec![
            "--brokers".into(),
            addr.into(),
            "--topic".into(),
            self.topic.clone(),
            "--kafka-config-file".into(),
            file.display().to_string(),
        ]
    }

    fn aggregator_args(&self, port: u16) -> Vec<String> {
        vec![
            "--group".into(),
            self.group.clone(),
            "--db".into(),
            self.dir.path().join("tally.db").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--session-timeout-ms".into(),
            "6000".into(),
        ]
    }

    /// Every process log in the test's directory, joined.
    fn logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    fn assert_no_password_in(&self, text: &str, what: &str) {
        for pw in self.broker.passwords() {
            assert!(!text.contains(pw), "a password appears in {what}");
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("test directory kept: {}", self.dir.path().display());
        }
    }
}

fn wait_healthy(base: &str, proc: &Proc) {
    let c = http();
    wait_for(
        &format!("{base} to be healthy"),
        Duration::from_secs(60),
        || {
            if !c
                .clone()
                .get(format!("{base}/healthz"))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                return None;
            }
            Some(())
        },
    );
    let _ = proc;
}

/// Runs `name ARGS` to its end (at most [`FAIL_FAST`] plus slack) and returns its output and
/// how long it took.
fn run_to_end(name: &str, args: &[String], log: &Path) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = start + FAIL_FAST + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{name} did not end within {:?}:\n{}{}",
                deadline - start,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    std::fs::write(log, text).unwrap();
    (out, took)
}

/// The error lines of a run's output (what an operator reads).
fn error_lines(out: &Output) -> Vec<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}

/// A misconfiguration: its name, the address to connect to, the client settings, and what the
/// line that ends each binary must say.
type Case = (&'static str, String, Vec<(String, String)>, &'static str);

#[test]
fn misconfigured_access_ends_each_binary_fast_with_one_line() {
    let s = Setup::new(2);
    let b = &s.broker;
    let good = |user: &str| b.client_settings(user);
    let with = |user: &str, key: &str, value: String| {
        let mut v = good(user);
        for (k, val) in v.iter_mut() {
            if k == key {
                *val = value.clone();
            }
        }
        v
    };
    // Each case: a name, the address to connect to, the settings, and what the line must say.
    let cases: Vec<Case> = vec![
        (
            "wrong-password",
            b.addr(),
            with("ingest", "sasl.password", "not-the-password".into()),
            "refused the SASL login",
        ),
        (
            "unknown-ca",
            b.addr(),
            with(
                "ingest",
                "ssl.ca.location",
                b.other_ca_pem().display().to_string(),
            ),
            "certificate is not trusted",
        ),
        (
            "hostname-mismatch",
            b.mismatched_addr(),
            good("ingest"),
            "(hostname mismatch)",
        ),
        ("missing-acl", b.addr(), good("nobody"), "ACLs"),
    ];
    let mut handles = Vec::new();
    for (case, addr, settings, want) in cases {
        for name in ["ingest", "aggregator", "replayer"] {
            let file = b.properties_file(&format!("{case}-{name}.properties"), &settings);
            let mut args = s.args(&addr, &file);
            match name {
                "ingest" => args.extend(["--listen".into(), format!("127.0.0.1:{}", free_port())]),
                "aggregator" => args.extend(s.aggregator_args(free_port())),
                _ => args.extend([
                    "rebuild".into(),
                    "--db".into(),
                    s.dir
                        .path()
                        .join(format!("{case}.db"))
                        .display()
                        .to_string(),
                ]),
            }
            let log = s.dir.path().join(format!("{case}-{name}.log"));
            handles.push(std::thread::spawn(move || {
                let (out, took) = run_to_end(name, &args, &log);
                (case, name, want, out, took)
            }));
        }
    }
    let mut report = Vec::new();
    for h in handles {
        let (case, name, want, out, took) = h.join().unwrap();
        let lines = error_lines(&out);
        eprintln!(
            "{case} / {name}: {:?} after {took:.1?}: {lines:?}",
            out.status.code()
        );
        report.push((case, name, out.status.code(), took, lines, want));
    }
    for (case, name, code, took, lines, want) in &report {
        assert_eq!(*code, Some(2), "{case}/{name}: exit code; lines {lines:?}");
        assert!(*took < FAIL_FAST, "{case}/{name}: took {took:?}");
        let last = lines.last().cloned().unwrap_or_default();
        assert!(
            last.contains(want),
            "{case}/{name}: the last line does not say {want:?}: {lines:?}"
        );
    }
    s.assert_no_password_in(&s.logs(), "the misconfigured runs' output");

    running_processes_report_a_revoked_acl_and_reads_need_the_token(&s);
    s.assert_no_password_in(&s.logs(), "the process logs");
}

/// Part two on the same broker: ingest and an aggregator with the right settings (the
/// aggregator's through `TALLY_KAFKA_CONFIG`, ingest's through `--kafka-config-file`), reads
/// with and without the read token, then ACLs revoked while both run.
fn running_processes_report_a_revoked_acl_and_reads_need_the_token(s: &Setup) {
    let b = &s.broker;
    let token = format!("rt{:024x}", rand::random::<u128>());
    let mut ingest_args = s.args(&b.addr(), &b.client_file("ingest"));
    let ingest_port = free_port();
    ingest_args.extend(["--listen".into(), format!("127.0.0.1:{ingest_port}")]);
    let ingest = Proc::start("ingest", &ingest_args, &[], s.dir.path());
    let ingest_base = format!("http://127.0.0.1:{ingest_port}");
    let agg_port = free_port();
    let mut agg_args = vec![
        "--brokers".into(),
        b.addr(),
        "--topic".into(),
        s.topic.clone(),
    ];
    agg_args.extend(s.aggregator_args(agg_port));
    let env: String = b
        .client_settings("aggregator")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let agg = Proc::start(
        "aggregator",
        &agg_args,
        &[
            ("TALLY_KAFKA_CONFIG", env),
            ("TALLY_READ_TOKEN", token.clone()),
        ],
        s.dir.path(),
    );
    let agg_base = format!("http://127.0.0.1:{agg_port}");
    wait_healthy(&ingest_base, &ingest);
    wait_healthy(&agg_base, &agg);
    let c = http();
    for i in 0..20 {
        let r = c
            .post(format!("{ingest_base}/increment"))
            .form(&[("key", format!("k{}", i % 4)), ("value", "1".into())])
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
    // Reads: 401 without or with a wrong token (JSON, WWW-Authenticate), 200 with it.
    let read = |path: &str, auth: Option<&str>| {
        let mut r = c.get(format!("{agg_base}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().unwrap()
    };
    let bearer = format!("Bearer {token}");
    let sum = wait_for(
        "k0's sum through the token",
        Duration::from_secs(60),
        || {
            let r = read("/sums/k0", Some(&bearer));
            (r.status() == 200)
                .then(|| r.json::<serde_json::Value>().unwrap()["sum"].as_i64())?
                .filter(|s| *s == 5)
        },
    );
    assert_eq!(sum, 5);
    for path in [
        "/sums/k0",
        "/sums?prefix=k",
        "/offsets",
        "/top",
        "/rejected",
    ] {
        for auth in [None, Some("Bearer wrong")] {
            let r = read(path, auth);
            assert_eq!(r.status(), 401, "{path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{path}: {v}");
        }
        assert_eq!(read(path, Some(&bearer)).status(), 200, "{path}");
    }
    for path in ["/healthz", "/metrics", "/", "/status.js"] {
        assert_eq!(read(path, None).status(), 200, "{path} stays open");
    }
    wait_for(
        "the aggregator to be ready",
        Duration::from_secs(60),
        || (read("/readyz", None).status() == 200).then_some(()),
    );
    status_page_asks_for_the_token_once(&agg_base, &token);
    let metrics = read("/metrics", None).text().unwrap();
    assert!(
        !metrics.contains(&token),
        "the read token appears in /metrics"
    );
    s.assert_no_password_in(&metrics, "/metrics");

    // Revoke the aggregator's READ on the topic and ingest's WRITE: both say so on /readyz.
    b.admin(&format!(
        "revoke User:aggregator TOPIC {t} READ\nrevoke User:ingest TOPIC {t} WRITE\n",
        t = s.topic
    ));
    let _ = c
        .post(format!("{ingest_base}/increment"))
        .form(&[("key", "after"), ("value", "1")])
        .send();
    for (base, name) in [(&agg_base, "aggregator"), (&ingest_base, "ingest")] {
        let v = wait_for(
            &format!("{name}'s /readyz to say the ACL refused it"),
            Duration::from_secs(60),
            || {
                if name == "ingest" {
                    // Only a write meets ingest's missing WRITE.
                    let _ = c
                        .post(format!("{ingest_base}/increment"))
                        .form(&[("key", "after"), ("value", "1")])
                        .send();
                }
                let r = c.get(format!("{base}/readyz")).send().ok()?;
                if r.status() != 503 {
                    return None;
                }
                let v: serde_json::Value = r.json().ok()?;
                (v["error"]["code"] == "kafka_access_refused").then_some(v)
            },
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("ACLs"), "{name}: {message}");
        eprintln!("{name} /readyz: {message}");
    }
    // Said once each, while requests and fetches keep meeting the refusal.
    std::thread::sleep(Duration::from_secs(5));
    for (p, name) in [(&agg, "aggregator"), (&ingest, "ingest")] {
        let log = p.log_text();
        let said = log.matches("kafka access refused").count();
        assert_eq!(said, 1, "{name} should say the refusal once:\n{log}");
    }
}

/// Waits until `acked` holds at least `n` acknowledged requests.
fn wait_acked(acked: &Arc<Mutex<Acked>>, n: u64, what: &str) {
    wait_for(what, Duration::from_secs(300), || {
        (acked.lock().unwrap().truth.acknowledged >= n).then_some(())
    });
}

#[test]
fn secured_pipeline_is_exact_through_broker_and_aggregator_kills() {
    // A single secured node: the kill takes the whole cluster away and brings it back on the
    // same data, which is what the secured path (TLS handshakes, SCRAM logins, ACL checks on
    // every reconnect) has to survive; replication itself is covered by the cluster tests.
    let mut s = Setup::new(4);
    let b = &s.broker;
    let ingest_port = free_port();
    let mut ingest_args = s.args(&b.addr(), &b.client_file("ingest"));
    ingest_args.extend(["--listen".into(), format!("127.0.0.1:{ingest_port}")]);
    let ingest = Proc::start("ingest", &ingest_args, &[], s.dir.path());
    let ingest_base = format!("http://127.0.0.1:{ingest_port}");
    let agg_port = free_port();
    let mut agg_args = s.args(&b.addr(), &b.client_file("aggregator"));
    agg_args.extend(s.aggregator_args(agg_port));
    let mut agg = Proc::start("aggregator", &agg_args, &[], s.dir.path());
    let agg_base = format!("http://127.0.0.1:{agg_port}");
    wait_healthy(&ingest_base, &ingest);
    wait_healthy(&agg_base, &agg);

    let acked = Arc::new(Mutex::new(Acked::default()));
    let load = members::start_load(&ingest_base, &acked, "secured");
    wait_acked(
        &acked,
        300,
        "300 acknowledged increments before the broker kill",
    );
    let before = acked.lock().unwrap().truth.acknowledged;
    s.broker.kill();
    s.broker.restart();
    wait_acked(&acked, before + 300, "300 more after the broker restart");
    let before = acked.lock().unwrap().truth.acknowledged;
    agg.kill();
    agg.restart();
    wait_healthy(&agg_base, &agg);
    wait_acked(
        &acked,
        before + 300,
        "300 more after the aggregator restart",
    );
    load.finish();
    let acked = acked.lock().unwrap().clone();

    let c = http();
    wait_for(
        "the aggregator to catch up",
        Duration::from_secs(120),
        || {
            tally_testkit::client::offsets(&c, &agg_base)
                .filter(|o| tally_testkit::client::caught_up(o, &acked.truth))
        },
    );
    let reads = members::check(&agg_base, &acked);
    eprintln!(
        "secured kills: {} acknowledged requests, {} keys, lost {}, doubled {}",
        acked.truth.acknowledged,
        acked.truth.sums.len(),
        reads.lost,
        reads.doubled
    );
    assert_eq!(reads.lost, 0, "acknowledged increments lost");
    assert_eq!(reads.doubled, 0, "increments counted twice");

    // The replayer, as its own principal, verifies the live database against the log.
    let mut args = s.args(&s.broker.addr(), &s.broker.client_file("replayer"));
    args.extend([
        "verify".into(),
        "--db".into(),
        s.dir.path().join("tally.db").display().to_string(),
    ]);
    let (out, _) = run_to_end("replayer", &args, &s.dir.path().join("replayer-verify.log"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "replayer verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop((ingest, agg));
    let logs = s.logs();
    s.assert_no_password_in(&logs, "the process logs");
    // Every principal had what it needs: no refusal may have been reported (a reader's unused
    // group id, say, must not need ACLs of its own).
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("kafka access refused") || l.contains("AuthorizationFailed"))
        .collect();
    assert!(
        refused.is_empty(),
        "refusals with the right ACLs:\n{}",
        refused.join("\n")
    );
}

/// The status page under a read token: it shows the token form (its reads answered 401), and
/// once the token is entered it renders the partitions with no error, sending the token from
/// `sessionStorage` with every read (a reload keeps working without asking again).
fn status_page_asks_for_the_token_once(base: &str, token: &str) {
    const STATE: &str = r##"(() => {
      if (document.readyState !== "complete" || !document.getElementById("token-form")) return null;
      const error = document.getElementById("error");
      return {
        form: !document.getElementById("token-form").hidden,
        error: error.hidden ? null : error.innerText,
        partitions: document.querySelectorAll("#partitions tbody tr").length,
        stored: sessionStorage.getItem("tally-read-token") !== null,
      };
    })()"##;
    let mut page = browser::Browser::open(&format!("{base}/"), 1024, 800);
    let asked = wait_for(
        "the page to ask for the token",
        Duration::from_secs(30),
        || {
            let v = page.eval(STATE);
            (v["form"] == true).then_some(v)
        },
    );
    assert!(
        asked["error"].as_str().unwrap_or("").contains("read token"),
        "{asked}"
    );
    page.eval(&format!(
        r#"(() => {{ document.getElementById("token").value = {token:?};
            document.getElementById("token-form").requestSubmit(); return true; }})()"#
    ));
    let shown = wait_for(
        "the page to render with the token",
        Duration::from_secs(30),
        || {
            let v = page.eval(STATE);
            (v["form"] == false && v["error"].is_null() && v["partitions"].as_u64()? > 0)
                .then_some(v)
        },
    );
    assert_eq!(shown["stored"], true, "{shown}");
    page.eval("(() => { location.reload(); return true; })()");
    std::thread::sleep(Duration::from_millis(500));
    wait_for(
        "the reloaded page to render without asking",
        Duration::from_secs(30),
        || {
            let v = page.eval(STATE);
            (v["form"] == false && v["error"].is_null() && v["partitions"].as_u64()? > 0)
                .then_some(())
        },
    );
}
