//! The benchmark suite: every stage measured against its own limit in the same run, on the
//! same broker, with exactness checked against the ground truth after each stage that counts.
//! Each stage is one function of [`Suite`]; [`run`] calls them in order.
//!
//! - P1 `POST /increment` req/s over `GET /healthz` req/s (same ingest, same concurrency), at
//!   256 connections and also at 32 and 1,024; the two alternate (healthz, form, form,
//!   healthz, half a stage each) after both were warmed up, so neither runs on a colder
//!   process or a quieter machine. At 256 also: acknowledged increments/s and p99 latency.
//! - P2 NDJSON batch increments/s over raw rdkafka produce rate (idempotent, acks=all).
//! - P3 aggregator fold-and-commit rate over a raw consumer-group read of the same records.
//! - P4 `replayer rebuild` rate over a raw read (assign, to EOF) of the same records.
//! - P5 p99 ack-to-visible freshness where users live: at fixed rates the box sustains (a
//!   quarter and a half of the highest P1 rate of the same run, with enough clients to reach
//!   them), read through two aggregators of one group, every other read served by the one that
//!   does not own the partition; saturation (as many clients as P1's largest concurrency, no
//!   rate limit) is reported apart, as is the broker's own ack-to-fetch floor.
//! - P6 aggregator peak RSS after folding a large log over many keys, sampled as it grows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tally_pipeline::kafka::KafkaArgs;
use tally_testkit::broker::{kafka_version, Broker, KafkaOptions};
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique};

use crate::baseline::{
    raw_consume, raw_produce, raw_produce_to_fetch, raw_produce_truth, raw_single_produce,
};
use crate::loadgen::{self, Format, Report, Truth};
use crate::observe::{
    diff_store, fold_rate, fold_sampling_rss, split_ownership, supports_min_offset,
};
use crate::report::{goal, grouped, Recorded, Row, Stamp};

/// What to run and how long.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Seconds per HTTP load stage.
    pub stage_s: f64,
    /// Connections for every HTTP stage but P1.
    pub concurrency: usize,
    /// Connections P1 is measured at, and the one its targets apply to.
    pub p1_concurrencies: Vec<usize>,
    pub p1_at: usize,
    /// The fixed rates P5 is measured at, as fractions of the highest P1 rate of the run.
    pub p5_fractions: Vec<f64>,
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
            p5_fractions: vec![0.25, 0.5],
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

    /// The broker as the run's pages and the current-figures table name it.
    pub fn broker(&self) -> String {
        let durability = if self.broker_fsync {
            "fsync per record"
        } else {
            "page cache"
        };
        format!("Kafka {}, 1 node, {durability}", kafka_version())
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

    fn start(&self, bin: &str, topic: &str, extra: &[String]) -> anyhow::Result<(Proc, String)> {
        let port = free_port();
        let mut args = self.common(topic);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().cloned());
        let envs = [("RUST_LOG", "warn".to_string())];
        let p = Proc::start(bin, &args, &envs, &self.cfg.work_dir);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base)?;
        Ok((p, base))
    }

    fn aggregator(&self, topic: &str, db: &Path, group: &str) -> anyhow::Result<(Proc, String)> {
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

fn wait_healthy(base: &str) -> anyhow::Result<()> {
    let c = reqwest::blocking::Client::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if c.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{base} did not become healthy within 60 s")
}

/// The P1 rates later stages are set from.
struct P1Rates {
    /// `POST /increment` req/s at the concurrency P1's targets apply to.
    at: f64,
    /// The highest `POST /increment` req/s over every concurrency P1 ran at.
    max: f64,
}

/// The aggregator of P3, kept running for P5 (its database holds every stage's records).
struct Folding {
    agg: Proc,
    url: String,
    db: PathBuf,
    group: String,
}

/// One run of the suite: the broker, ingest and the ground truth the stages share.
struct Suite {
    rt: tokio::runtime::Runtime,
    svc: Services,
    cfg: Config,
    res: Results,
    truth: Truth,
    ingest: Proc,
    ingest_url: String,
}

/// Runs every stage; a slow stage is a figure, only a broken environment is an error.
pub fn run(cfg: Config) -> anyhow::Result<Results> {
    let mut s = Suite::start(cfg)?;
    s.warm_up()?;
    let p1 = s.p1()?;
    s.p1_ceiling(p1.at)?;
    s.p2()?;
    let mut folding = s.p3()?;
    s.p4()?;
    s.p5(&folding, p1.max)?;
    folding.agg.terminate(Duration::from_secs(30));
    s.ingest.terminate(Duration::from_secs(30));
    s.p6()?;
    Ok(s.res)
}

impl Suite {
    fn start(cfg: Config) -> anyhow::Result<Suite> {
        std::env::set_var("TALLY_PROFILE", &cfg.profile);
        std::fs::create_dir_all(&cfg.work_dir)?;
        let svc = Services {
            broker: Broker::start_with(KafkaOptions {
                heap_mb: 1024,
                flush_every_message: cfg.broker_fsync,
                ..KafkaOptions::default()
            }),
            topic: unique("bench"),
            cfg: cfg.clone(),
        };
        let (ingest, ingest_url) = svc.start("ingest", &svc.topic, &[])?;
        Ok(Suite {
            rt: tokio::runtime::Runtime::new()?,
            svc,
            cfg,
            res: Results::default(),
            truth: Truth::default(),
            ingest,
            ingest_url,
        })
    }

    /// Not measured: a JVM broker just started answers its first seconds of produce requests
    /// far slower (class loading, JIT), and P1's numerator would otherwise run on a colder
    /// broker than P1b's baseline; the health endpoint is warmed up as well, so that P1's
    /// denominator does not run colder either. The increments count (they are acknowledged).
    fn warm_up(&mut self) -> anyhow::Result<()> {
        let warm = Config {
            stage_s: self.cfg.stage_s.min(4.0),
            concurrency: self.cfg.p1_at,
            ..self.cfg.clone()
        };
        let url = &self.ingest_url;
        let (_, warm_truth) = self
            .rt
            .block_on(load_truth(url, Format::Form, &warm, None, None))?;
        self.truth.merge(warm_truth);
        self.rt.block_on(raw_single_produce(
            &self.svc.kafka(&unique("bench-warm")),
            warm.concurrency,
            warm.stage_s,
        ))?;
        self.rt
            .block_on(load_truth(url, Format::Healthz, &warm, None, None))?;
        Ok(())
    }

    /// P1: single durable increments against the health endpoint of the same process, at each
    /// concurrency, alternating healthz, form, form, healthz (half a stage each).
    fn p1(&mut self) -> anyhow::Result<P1Rates> {
        let mut at = None;
        let mut max = 0f64;
        for c in self.cfg.p1_concurrencies.clone() {
            let half = Config {
                concurrency: c,
                stage_s: self.cfg.stage_s / 2.0,
                ..self.cfg.clone()
            };
            let url = &self.ingest_url;
            let h1 = self.rt.block_on(load_full(url, Format::Healthz, &half))?;
            let f1 = self.rt.block_on(load_full(url, Format::Form, &half))?;
            let f2 = self.rt.block_on(load_full(url, Format::Form, &half))?;
            let h2 = self.rt.block_on(load_full(url, Format::Healthz, &half))?;
            let (health, _) = loadgen::combine(vec![h1, h2])?;
            let (form, form_truth) = loadgen::combine(vec![f1, f2])?;
            self.truth.merge(form_truth);
            self.p1_rows(c, &health, &form)?;
            max = max.max(form.requests_per_s);
            if c == self.cfg.p1_at {
                at = Some(form.requests_per_s);
            }
        }
        let at = at.context("p1_at is not among p1_concurrencies")?;
        Ok(P1Rates { at, max })
    }

    fn p1_rows(&mut self, c: usize, health: &Report, form: &Report) -> anyhow::Result<()> {
        let res = &mut self.res;
        res.raw
            .insert(format!("p1_healthz_c{c}"), serde_json::to_value(health)?);
        res.raw
            .insert(format!("p1_form_c{c}"), serde_json::to_value(form)?);
        let headline = c == self.cfg.p1_at;
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
        failures_note(res, &name, form);
        if headline {
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
        Ok(())
    }

    /// P1b: what the broker allows for one acknowledged record at a time per client, at the
    /// same concurrency: the ceiling for single-increment requests whatever ingest does.
    fn p1_ceiling(&mut self, p1_rate: f64) -> anyhow::Result<()> {
        let single = self.rt.block_on(raw_single_produce(
            &self.svc.kafka(&unique("bench-single")),
            self.cfg.p1_at,
            self.cfg.stage_s,
        ))?;
        self.res
            .raw
            .insert("p1_raw_single_produce_per_s".into(), single.into());
        self.res.ratios.push(ratio(
            "P1b",
            &format!("POST /increment req/s / raw single-record acked produce records/s ({} connections; the broker's ceiling for P1)", self.cfg.p1_at),
            p1_rate,
            single,
            "req/s",
            "info",
            |_| true,
        ));
        Ok(())
    }

    /// P2: NDJSON batches against the raw producer on the same broker, same record sizes.
    fn p2(&mut self) -> anyhow::Result<()> {
        let (nd, nd_truth) = self.rt.block_on(load_truth(
            &self.ingest_url,
            Format::Ndjson,
            &self.cfg,
            None,
            None,
        ))?;
        self.truth.merge(nd_truth);
        self.res
            .raw
            .insert("p2_ndjson".into(), serde_json::to_value(&nd)?);
        let raw_rate = self.rt.block_on(raw_produce(
            &self.svc.kafka(&unique("bench-raw")),
            nd.increments.max(10_000),
            self.cfg.keys as u64,
            None,
        ))?;
        self.res
            .raw
            .insert("p2_raw_produce_per_s".into(), raw_rate.into());
        self.res.ratios.push(ratio(
            "P2",
            "NDJSON increments/s / raw rdkafka produce records/s",
            nd.increments_per_s,
            raw_rate,
            "records/s",
            ">= 0.9",
            |v| v >= 0.9,
        ));
        failures_note(&mut self.res, "P2", &nd);
        Ok(())
    }

    /// P3: an aggregator folding everything so far, against a raw group read of the same
    /// records; the aggregator is returned running, for P5.
    fn p3(&mut self) -> anyhow::Result<Folding> {
        let records = self.truth.max_offsets.values().map(|o| o + 1).sum::<i64>() as u64;
        let raw_group = raw_consume(&self.svc.kafka(&self.svc.topic), true)?;
        let db = self.cfg.work_dir.join(format!("{}.db", unique("p3")));
        let group = unique("bench");
        let (agg, url) = self.svc.aggregator(&self.svc.topic, &db, &group)?;
        let agg_rate = fold_rate(&url, &raw_group.ends)?;
        let raw = &mut self.res.raw;
        raw.insert("p3_records".into(), records.into());
        raw.insert("p3_raw_group_read_per_s".into(), raw_group.rate.into());
        raw.insert("p3_aggregator_per_s".into(), agg_rate.into());
        self.res.ratios.push(ratio(
            "P3",
            "aggregator fold+commit records/s / raw group read records/s",
            agg_rate,
            raw_group.rate,
            "records/s",
            ">= 0.9",
            |v| v >= 0.9,
        ));
        let diff = diff_store(&db, &self.svc.topic, &self.truth)?;
        self.res.check("P3 aggregator", diff, self.truth.sums.len());
        Ok(Folding {
            agg,
            url,
            db,
            group,
        })
    }

    /// P4: `replayer rebuild` against a raw read with assign to the end of the log.
    fn p4(&mut self) -> anyhow::Result<()> {
        let raw_assign = raw_consume(&self.svc.kafka(&self.svc.topic), false)?;
        let rebuilt = self.cfg.work_dir.join(format!("{}.db", unique("p4")));
        let t = Instant::now();
        let out = std::process::Command::new(tally_testkit::process::bin("replayer"))
            .args(self.svc.common(&self.svc.topic))
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
        let raw = &mut self.res.raw;
        raw.insert("p4_raw_assign_read_per_s".into(), raw_assign.rate.into());
        raw.insert("p4_rebuild_per_s".into(), rebuild_rate.into());
        self.res.ratios.push(ratio(
            "P4",
            "replayer rebuild records/s / raw assign read records/s",
            rebuild_rate,
            raw_assign.rate,
            "records/s",
            ">= 0.9",
            |v| v >= 0.9,
        ));
        let diff = diff_store(&rebuilt, &self.svc.topic, &self.truth)?;
        self.res.check("P4 rebuild", diff, self.truth.sums.len());
        Ok(())
    }

    /// P5: freshness through two aggregators of one group sharing the database (so that half
    /// the reads are served by a process that does not own the partition): at each fixed rate
    /// of [`Config::p5_fractions`], then at saturation, then the broker's own floor.
    fn p5(&mut self, folding: &Folding, p1_max: f64) -> anyhow::Result<()> {
        if !supports_min_offset(&folding.url) {
            self.res.notes.push("P5 not measured: this aggregator does not support /sums/{key}?min_offset= (read-your-writes)".into());
            return Ok(());
        }
        let (mut agg2, agg2_url) =
            self.svc
                .aggregator(&self.svc.topic, &folding.db, &folding.group)?;
        let readers = if split_ownership(&[&folding.url, &agg2_url], self.cfg.partitions) {
            format!("{},{agg2_url}", folding.url)
        } else {
            self.res.notes.push("P5: the two aggregators did not split the partitions within 60 s; every read went to the first one".into());
            folding.url.clone()
        };
        let mut floor_rate = None;
        for fraction in self.cfg.p5_fractions.clone() {
            let reached = self.p5_at_rate(&readers, fraction, (p1_max * fraction).max(1.0))?;
            if fraction == 0.5 || floor_rate.is_none() {
                floor_rate = Some(reached);
            }
        }
        self.p5_saturation(&readers)?;
        if let Some(rate) = floor_rate {
            self.p5_floor(rate)?;
        }
        fold_rate(&folding.url, &truth_ends(&self.truth))?;
        let diff = diff_store(&folding.db, &self.svc.topic, &self.truth)?;
        self.res.check("P5 aggregator", diff, self.truth.sums.len());
        agg2.terminate(Duration::from_secs(30));
        Ok(())
    }

    /// One fixed-rate freshness stage; returns the rate reached (req/s).
    fn p5_at_rate(&mut self, readers: &str, fraction: f64, rate: f64) -> anyhow::Result<f64> {
        // Each client waits for its increment to be visible before its next one, so the stage
        // needs enough of them to keep the rate even when a round trip takes 100 ms, four
        // times the p99 measured at such rates; the rate limit keeps it from saturating.
        let clients = ((rate * 0.1).ceil() as usize).clamp(self.cfg.concurrency, 2048);
        let p = self.freshness_stage(readers, Some(rate), clients)?;
        let name = if fraction == 0.5 {
            "P5".to_owned()
        } else {
            format!("P5@{fraction}")
        };
        self.res.raw.insert(
            format!("p5_freshness_{}", name.replace(['@', '.'], "_")),
            serde_json::to_value(&p.report)?,
        );
        self.res.ratios.push(ratio(
            &name,
            &format!(
                "p99 ms from ingest 200 to visible via /sums?min_offset=, at {fraction} of the highest P1 rate ({rate:.0} req/s asked, {:.0} reached, {clients} clients), half the reads through the aggregator not owning the partition",
                p.report.requests_per_s
            ),
            p.p99,
            1.0,
            "ms",
            "<= 250 ms",
            |v| v <= 250.0,
        ));
        if p.report.requests_per_s < 0.9 * rate {
            self.res.notes.push(format!(
                "{name}: {rate:.0} req/s asked, only {:.0} reached with {clients} clients: the box did not sustain this rate",
                p.report.requests_per_s
            ));
        }
        Ok(p.report.requests_per_s)
    }

    /// Freshness at saturation: P1's largest concurrency, no rate limit. A figure of the
    /// overloaded box, not of the path users wait on.
    fn p5_saturation(&mut self, readers: &str) -> anyhow::Result<()> {
        let clients = self
            .cfg
            .p1_concurrencies
            .iter()
            .copied()
            .max()
            .unwrap_or(self.cfg.concurrency);
        let p = self.freshness_stage(readers, None, clients)?;
        self.res.raw.insert(
            "p5_freshness_saturated".into(),
            serde_json::to_value(&p.report)?,
        );
        self.res.ratios.push(ratio(
            "P5sat",
            &format!(
                "p99 ms from ingest 200 to visible at saturation ({clients} clients, no rate limit, {:.0} req/s reached)",
                p.report.requests_per_s
            ),
            p.p99,
            1.0,
            "ms",
            "info",
            |_| true,
        ));
        Ok(())
    }

    /// P5b: a raw acknowledged produce seen by a raw consumer with the aggregator's fetch
    /// settings, at the rate the half-rate stage reached: the broker's floor for P5.
    fn p5_floor(&mut self, rate: f64) -> anyhow::Result<()> {
        let floor = raw_produce_to_fetch(
            &self.rt,
            &self.svc.kafka(&unique("bench-floor")),
            rate.max(1.0),
            self.cfg.stage_s,
        )?;
        self.res.raw.insert(
            "p5_raw_produce_to_fetch_ms".into(),
            serde_json::to_value(floor)?,
        );
        let p5 = self
            .res
            .ratios
            .iter()
            .find(|r| r.name == "P5")
            .map_or(f64::NAN, |r| r.numerator);
        self.res.ratios.push(ratio(
            "P5b",
            &format!("P5 p99 ms / raw acked produce -> raw fetch p99 ms ({rate:.0} records/s, same fetch wait; the broker's floor for P5)"),
            p5,
            floor.p99,
            "ratio",
            "info",
            |_| true,
        ));
        Ok(())
    }

    fn freshness_stage(
        &mut self,
        readers: &str,
        rate: Option<f64>,
        clients: usize,
    ) -> anyhow::Result<Freshness> {
        let stage = Config {
            concurrency: clients,
            ..self.cfg.clone()
        };
        let (report, truth) = self.rt.block_on(load_truth(
            &self.ingest_url,
            Format::Form,
            &stage,
            rate,
            Some(readers),
        ))?;
        self.truth.merge(truth);
        if let Some(f) = report.freshness_foreign_ms {
            self.res.notes.push(format!(
                "P5 at {}: reads served by the aggregator not owning the partition: p50 {:.1} ms, p99 {:.1} ms",
                rate.map_or("saturation".to_owned(), |r| format!("{r:.0} req/s")),
                f.p50,
                f.p99
            ));
        }
        let p99 = report.freshness_ms.map_or(f64::NAN, |f| f.p99);
        Ok(Freshness { report, p99 })
    }

    /// P6: memory after folding a large log over many keys.
    fn p6(&mut self) -> anyhow::Result<()> {
        let mem_topic = unique("bench-mem");
        let mem_kafka = self.svc.kafka(&mem_topic);
        let mem_truth = self.rt.block_on(raw_produce_truth(
            &mem_kafka,
            self.cfg.p6_records,
            self.cfg.p6_keys,
        ))?;
        let mem_db = self.cfg.work_dir.join(format!("{}.db", unique("p6")));
        let (mut agg, agg_url) = self.svc.aggregator(&mem_topic, &mem_db, &unique("bench"))?;
        let samples = fold_sampling_rss(&agg_url, agg.pid(), &truth_ends(&mem_truth))?;
        let peak_mb = samples.last().map(|s| s.1).unwrap_or(0.0);
        let raw = &mut self.res.raw;
        raw.insert("p6_records".into(), self.cfg.p6_records.into());
        raw.insert("p6_keys".into(), self.cfg.p6_keys.into());
        raw.insert(
            "p6_rss_samples_records_mb".into(),
            serde_json::to_value(&samples)?,
        );
        self.res.ratios.push(ratio(
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
        self.res.check("P6 aggregator", diff, mem_truth.sums.len());
        Ok(())
    }
}

/// One freshness stage's report and its p99 (NaN when nothing was read back).
struct Freshness {
    report: Report,
    p99: f64,
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

/// The run's page in the history folder; its raw numbers are in `json_name` beside it.
pub fn page(res: &Results, cfg: &Config, stamp: &Stamp, json_name: &str) -> String {
    let mut s = format!(
        "# Suite run of {}\n\nBroker: {}. Machine: {}. Commit: `{}`. Profile: {}. Stage length {} s, concurrency {} (P1 at {:?}, its targets at {}; P5 at {:?} of the highest P1 rate), {} keys, NDJSON batch {}, {} partitions; P6 {} records over {} keys. Command: `{}`.\n\n",
        stamp.date,
        cfg.broker(),
        stamp.machine,
        stamp.commit,
        cfg.profile,
        cfg.stage_s,
        cfg.concurrency,
        cfg.p1_concurrencies,
        cfg.p1_at,
        cfg.p5_fractions,
        cfg.keys,
        cfg.ndjson_batch,
        cfg.partitions,
        cfg.p6_records,
        cfg.p6_keys,
        SUITE_COMMAND,
    );
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
    s.push_str(&format!("\nRaw numbers: [`{json_name}`]({json_name}).\n"));
    s
}

/// How the full suite is run (the command column of the current-figures table).
pub const SUITE_COMMAND: &str = "cargo run --release -p tally-bench --bin bench-suite";

/// The current-figures rows this run measured: one per ratio, its figure with the numbers it
/// was divided from. With `--broker-fsync` the measures are their own rows (`P1 fsync`), so a
/// run on either broker setting keeps the other's figures.
pub fn current_rows(res: &Results, cfg: &Config) -> Vec<Row> {
    let suffix = if cfg.broker_fsync { " fsync" } else { "" };
    res.ratios
        .iter()
        .map(|r| Row {
            measure: format!("{}{suffix}", r.name),
            what: r.what.clone(),
            figure: if r.denominator == 1.0 {
                format!("{} {}", grouped(r.numerator), r.unit)
            } else if r.unit == "ratio" {
                format!(
                    "{:.1} ({:.1} / {:.1} ms)",
                    r.value, r.numerator, r.denominator
                )
            } else {
                format!(
                    "{:.3} ({} / {} {})",
                    r.value,
                    grouped(r.numerator),
                    grouped(r.denominator),
                    r.unit
                )
            },
            goal: goal(r.target, r.met),
        })
        .collect()
}

/// The run ready for [`crate::report::record`]: its page, its raw numbers (with the
/// configuration) and its rows of the current-figures table.
pub fn recorded(res: &Results, cfg: &Config, stamp: &Stamp) -> anyhow::Result<Recorded> {
    let json_name = stamp.file("suite", "json");
    Ok(Recorded {
        kind: "suite",
        broker: cfg.broker(),
        command: if cfg.broker_fsync {
            format!("{SUITE_COMMAND} -- --broker-fsync")
        } else {
            SUITE_COMMAND.into()
        },
        page: page(res, cfg, stamp, &json_name),
        raw: serde_json::json!({ "config": cfg, "results": res }),
        rows: current_rows(res, cfg),
    })
}
