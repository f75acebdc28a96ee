//! The benchmark suite: every stage measured against its own limit in the same run, on the
//! same broker, with exactness checked against the ground truth after each stage that counts.
//!
//! - P1 `POST /increment` req/s over `GET /healthz` req/s (same ingest, same concurrency), at
//!   256 connections and also at 32 and 1,024; the two alternate (healthz, form, form,
//!   healthz, half a stage each) after both were warmed up, so neither runs on a colder
//!   process or a quieter machine. At 256 also: acknowledged increments/s and p99 latency.
//! - P2 NDJSON batch increments/s over raw rdkafka produce rate (idempotent, acks=all).
//! - P3 aggregator fold-and-commit rate over a raw consumer-group read of the same records.
//! - P4 `replayer rebuild` rate over a raw read (assign, to EOF) of the same records.
//! - P5 p99 ack-to-visible freshness at half of the P1 rate, read through two aggregators of
//!   one group: every other read is served by the one that does not own the partition.
//! - P6 aggregator peak RSS after folding a large log over many keys, sampled as it grows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use tally_pipeline::kafka::{partitions_of, KafkaArgs};
use tally_pipeline::record::encode_value;
use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::broker::{kafka_version, Broker, KafkaOptions};
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique};

use crate::loadgen::{self, Format, Report, Truth};

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seconds per HTTP load stage.
    pub stage_s: f64,
    /// Connections for every HTTP stage but P1.
    pub concurrency: usize,
    /// Connections P1 is measured at, and the one its targets apply to.
    pub p1_concurrencies: Vec<usize>,
    pub p1_at: usize,
    pub keys: usize,
    pub ndjson_batch: usize,
    pub partitions: i32,
    /// Records for the P6 memory stage, and their distinct keys.
    pub p6_records: u64,
    pub p6_keys: u64,
    /// Binaries' build profile directory (`debug` or `release`).
    pub profile: String,
    /// The broker fsyncs every record before acknowledging it (`log.flush.interval.messages=1`,
    /// as Redpanda does by default); otherwise Kafka's default, acknowledging from the page
    /// cache once every in-sync replica has the record.
    pub broker_fsync: bool,
    pub work_dir: PathBuf,
}

impl Config {
    /// A few seconds per stage: checks that everything runs and is exact, not speed.
    pub fn smoke(work_dir: &Path) -> Config {
        Config {
            stage_s: 2.0,
            concurrency: 8,
            p1_concurrencies: vec![8],
            p1_at: 8,
            keys: 200,
            ndjson_batch: 100,
            partitions: 4,
            p6_records: 20_000,
            p6_keys: 2_000,
            profile: std::env::var("TALLY_PROFILE").unwrap_or_else(|_| "debug".into()),
            broker_fsync: false,
            work_dir: work_dir.to_path_buf(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub what: String,
    pub numerator: f64,
    pub denominator: f64,
    pub unit: &'static str,
    pub value: f64,
    pub target: &'static str,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Results {
    pub ratios: Vec<Ratio>,
    /// Exactness checks, each `(stage, ok, detail)`.
    pub exactness: Vec<(String, bool, String)>,
    pub notes: Vec<String>,
    pub raw: BTreeMap<String, serde_json::Value>,
}

impl Results {
    pub fn exact(&self) -> bool {
        !self.exactness.is_empty() && self.exactness.iter().all(|(_, ok, _)| *ok)
    }

    fn check(&mut self, stage: &str, diff: Vec<String>, keys: usize) {
        let ok = diff.is_empty();
        let detail = if ok {
            format!("{keys} keys equal the ground truth")
        } else {
            format!(
                "{} of {keys} keys differ: {}",
                diff.len(),
                diff.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            )
        };
        self.exactness.push((stage.to_owned(), ok, detail));
    }
}

struct Services {
    broker: Broker,
    topic: String,
    cfg: Config,
}

impl Services {
    fn kafka(&self, topic: &str) -> KafkaArgs {
        KafkaArgs::new(&self.broker.addr(), topic, self.cfg.partitions)
    }

    fn common(&self, topic: &str) -> Vec<String> {
        vec![
            "--brokers".into(),
            self.broker.addr(),
            "--topic".into(),
            topic.into(),
            "--partitions".into(),
            self.cfg.partitions.to_string(),
        ]
    }

    fn start(&self, bin: &str, topic: &str, extra: &[String]) -> (Proc, String) {
        let port = free_port();
        let mut args = self.common(topic);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().cloned());
        let envs = [("RUST_LOG", "warn".to_string())];
        let p = Proc::start(bin, &args, &envs, &self.cfg.work_dir);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base);
        (p, base)
    }

    fn aggregator(&self, topic: &str, db: &Path, group: &str) -> (Proc, String) {
        self.start(
            "aggregator",
            topic,
            &[
                "--group".into(),
                group.into(),
                "--db".into(),
                db.display().to_string(),
                // Long enough that a machine busy with other work does not cost the single
                // member its session mid-stage.
                "--session-timeout-ms".into(),
                "20000".into(),
            ],
        )
    }
}

fn wait_healthy(base: &str) {
    let c = reqwest::blocking::Client::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if c.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{base} did not become healthy");
}

/// Runs every stage; never panics on a slow stage, only on a broken environment.
pub fn run(cfg: Config) -> anyhow::Result<Results> {
    std::env::set_var("TALLY_PROFILE", &cfg.profile);
    std::fs::create_dir_all(&cfg.work_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let svc = Services {
        broker: Broker::start_with(KafkaOptions {
            heap_mb: 1024,
            flush_every_message: cfg.broker_fsync,
            ..KafkaOptions::default()
        }),
        topic: unique("bench"),
        cfg: cfg.clone(),
    };
    let mut res = Results::default();
    let (mut ingest, ingest_url) = svc.start("ingest", &svc.topic, &[]);
    let mut truth = Truth::default();

    // Warm-up, not measured: a JVM broker just started answers its first seconds of produce
    // requests far slower (class loading, JIT), and P1's numerator would otherwise run on a
    // colder broker than P1b's baseline. The increments count (they are acknowledged).
    let warm = Config {
        stage_s: cfg.stage_s.min(4.0),
        concurrency: cfg.p1_at,
        ..cfg.clone()
    };
    let (_, warm_truth) = rt.block_on(load_truth(&ingest_url, Format::Form, &warm, None, None))?;
    truth.merge(warm_truth);
    rt.block_on(raw_single_produce(
        &svc.kafka(&unique("bench-warm")),
        warm.concurrency,
        warm.stage_s,
    ))?;

    // The health endpoint is warmed up as well: its baseline must not run colder than P1.
    rt.block_on(load(&ingest_url, Format::Healthz, &warm, None, None))?;

    // P1: single durable increments vs the health endpoint of the same process, at each
    // concurrency, alternating healthz, form, form, healthz (half a stage each).
    let mut p1_form_rate = None;
    for &c in &cfg.p1_concurrencies {
        let half = Config {
            concurrency: c,
            stage_s: cfg.stage_s / 2.0,
            ..cfg.clone()
        };
        let h1 = rt.block_on(load_full(&ingest_url, Format::Healthz, &half))?;
        let f1 = rt.block_on(load_full(&ingest_url, Format::Form, &half))?;
        let f2 = rt.block_on(load_full(&ingest_url, Format::Form, &half))?;
        let h2 = rt.block_on(load_full(&ingest_url, Format::Healthz, &half))?;
        let (health, _) = loadgen::combine(vec![h1, h2])?;
        let (form, form_truth) = loadgen::combine(vec![f1, f2])?;
        truth.merge(form_truth);
        res.raw
            .insert(format!("p1_healthz_c{c}"), serde_json::to_value(&health)?);
        res.raw
            .insert(format!("p1_form_c{c}"), serde_json::to_value(&form)?);
        let headline = c == cfg.p1_at;
        let name = if headline {
            "P1".to_owned()
        } else {
            format!("P1@{c}")
        };
        res.ratios.push(ratio(
            &name,
            &format!("POST /increment req/s / GET /healthz req/s, {c} connections"),
            form.requests_per_s,
            health.requests_per_s,
            "req/s",
            if headline { ">= 0.5" } else { "info" },
            |v| !headline || v >= 0.5,
        ));
        failures_note(&mut res, &name, &form);
        if headline {
            p1_form_rate = Some(form.requests_per_s);
            res.ratios.push(ratio(
                "P1c",
                &format!("acknowledged single increments/s, {c} connections"),
                form.increments_per_s,
                1.0,
                "increments/s",
                ">= 40000",
                |v| v >= 40_000.0,
            ));
            res.ratios.push(ratio(
                "P1d",
                &format!("p99 ms of POST /increment, {c} connections"),
                form.latency_ms.p99,
                1.0,
                "ms",
                "<= 25 ms",
                |v| v <= 25.0,
            ));
        }
    }
    let p1_rate = p1_form_rate.context("p1_at is not among p1_concurrencies")?;
    // What the broker allows for one acknowledged record at a time per client, at the same
    // concurrency: the ceiling for single-increment requests whatever ingest does.
    let single_topic = unique("bench-single");
    let single = rt.block_on(raw_single_produce(
        &svc.kafka(&single_topic),
        cfg.p1_at,
        cfg.stage_s,
    ))?;
    res.raw
        .insert("p1_raw_single_produce_per_s".into(), single.into());
    res.ratios.push(ratio("P1b", &format!("POST /increment req/s / raw single-record acked produce records/s ({} connections; the broker's ceiling for P1)", cfg.p1_at), p1_rate, single, "req/s", "info", |_| true));

    // P2: NDJSON batches vs the raw producer on the same broker, same record sizes.
    let (nd, nd_truth) = rt.block_on(load_truth(&ingest_url, Format::Ndjson, &cfg, None, None))?;
    truth.merge(nd_truth);
    res.raw
        .insert("p2_ndjson".into(), serde_json::to_value(&nd)?);
    let raw_topic = unique("bench-raw");
    let raw_n = nd.increments.max(10_000);
    let raw_rate = rt.block_on(raw_produce(
        &svc.kafka(&raw_topic),
        raw_n,
        cfg.keys as u64,
        None,
    ))?;
    res.raw
        .insert("p2_raw_produce_per_s".into(), raw_rate.into());
    res.ratios.push(ratio(
        "P2",
        "NDJSON increments/s / raw rdkafka produce records/s",
        nd.increments_per_s,
        raw_rate,
        "records/s",
        ">= 0.9",
        |v| v >= 0.9,
    ));
    failures_note(&mut res, "P2", &nd);

    // P3: aggregator vs raw group read of the same records.
    let records = truth.max_offsets.values().map(|o| o + 1).sum::<i64>() as u64;
    let raw_group = raw_consume(&svc.kafka(&svc.topic), true)?;
    let db = cfg.work_dir.join(format!("{}.db", unique("p3")));
    let group = unique("bench");
    let (mut agg, agg_url) = svc.aggregator(&svc.topic, &db, &group);
    let agg_rate = fold_rate(&agg_url, &raw_group.ends)?;
    res.raw.insert("p3_records".into(), records.into());
    res.raw
        .insert("p3_raw_group_read_per_s".into(), raw_group.rate.into());
    res.raw
        .insert("p3_aggregator_per_s".into(), agg_rate.into());
    res.ratios.push(ratio(
        "P3",
        "aggregator fold+commit records/s / raw group read records/s",
        agg_rate,
        raw_group.rate,
        "records/s",
        ">= 0.9",
        |v| v >= 0.9,
    ));
    let diff = diff_store(&db, &svc.topic, &truth)?;
    res.check("P3 aggregator", diff, truth.sums.len());

    // P4: replayer rebuild vs a raw read with assign to EOF.
    let raw_assign = raw_consume(&svc.kafka(&svc.topic), false)?;
    let rebuilt = cfg.work_dir.join(format!("{}.db", unique("p4")));
    let t = Instant::now();
    let out = std::process::Command::new(tally_testkit::process::bin("replayer"))
        .args(svc.common(&svc.topic))
        .args(["rebuild", "--db", rebuilt.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "warn")
        .output()?;
    let rebuild_s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "replayer rebuild failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rebuild_rate = raw_assign.records as f64 / rebuild_s;
    res.raw
        .insert("p4_raw_assign_read_per_s".into(), raw_assign.rate.into());
    res.raw
        .insert("p4_rebuild_per_s".into(), rebuild_rate.into());
    res.ratios.push(ratio(
        "P4",
        "replayer rebuild records/s / raw assign read records/s",
        rebuild_rate,
        raw_assign.rate,
        "records/s",
        ">= 0.9",
        |v| v >= 0.9,
    ));
    let diff = diff_store(&rebuilt, &svc.topic, &truth)?;
    res.check("P4 rebuild", diff, truth.sums.len());

    // P5: freshness at half the P1 rate, through two aggregators of one group sharing the
    // database, so that half the reads are served by a process that does not own the partition.
    let (mut agg2, agg2_url) = svc.aggregator(&svc.topic, &db, &group);
    let readers = if split_ownership(&[&agg_url, &agg2_url], cfg.partitions) {
        format!("{agg_url},{agg2_url}")
    } else {
        res.notes.push("P5: the two aggregators did not split the partitions within 60 s; every read went to the first one".into());
        agg_url.clone()
    };
    if supports_min_offset(&agg_url) {
        let rate = (p1_rate / 2.0).max(1.0);
        // Each client waits for its increment to be visible before the next one, so the
        // stage needs enough of them to reach the rate even at the 250 ms target latency.
        let p5_cfg = Config {
            concurrency: ((rate * 0.25).ceil() as usize).clamp(cfg.concurrency, 1024),
            ..cfg.clone()
        };
        let (fr, fr_truth) = rt.block_on(load_truth(
            &ingest_url,
            Format::Form,
            &p5_cfg,
            Some(rate),
            Some(&readers),
        ))?;
        res.notes.push(format!(
            "P5 load: {:.0} req/s asked (half of P1), {:.0} req/s reached, {} clients",
            rate, fr.requests_per_s, p5_cfg.concurrency
        ));
        truth.merge(fr_truth);
        let p99 = fr.freshness_ms.map(|f| f.p99).unwrap_or(f64::NAN);
        res.raw
            .insert("p5_freshness".into(), serde_json::to_value(&fr)?);
        if let Some(f) = fr.freshness_foreign_ms {
            res.notes.push(format!(
                "P5 reads served by the aggregator not owning the partition: p50 {:.1} ms, p99 {:.1} ms",
                f.p50, f.p99
            ));
        }
        res.ratios.push(ratio(
            "P5",
            "p99 ms from ingest 200 to visible via /sums?min_offset=, at half the P1 rate, half the reads through the aggregator not owning the partition",
            p99,
            1.0,
            "ms",
            "<= 250 ms",
            |v| v <= 250.0,
        ));
        // The broker's own floor for the same path: a raw acknowledged produce seen by a raw
        // consumer with the aggregator's fetch settings, at the rate P5 ran at.
        let floor_topic = unique("bench-floor");
        let floor = raw_produce_to_fetch(
            &rt,
            &svc.kafka(&floor_topic),
            fr.requests_per_s.max(1.0),
            cfg.stage_s,
        )?;
        res.raw.insert(
            "p5_raw_produce_to_fetch_ms".into(),
            serde_json::to_value(floor)?,
        );
        res.ratios.push(ratio(
            "P5b",
            "P5 p99 ms / raw acked produce -> raw fetch p99 ms (same rate and fetch wait; the broker's floor for P5)",
            p99,
            floor.p99,
            "ratio",
            "info",
            |_| true,
        ));
        fold_rate(&agg_url, &truth_ends(&truth))?;
        let diff = diff_store(&db, &svc.topic, &truth)?;
        res.check("P5 aggregator", diff, truth.sums.len());
    } else {
        res.notes.push("P5 not measured: this aggregator does not support /sums/{key}?min_offset= (read-your-writes)".into());
    }
    agg2.terminate(Duration::from_secs(30));
    agg.terminate(Duration::from_secs(30));
    ingest.terminate(Duration::from_secs(30));

    // P6: memory after folding a large log over many keys.
    let mem_topic = unique("bench-mem");
    let mem_kafka = svc.kafka(&mem_topic);
    let mem_truth = rt.block_on(raw_produce_truth(&mem_kafka, cfg.p6_records, cfg.p6_keys))?;
    let mem_db = cfg.work_dir.join(format!("{}.db", unique("p6")));
    let (mut agg, agg_url) = svc.aggregator(&mem_topic, &mem_db, &unique("bench"));
    let samples = fold_sampling_rss(&agg_url, agg.pid(), &truth_ends(&mem_truth))?;
    let peak_mb = samples.last().map(|s| s.1).unwrap_or(0.0);
    res.raw.insert("p6_records".into(), cfg.p6_records.into());
    res.raw.insert("p6_keys".into(), cfg.p6_keys.into());
    res.raw.insert(
        "p6_rss_samples_records_mb".into(),
        serde_json::to_value(&samples)?,
    );
    res.ratios.push(ratio(
        "P6",
        "aggregator peak RSS (VmHWM) after folding the P6 log",
        peak_mb,
        1.0,
        "MB",
        "<= 64 MB",
        |v| v <= 64.0,
    ));
    agg.terminate(Duration::from_secs(30));
    let diff = diff_store(&mem_db, &mem_topic, &mem_truth)?;
    res.check("P6 aggregator", diff, mem_truth.sums.len());
    Ok(res)
}

fn truth_ends(t: &Truth) -> BTreeMap<i32, i64> {
    t.max_offsets.iter().map(|(p, o)| (*p, o + 1)).collect()
}

fn failures_note(res: &mut Results, stage: &str, r: &Report) {
    if !r.failures.is_empty() {
        res.notes
            .push(format!("{stage}: non-200 answers {:?}", r.failures));
    }
}

fn ratio(
    name: &str,
    what: &str,
    numerator: f64,
    denominator: f64,
    unit: &'static str,
    target: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Ratio {
    let value = numerator / denominator;
    Ratio {
        name: name.to_owned(),
        what: what.to_owned(),
        numerator,
        denominator,
        unit,
        value,
        target,
        met: ok(value),
    }
}

fn args(
    url: &str,
    format: Format,
    cfg: &Config,
    rate: Option<f64>,
    fresh: Option<&str>,
) -> loadgen::Args {
    loadgen::Args {
        url: url.into(),
        format,
        batch: cfg.ndjson_batch,
        concurrency: cfg.concurrency,
        keys: cfg.keys,
        min_value: -1000,
        max_value: 1000,
        duration_s: cfg.stage_s,
        rate,
        truth: None,
        freshness: fresh.map(str::to_owned),
        seed: 42,
    }
}

async fn load(
    url: &str,
    format: Format,
    cfg: &Config,
    rate: Option<f64>,
    fresh: Option<&str>,
) -> anyhow::Result<Report> {
    loadgen::run(&args(url, format, cfg, rate, fresh))
        .await
        .map(|(r, _)| r)
}

async fn load_full(url: &str, format: Format, cfg: &Config) -> anyhow::Result<loadgen::Run> {
    loadgen::run_full(&args(url, format, cfg, None, None)).await
}

async fn load_truth(
    url: &str,
    format: Format,
    cfg: &Config,
    rate: Option<f64>,
    fresh: Option<&str>,
) -> anyhow::Result<(Report, Truth)> {
    loadgen::run(&args(url, format, cfg, rate, fresh)).await
}

fn record_key(i: u64, keys: u64) -> String {
    format!("key-{}", i % keys)
}

/// Produces `n` records as fast as the broker acknowledges them; returns records/s.
async fn raw_produce(
    kafka: &KafkaArgs,
    n: u64,
    keys: u64,
    mut truth: Option<&mut Truth>,
) -> anyhow::Result<f64> {
    kafka.ensure_topic().await?;
    // No message timeout: a backlog of a million queued records can take longer than any fixed
    // timeout to drain on a loaded machine.
    let producer: FutureProducer = kafka
        .producer(Duration::ZERO)
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n as usize);
    let value = encode_value(1);
    for i in 0..n {
        let key = record_key(i.wrapping_mul(2_654_435_761), keys);
        let delivery =
            crate::produce::send(&producer, &kafka.topic, key.as_bytes(), &value).await?;
        pending.push((key, delivery));
    }
    for (key, d) in pending {
        let d = d
            .await?
            .map_err(|(e, _)| anyhow::anyhow!("raw produce not acknowledged: {e}"))?;
        if let Some(t) = truth.as_deref_mut() {
            *t.sums.entry(key).or_insert(0) += 1;
            t.acknowledged += 1;
            let m = t.max_offsets.entry(d.partition).or_insert(d.offset);
            *m = (*m).max(d.offset);
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `concurrency` clients each producing one record and waiting for its acknowledgement before
/// the next, for `secs`; returns acknowledged records/s.
async fn raw_single_produce(
    kafka: &KafkaArgs,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    kafka.ensure_topic().await?;
    let producer: FutureProducer = kafka.producer(Duration::from_secs(30)).create()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (producer, topic) = (producer.clone(), kafka.topic.clone());
        tasks.push(tokio::spawn(async move {
            let value = encode_value(1);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("key-{}", (c as u64 * 7919 + n) % 1000);
                let r = producer
                    .send(
                        FutureRecord::to(&topic).key(key.as_bytes()).payload(&value),
                        Duration::from_secs(5),
                    )
                    .await;
                if r.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The aggregator's default `fetch.wait.max.ms`, for the P5 floor's raw consumer.
const FETCH_WAIT_MAX_MS: &str = "10";

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Millis {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    samples: u64,
}

/// Produces single records at `rate` per second for `secs`, each awaited for its acks=all
/// acknowledgement, while a raw consumer (assigned to every partition's end, the aggregator's
/// fetch wait) reads them: the time from each acknowledgement to the record's arrival at the
/// consumer, i.e. the broker's own ack-to-fetch latency, without any folding or commit.
fn raw_produce_to_fetch(
    rt: &tokio::runtime::Runtime,
    kafka: &KafkaArgs,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Millis> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    rt.block_on(kafka.ensure_topic())?;
    let consumer: BaseConsumer = kafka
        .reader()
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("enable.partition.eof", "false")
        .create()?;
    let parts = partitions_of(&consumer, &kafka.topic, Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(&kafka.topic, *p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    // Let the consumer resolve its start offsets before anything is produced.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        consumer.poll(Duration::from_millis(50));
    }
    let acked: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let at = Instant::now();
                    seen.lock().unwrap().insert((m.partition(), m.offset()), at);
                }
            }
        })
    };
    let producer: FutureProducer = kafka.producer(Duration::from_secs(30)).create()?;
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (producer, topic, acked) = (producer.clone(), kafka.topic.clone(), acked.clone());
            let key = format!("key-{}", n % 1000);
            tasks.push(tokio::spawn(async move {
                let r = producer
                    .send(
                        FutureRecord::to(&topic)
                            .key(key.as_bytes())
                            .payload(&encode_value(1)),
                        Duration::from_secs(5),
                    )
                    .await;
                if let Ok(d) = r {
                    acked
                        .lock()
                        .unwrap()
                        .insert((d.partition, d.offset), Instant::now());
                }
            }));
            n += 1;
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader thread");
    let (acked, seen) = (acked.lock().unwrap(), seen.lock().unwrap());
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for (k, a) in acked.iter() {
        if let Some(s) = seen.get(k) {
            // A record can arrive before its acknowledgement reaches the producer: 0 then.
            h.record(s.saturating_duration_since(*a).as_micros().max(1) as u64)?;
        }
    }
    if h.is_empty() {
        bail!(
            "the raw consumer saw none of the {} acknowledged records",
            acked.len()
        );
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Millis {
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        max: h.max() as f64 / 1000.0,
        samples: h.len(),
    })
}

async fn raw_produce_truth(kafka: &KafkaArgs, n: u64, keys: u64) -> anyhow::Result<Truth> {
    let mut t = Truth::default();
    raw_produce(kafka, n, keys, Some(&mut t)).await?;
    Ok(t)
}

struct RawRead {
    records: u64,
    rate: f64,
    ends: BTreeMap<i32, i64>,
}

/// Reads the whole topic to partition EOF, as a group member (`group`) or by assign; the rate
/// is timed from the first record to the last.
fn raw_consume(kafka: &KafkaArgs, group: bool) -> anyhow::Result<RawRead> {
    let consumer: BaseConsumer = if group {
        // A plain group member: no stored offsets, so it starts where the log starts (Tally's
        // consumers use auto.offset.reset=error and set their start offsets themselves).
        kafka
            .group_consumer(&unique("raw"), Duration::from_secs(6))
            .set("auto.offset.reset", "earliest")
            .create()?
    } else {
        kafka.reader().create()?
    };
    let parts = partitions_of(&consumer, &kafka.topic, Duration::from_secs(30))?;
    if group {
        consumer.subscribe(&[&kafka.topic])?;
    } else {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(&kafka.topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
    }
    let mut open: std::collections::BTreeSet<i32> = parts.iter().copied().collect();
    let mut ends = BTreeMap::new();
    let mut records = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("raw read did not reach the end of {:?}", open);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                records += 1;
                // Touch the bytes as a consumer would.
                std::hint::black_box((m.key(), m.payload()));
                ends.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "raw read"),
            None => {}
        }
    }
    let secs = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-3);
    Ok(RawRead {
        records,
        rate: records as f64 / secs,
        ends,
    })
}

fn offsets(c: &reqwest::blocking::Client, base: &str) -> BTreeMap<i32, i64> {
    tally_testkit::client::offsets(c, base).unwrap_or_default()
}

/// Waits until the aggregator's committed offsets reach `ends`; returns records/s from the
/// first committed progress to the end, counting only what was committed after that moment.
fn fold_rate(base: &str, ends: &BTreeMap<i32, i64>) -> anyhow::Result<f64> {
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let o = offsets(&c, base);
        let done: i64 = o.values().sum();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if ends.iter().all(|(p, e)| o.get(p).is_some_and(|n| n >= e)) {
            let Some((t0, d0)) = first else {
                return Ok(0.0);
            };
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            return Ok((done - d0).max(0) as f64 / secs);
        }
        if Instant::now() > deadline {
            bail!("aggregator did not catch up: {o:?} vs {ends:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the aggregator to fold up to `ends`, sampling its peak RSS at each quarter of the
/// log: `(records folded, VmHWM MB)`.
fn fold_sampling_rss(
    base: &str,
    pid: i32,
    ends: &BTreeMap<i32, i64>,
) -> anyhow::Result<Vec<(i64, f64)>> {
    let c = reqwest::blocking::Client::new();
    let total: i64 = ends.values().sum();
    let mut samples = Vec::new();
    let mut next_quarter = 1;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done: i64 = offsets(&c, base).values().sum();
        while next_quarter <= 4 && done * 4 >= total * next_quarter {
            samples.push((
                done,
                tally_testkit::process::memory_mb(pid, "VmHWM:").unwrap_or(0.0),
            ));
            next_quarter += 1;
        }
        if next_quarter > 4 {
            return Ok(samples);
        }
        if Instant::now() > deadline {
            bail!("aggregator did not fold the P6 log in time ({done} of {total})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 60 s) until every aggregator owns some partitions and together they own all
/// `partitions`, as each one's `/offsets` tells (a log end is given for owned partitions only).
fn split_ownership(aggs: &[&str], partitions: i32) -> bool {
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut all = std::collections::BTreeSet::new();
        let mut each = true;
        for a in aggs {
            let owned: Vec<i64> = c
                .get(format!("{a}/offsets"))
                .send()
                .and_then(|r| r.json::<serde_json::Value>())
                .ok()
                .and_then(|v| {
                    v["partitions"].as_array().map(|ps| {
                        ps.iter()
                            .filter(|p| !p["log_end"].is_null())
                            .filter_map(|p| p["partition"].as_i64())
                            .collect()
                    })
                })
                .unwrap_or_default();
            each &= !owned.is_empty();
            all.extend(owned);
        }
        if each && all.len() == partitions as usize {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn supports_min_offset(agg: &str) -> bool {
    let c = reqwest::blocking::Client::new();
    c.get(format!(
        "{agg}/sums/key-0?min_offset=0:999999999999&wait_ms=10"
    ))
    .send()
    .is_ok_and(|r| r.status() == 504)
}

/// Keys whose stored sum differs from the truth (and stored keys the truth lacks).
fn diff_store(db: &Path, topic: &str, truth: &Truth) -> anyhow::Result<Vec<String>> {
    let store = Store::open(db, topic, OpenMode::Existing).context("open bench database")?;
    let mut stored: BTreeMap<String, i64> = BTreeMap::new();
    for ((k, _), s) in store.all_sums()? {
        *stored.entry(k).or_insert(0) += s;
    }
    let mut diff = Vec::new();
    for (k, want) in &truth.sums {
        let got = stored.remove(k);
        if got != Some(*want) {
            diff.push(format!("{k}: want {want}, got {got:?}"));
        }
    }
    for (k, got) in stored {
        if got != 0 {
            diff.push(format!("{k}: not acknowledged, got {got}"));
        }
    }
    Ok(diff)
}

/// BENCHMARKS.md's section for one run.
pub fn markdown(res: &Results, cfg: &Config, machine: &str, date: &str, commit: &str) -> String {
    let mut s = String::new();
    let durability = if cfg.broker_fsync {
        "fsync of every record before the acknowledgement (`log.flush.interval.messages=1`)"
    } else {
        "Kafka's default: acknowledged from the page cache, fsync left to the OS"
    };
    s.push_str(&format!("## Run of {date}\n\nBroker: Apache Kafka {}, one KRaft node on this machine; durability: {durability}.\n\nMachine: {machine}. Commit: `{commit}`. Profile: {}. Stage length {} s, concurrency {} (P1 at {:?}, its targets at {}), {} keys, NDJSON batch {}, {} partitions; P6 {} records over {} keys.\n\n", kafka_version(), cfg.profile, cfg.stage_s, cfg.concurrency, cfg.p1_concurrencies, cfg.p1_at, cfg.keys, cfg.ndjson_batch, cfg.partitions, cfg.p6_records, cfg.p6_keys));
    s.push_str("| | measure | numerator | denominator | ratio / value | target | met |\n|---|---|---|---|---|---|---|\n");
    for r in &res.ratios {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.3} | {} | {} |\n",
            r.name,
            r.what,
            r.numerator,
            r.denominator,
            r.value,
            r.target,
            if r.met { "yes" } else { "**no**" }
        ));
    }
    s.push_str("\nExactness (sums against the ground truth of acknowledged increments):\n\n");
    for (stage, ok, detail) in &res.exactness {
        s.push_str(&format!(
            "- {stage}: {} ({detail})\n",
            if *ok { "exact" } else { "**WRONG**" }
        ));
    }
    for n in &res.notes {
        s.push_str(&format!("- note: {n}\n"));
    }
    s.push_str(&format!(
        "\n<details><summary>raw numbers</summary>\n\n```json\n{}\n```\n</details>\n",
        serde_json::to_string_pretty(&res.raw).unwrap_or_default()
    ));
    s
}
