//! The load generator: `concurrency` workers send increments to ingest for `duration_s`
//! (optionally at a fixed total `rate`), in one of the body formats, and keep the ground truth:
//! the per-key sum of every increment whose request was answered 200, and the highest offset
//! acknowledged per partition. Latencies go into an HDR histogram.
//!
//! `--format healthz` sends `GET /healthz` instead (the P1 baseline), and `--freshness URL`
//! measures, after every acknowledged single increment, how long until the aggregator at URL
//! serves it (`/sums/{key}?min_offset=P:O`). With several aggregators (`--freshness A,B`, same
//! group and database) every other read goes to one that does not own the record's partition
//! (ownership read from each one's `/offsets` when the run starts), and those reads are also
//! reported on their own (`freshness_foreign_ms`).
//!
//! Only 200 answers count: as requests, in the rates and in the latency histogram; every other
//! answer and transport error is counted apart in `failures`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `POST /increment` with a form body, one increment per request.
    Form,
    /// `POST /increments` with one JSON object.
    Json,
    /// `POST /increments` with `--batch` NDJSON lines.
    Ndjson,
    /// `GET /healthz`: the same HTTP path without any work (baseline).
    Healthz,
}

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "loadgen",
    about = "Sends increments to ingest and records the ground truth"
)]
pub struct Args {
    /// Ingest base URL.
    #[arg(
        long,
        env = "TALLY_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    #[arg(long, value_enum, default_value = "form")]
    pub format: Format,
    /// Increments per request with `--format ndjson`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct keys (`key-0` .. `key-N-1`).
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    #[arg(long, default_value_t = -100, allow_hyphen_values = true)]
    pub min_value: i64,
    #[arg(long, default_value_t = 100)]
    pub max_value: i64,
    /// How long to send.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Total requests per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the ground truth (JSON) here.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Aggregator base URLs, comma-separated: measure ack-to-visible time of each single
    /// increment (with several, every other read goes to one not owning the partition).
    #[arg(long)]
    pub freshness: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Per-key sums of acknowledged increments and the highest acknowledged offset per partition.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Truth {
    pub sums: BTreeMap<String, i64>,
    pub max_offsets: BTreeMap<i32, i64>,
    pub acknowledged: u64,
}

impl Truth {
    pub fn merge(&mut self, other: Truth) {
        for (k, v) in other.sums {
            *self.sums.entry(k).or_insert(0) += v;
        }
        for (p, o) in other.max_offsets {
            self.landed(p, o);
        }
        self.acknowledged += other.acknowledged;
    }

    fn landed(&mut self, p: i32, o: i64) {
        let m = self.max_offsets.entry(p).or_insert(o);
        *m = (*m).max(o);
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.50) as f64 / scale,
        p90: h.value_at_quantile(0.90) as f64 / scale,
        p99: h.value_at_quantile(0.99) as f64 / scale,
        max: h.max() as f64 / scale,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub concurrency: usize,
    /// Requests answered 200 (failures are not served requests).
    pub requests: u64,
    pub increments: u64,
    /// Non-200 answers and transport errors by status ("error" for transport).
    pub failures: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub increments_per_s: f64,
    pub latency_ms: Percentiles,
    pub freshness_ms: Option<Percentiles>,
    /// The reads of `freshness_ms` served by an aggregator not owning the partition.
    #[serde(default)]
    pub freshness_foreign_ms: Option<Percentiles>,
}

/// A finished run with its latency histogram, so that several runs can be [`combine`]d.
pub struct Run {
    pub report: Report,
    pub truth: Truth,
    pub latency: Histogram<u64>,
}

/// One report over several runs of the same format and concurrency: counts and elapsed times
/// add up, latencies are those of every run's answers together.
pub fn combine(runs: Vec<Run>) -> anyhow::Result<(Report, Truth)> {
    let mut it = runs.into_iter();
    let first = it.next().context("nothing to combine")?;
    let (mut report, mut truth, mut latency) = (first.report, first.truth, first.latency);
    for r in it {
        report.requests += r.report.requests;
        report.increments += r.report.increments;
        report.elapsed_s += r.report.elapsed_s;
        for (k, v) in r.report.failures {
            *report.failures.entry(k).or_insert(0) += v;
        }
        truth.merge(r.truth);
        latency.add(&r.latency)?;
    }
    report.requests_per_s = report.requests as f64 / report.elapsed_s;
    report.increments_per_s = report.increments as f64 / report.elapsed_s;
    report.latency_ms = percentiles(&latency, 1000.0);
    report.freshness_ms = None;
    report.freshness_foreign_ms = None;
    Ok((report, truth))
}

struct Worker {
    truth: Truth,
    latency: Histogram<u64>,
    freshness: Histogram<u64>,
    foreign: Histogram<u64>,
    requests: u64,
    failures: BTreeMap<String, u64>,
}

/// Where freshness reads go: each aggregator's base URL and the partitions it owns.
struct Readers {
    urls: Vec<String>,
    owner: BTreeMap<i32, usize>,
}

impl Readers {
    async fn discover(client: &reqwest::Client, list: &str) -> anyhow::Result<Readers> {
        let urls: Vec<String> = list.split(',').map(|u| u.trim().to_owned()).collect();
        let mut owner = BTreeMap::new();
        if urls.len() > 1 {
            for (i, u) in urls.iter().enumerate() {
                let v: Value = client
                    .get(format!("{u}/offsets"))
                    .send()
                    .await?
                    .json()
                    .await
                    .with_context(|| format!("{u}/offsets"))?;
                // A process reports a log end only for the partitions it owns.
                for p in v["partitions"].as_array().into_iter().flatten() {
                    if let (Some(id), false) = (p["partition"].as_i64(), p["log_end"].is_null()) {
                        owner.insert(id as i32, i);
                    }
                }
            }
        }
        Ok(Readers { urls, owner })
    }

    /// The aggregator to read partition `p` from, and whether it does not own `p`: the owner
    /// for even `n`, another one for odd `n`.
    fn pick(&self, p: i32, n: u64) -> (&str, bool) {
        match self.owner.get(&p) {
            Some(&o) if self.urls.len() > 1 => {
                if n % 2 == 1 {
                    (&self.urls[(o + 1) % self.urls.len()], true)
                } else {
                    (&self.urls[o], false)
                }
            }
            _ => (&self.urls[0], false),
        }
    }
}

pub async fn run(args: &Args) -> anyhow::Result<(Report, Truth)> {
    run_full(args).await.map(|r| (r.report, r.truth))
}

pub async fn run_full(args: &Args) -> anyhow::Result<Run> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(
        args.min_value <= args.max_value,
        "--min-value must not exceed --max-value"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let readers = match &args.freshness {
        Some(list) => Some(Arc::new(Readers::discover(&client, list).await?)),
        None => None,
    };
    let args = Arc::new(args.clone());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration_s);
    // Key names formatted once, so a request costs the load generator no formatting of them.
    let names: Arc<[String]> = (0..args.keys).map(|i| format!("key-{i}")).collect();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (client, args, readers) = (client.clone(), args.clone(), readers.clone());
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            worker(w, &client, &args, &names, readers.as_deref(), deadline).await
        }));
    }
    let mut truth = Truth::default();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut freshness = Histogram::<u64>::new(3)?;
    let mut foreign = Histogram::<u64>::new(3)?;
    let mut requests = 0;
    let mut failures = BTreeMap::new();
    for t in tasks {
        let w = t.await.context("worker panicked")??;
        truth.merge(w.truth);
        latency.add(&w.latency)?;
        freshness.add(&w.freshness)?;
        foreign.add(&w.foreign)?;
        requests += w.requests;
        for (k, v) in w.failures {
            *failures.entry(k).or_insert(0) += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A failed request is not a served one: rates count 200s only (failures are listed apart).
    // ("not_fresh" marks a 200 whose read-your-writes read failed: it was served.)
    let requests = requests
        - failures
            .iter()
            .filter(|(k, _)| k.as_str() != "not_fresh")
            .map(|(_, v)| v)
            .sum::<u64>();
    if let Some(path) = &args.truth {
        std::fs::write(path, serde_json::to_vec(&truth)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let increments = truth.acknowledged;
    let report = Report {
        format: format!("{:?}", args.format).to_lowercase(),
        concurrency: args.concurrency,
        requests,
        increments,
        failures,
        elapsed_s: elapsed,
        requests_per_s: requests as f64 / elapsed,
        increments_per_s: increments as f64 / elapsed,
        latency_ms: percentiles(&latency, 1000.0),
        freshness_ms: args
            .freshness
            .as_ref()
            .map(|_| percentiles(&freshness, 1000.0)),
        freshness_foreign_ms: (!foreign.is_empty()).then(|| percentiles(&foreign, 1000.0)),
    };
    Ok(Run {
        report,
        truth,
        latency,
    })
}

/// What a 200 from ingest says about where the increments landed: one record's partition and
/// offset, or each partition's highest offset for a batch.
#[derive(Deserialize)]
struct Answer {
    partition: Option<i32>,
    offset: Option<i64>,
    #[serde(default)]
    offsets: BTreeMap<i32, i64>,
}

/// The request for `incs` in `args.format` (`/healthz` needs none of them).
fn encode<'a>(
    args: &Args,
    host: &str,
    names: &[String],
    incs: &[(usize, i64)],
    body: &mut String,
    healthz: &'a [u8],
) -> Cow<'a, [u8]> {
    let (path, content_type) = match args.format {
        Format::Healthz => return Cow::Borrowed(healthz),
        Format::Form => ("/increment", "application/x-www-form-urlencoded"),
        Format::Json => ("/increments", "application/json"),
        Format::Ndjson => ("/increments", "application/x-ndjson"),
    };
    body.clear();
    match args.format {
        Format::Form => body.push_str(&format!("key={}&value={}", names[incs[0].0], incs[0].1)),
        Format::Json => body.push_str(&format!(
            r#"{{"key":"{}","value":{}}}"#,
            names[incs[0].0], incs[0].1
        )),
        _ => {
            for &(k, v) in incs {
                let k = &names[k];
                body.push_str(&format!("{{\"key\":\"{k}\",\"value\":{v}}}\n"));
            }
        }
    }
    Cow::Owned(crate::conn::request(
        "POST",
        path,
        host,
        content_type,
        body.as_bytes(),
    ))
}

impl Worker {
    fn new() -> anyhow::Result<Worker> {
        Ok(Worker {
            truth: Truth::default(),
            latency: Histogram::new(3)?,
            freshness: Histogram::new(3)?,
            foreign: Histogram::new(3)?,
            requests: 0,
            failures: BTreeMap::new(),
        })
    }

    /// Reads `key` back through one of `readers` with the read-your-writes token of the
    /// increment just acknowledged at `at`, and records how long after `acked` it was served.
    async fn read_back(
        &mut self,
        client: &reqwest::Client,
        readers: &Readers,
        key: &str,
        at: (i32, i64),
        acked: Instant,
    ) -> anyhow::Result<()> {
        let (p, o) = at;
        let (agg, foreign) = readers.pick(p, self.truth.acknowledged);
        let url = format!("{agg}/sums/{key}?min_offset={p}:{o}&wait_ms=5000");
        let r = client.get(url).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            let us = acked.elapsed().as_micros().max(1) as u64;
            self.freshness.record(us)?;
            if foreign {
                self.foreign.record(us)?;
            }
        } else {
            *self.failures.entry("not_fresh".into()).or_insert(0) += 1;
        }
        Ok(())
    }
}

async fn worker(
    id: usize,
    client: &reqwest::Client,
    args: &Args,
    names: &[String],
    readers: Option<&Readers>,
    deadline: Instant,
) -> anyhow::Result<Worker> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
    let mut w = Worker::new()?;
    // With a rate, each worker sends one request per `period`.
    let period = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let mut next = Instant::now();
    let mut body = String::new();
    // The worker's ground truth by key index (`None`: never acknowledged), turned into
    // `Truth::sums` at the end: a string-keyed map lookup per answer was a tenth of the load
    // generator's CPU per single increment.
    let mut sums: Vec<Option<i64>> = vec![None; names.len()];
    let mut incs: Vec<(usize, i64)> = Vec::new();
    let host = crate::conn::authority(&args.url)
        .with_context(|| format!("--url {} is not http://HOST:PORT", args.url))?;
    let mut conn = crate::conn::Conn::new(host);
    let healthz = crate::conn::request("GET", "/healthz", host, "", b"");
    while Instant::now() < deadline {
        if let Some(p) = period {
            tokio::time::sleep_until(next.into()).await;
            next += p;
        }
        let n = if args.format == Format::Ndjson {
            args.batch
        } else {
            1
        };
        incs.clear();
        incs.extend((0..n).map(|_| {
            let key = rng.gen_range(0..args.keys);
            (key, rng.gen_range(args.min_value..=args.max_value))
        }));
        let req = encode(args, host, names, &incs, &mut body, &healthz);
        let sent = Instant::now();
        let answer = conn.exchange(&req).await;
        w.requests += 1;
        let acked = Instant::now();
        let answer = match answer {
            Ok(a) if a.status == 200 => a,
            failed => {
                let why = failed.map_or("error".into(), |a| a.status.to_string());
                *w.failures.entry(why).or_insert(0) += 1;
                continue;
            }
        };
        w.latency
            .record(acked.duration_since(sent).as_micros().max(1) as u64)?;
        if args.format == Format::Healthz {
            continue;
        }
        let v: Answer = serde_json::from_slice(answer.body)
            .context("ingest answered 200 without its JSON answer")?;
        for &(k, d) in &incs {
            *sums[k].get_or_insert(0) += d;
        }
        w.truth.acknowledged += incs.len() as u64;
        if let (Some(p), Some(o)) = (v.partition, v.offset) {
            w.truth.landed(p, o);
            if let Some(readers) = readers {
                w.read_back(client, readers, &names[incs[0].0], (p, o), acked)
                    .await?;
            }
        } else {
            for (p, o) in v.offsets {
                w.truth.landed(p, o);
            }
        }
    }
    w.truth.sums.extend(
        names
            .iter()
            .zip(sums)
            .filter_map(|(name, sum)| Some((name.clone(), sum?))),
    );
    Ok(w)
}
