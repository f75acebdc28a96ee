//! Prometheus against Tally (`infra/prometheus/`): the alerting rules pass their `promtool`
//! unit tests, every alert has a test that makes it fire, the rules name only metrics the
//! binaries export, and the scrape configuration is valid. And a real Prometheus server
//! scraping a real pipeline on Kafka sees the lag alert fire through its HTTP API while the
//! aggregator is stopped, and resolve once the aggregator is back and has caught up.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package (scripts/test.sh installs
//! it); a missing one fails the test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_sums, read, yaml, Pipeline};
use serde_json::{json, Value};
use tally_testkit::client::{http, GroundTruth};
use tally_testkit::process::Proc;
use tally_testkit::{free_port, tool, wait_for, workspace_root};

const INSTALL: &str = "apt-get install -y prometheus";
const LAG_ALERT: &str = "TallyAggregatorLagHigh";

fn prom_dir() -> PathBuf {
    workspace_root().join("infra/prometheus")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool("promtool", INSTALL))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alerts of a rules file, by name, with their rule.
fn alerts(rules: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_owned(), rule.clone()));
            }
        }
    }
    out
}

#[test]
fn alert_rules_pass_their_unit_tests_and_the_config_is_valid() {
    let text = promtool(&["test", "rules", "alerts_test.yml"], &prom_dir());
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["check", "config", "prometheus.yml"], &prom_dir());
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_unit_test_that_makes_it_fire() {
    let rules = yaml(&prom_dir().join("alerts.yml"));
    let tests = yaml(&prom_dir().join("alerts_test.yml"));
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fired.insert(case["alertname"].as_str().expect("alertname").to_owned());
            }
        }
    }
    let names: Vec<String> = alerts(&rules).into_iter().map(|(n, _)| n).collect();
    assert!(names.len() >= 7, "{names:?}");
    let untested: Vec<&String> = names.iter().filter(|n| !fired.contains(*n)).collect();
    assert!(
        untested.is_empty(),
        "alerts never fired by a test: {untested:?}"
    );
}

#[test]
fn the_rules_name_only_metrics_the_binaries_export() {
    let rules = read(&prom_dir().join("alerts.yml"));
    let root = workspace_root();
    let sources = [
        "ingest/src/telemetry.rs",
        "aggregator/src/instruments.rs",
        "pipeline/src/durability.rs",
    ]
    .map(|f| read(&root.join(f)))
    .join("\n");
    let mut named = BTreeSet::new();
    let mut rest = rules.as_str();
    while let Some(i) = rest.find("tally_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        named.insert(name);
    }
    assert!(named.len() >= 8, "{named:?}");
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !sources.contains(&format!("\"{n}\"")))
        .collect();
    assert!(unknown.is_empty(), "metrics no binary exports: {unknown:?}");
}

/// The repository's configuration with the test's targets, scraped and evaluated every second,
/// and its rules with the lag alert's `for:` shortened to `lag_for` (the bound stays the real
/// one). Returns the path of the configuration.
fn generated_config(dir: &Path, ingest: &str, aggregator: &str, lag_for: &str) -> PathBuf {
    let mut rules = yaml(&prom_dir().join("alerts.yml"));
    let mut found = 0;
    for group in rules["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            if rule["alert"] == LAG_ALERT {
                rule["for"] = json!(lag_for);
                found += 1;
            }
        }
    }
    assert_eq!(found, 1, "alerts.yml has one {LAG_ALERT}");
    let rules_path = dir.join("alerts.yml");
    std::fs::write(&rules_path, serde_norway::to_string(&rules).unwrap()).unwrap();

    let mut config = yaml(&prom_dir().join("prometheus.yml"));
    config["global"]["scrape_interval"] = json!("1s");
    config["global"]["evaluation_interval"] = json!("1s");
    config["rule_files"] = json!([rules_path.display().to_string()]);
    let mut jobs = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
    {
        let name = job["job_name"].as_str().expect("job_name").to_owned();
        let target = match name.as_str() {
            "tally-ingest" => ingest,
            "tally-aggregator" => aggregator,
            other => panic!("unexpected job {other}"),
        };
        job["static_configs"] = json!([{ "targets": [target] }]);
        jobs.insert(name);
    }
    assert_eq!(
        jobs.len(),
        2,
        "prometheus.yml scrapes ingest and the aggregator"
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    path
}

fn api(client: &reqwest::blocking::Client, base: &str, path: &str) -> Option<Value> {
    let v: Value = client
        .get(format!("{base}{path}"))
        .send()
        .ok()?
        .json()
        .ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

/// The lag alert of `partition` as Prometheus lists it now (pending or firing), if any.
fn lag_alert(client: &reqwest::blocking::Client, base: &str, partition: i32) -> Option<Value> {
    let data = api(client, base, "/api/v1/alerts")?;
    data["alerts"]
        .as_array()?
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == LAG_ALERT
                && a["labels"]["partition"].as_str() == Some(partition.to_string().as_str())
        })
        .cloned()
}

fn lag_alerts(client: &reqwest::blocking::Client, base: &str) -> Option<usize> {
    let data = api(client, base, "/api/v1/alerts")?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == LAG_ALERT)
            .count(),
    )
}

/// Appends `n` increments of 1 to `key` in one NDJSON request; returns the partition.
fn append_batch(base: &str, key: &str, n: usize, truth: &mut GroundTruth) -> i32 {
    let body: String = (0..n)
        .map(|_| format!("{}\n", json!({"key": key, "value": 1})))
        .collect();
    let r = http()
        .post(format!("{base}/increments"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .expect("POST /increments");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["accepted"], n);
    let offsets = v["offsets"].as_object().unwrap();
    assert_eq!(offsets.len(), 1, "one key, one partition: {v}");
    let (p, o) = offsets.iter().next().unwrap();
    let (p, o) = (p.parse::<i32>().unwrap(), o.as_i64().unwrap());
    for _ in 0..n {
        truth.add(key, 1);
    }
    truth.landed(p, o);
    p
}

#[test]
fn lag_alert_fires_while_the_aggregator_is_stopped_and_resolves_after_a_restart() {
    let prometheus = tool("prometheus", INSTALL);
    let p = Pipeline::new(2);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&[]);
    let strip = |base: &str| base.trim_start_matches("http://").to_owned();

    let dir = p.dir.path().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = generated_config(&dir, &strip(&ingest.base), &strip(&agg.base), "3s");
    let port = free_port();
    let prom_base = format!("http://127.0.0.1:{port}");
    let _prom = Proc::start_program(
        &prometheus,
        "prometheus",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
        p.dir.path(),
    );
    let client = http();
    wait_for("Prometheus to be ready", Duration::from_secs(120), || {
        let r = client.get(format!("{prom_base}/-/ready")).send().ok()?;
        (r.status() == 200).then_some(())
    });
    wait_for("both targets up", Duration::from_secs(120), || {
        let data = api(&client, &prom_base, "/api/v1/targets")?;
        let t = data["activeTargets"].as_array()?;
        (t.len() == 2 && t.iter().all(|t| t["health"] == "up")).then_some(())
    });

    // A first write, folded and committed: both sides export the partition's offsets.
    let mut truth = GroundTruth::default();
    let hot = append_batch(&ingest.base, "hot", 5, &mut truth);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    let committed = truth.max_offsets[&hot] + 1;
    let query = format!(
        "/api/v1/query?query=max%20by%20(partition)(tally_partition_committed_offset{{partition=%22{hot}%22}})"
    );
    wait_for(
        "Prometheus to see the committed offset",
        Duration::from_secs(120),
        || {
            let data = api(&client, &prom_base, &query)?;
            let v = data["result"].as_array()?.first()?["value"][1].as_str()?;
            (v.parse::<f64>().ok()? == committed as f64).then_some(())
        },
    );
    assert_eq!(lag_alerts(&client, &prom_base), Some(0), "no lag yet");

    // The aggregator stops; 12,000 records arrive on the partition: above the bound of 10,000.
    let status = agg.proc.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    for _ in 0..2 {
        assert_eq!(append_batch(&ingest.base, "hot", 6000, &mut truth), hot);
    }
    let firing = wait_for("the lag alert to fire", Duration::from_secs(180), || {
        lag_alert(&client, &prom_base, hot).filter(|a| a["state"] == "firing")
    });
    let value: f64 = firing["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(value, 12000.0, "the lag is what arrived since: {firing}");

    // Back, caught up, and the alert is gone.
    agg.restart();
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(180));
    wait_for("the lag alert to resolve", Duration::from_secs(180), || {
        (lag_alerts(&client, &prom_base)? == 0).then_some(())
    });
    assert_sums(&agg.base, &truth);
}
