//! The broker's own rates, with nothing of Tally in the path: the denominators of the suite's
//! ratios. Raw produce (batched, and one acknowledged record at a time per client), raw reads
//! of a whole topic (as a group member and by assign), and the raw ack-to-fetch latency that
//! is the floor for P5.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use tally_pipeline::client_config::{self, Fetch, Member};
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::record::encode_value;
use tally_pipeline::topic::{self, partitions_of};
use tally_testkit::unique;

use crate::loadgen::Truth;

pub(crate) fn record_key(i: u64, keys: u64) -> String {
    format!("key-{}", i % keys)
}

/// Produces `n` records as fast as the broker acknowledges them; returns records/s.
pub(crate) async fn raw_produce(
    kafka: &KafkaArgs,
    n: u64,
    keys: u64,
    mut truth: Option<&mut Truth>,
) -> anyhow::Result<f64> {
    topic::ensure(kafka).await?;
    // No message timeout: a backlog of a million queued records can take longer than any fixed
    // timeout to drain on a loaded machine.
    let producer: FutureProducer =
        client_config::producer(kafka, Duration::ZERO, Some(1_000_000)).create()?;
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
pub(crate) async fn raw_single_produce(
    kafka: &KafkaArgs,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    topic::ensure(kafka).await?;
    let producer: FutureProducer =
        client_config::producer(kafka, Duration::from_secs(30), None).create()?;
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
pub(crate) const FETCH_WAIT_MAX_MS: &str = "10";

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Millis {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

/// When each record, by (partition, offset), was acknowledged or seen.
type Times = Arc<Mutex<HashMap<(i32, i64), Instant>>>;

/// Produces single records at `rate` per second for `secs`, each awaited for its acks=all
/// acknowledgement, while a raw consumer (assigned to every partition's end, the aggregator's
/// fetch wait) reads them: the time from each acknowledgement to the record's arrival at the
/// consumer, i.e. the broker's own ack-to-fetch latency, without any folding or commit.
pub(crate) fn raw_produce_to_fetch(
    rt: &tokio::runtime::Runtime,
    kafka: &KafkaArgs,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Millis> {
    rt.block_on(topic::ensure(kafka))?;
    let consumer = end_reader(kafka)?;
    let (acked, seen): (Times, Times) = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let at = Instant::now();
                    seen.lock().unwrap().insert((m.partition(), m.offset()), at);
                }
            }
        })
    };
    rt.block_on(produce_at_rate(kafka, rate, secs, &acked))?;
    // Records still in flight to the consumer get a second; later ones are left out.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread");
    let (acked, seen) = (acked.lock().unwrap(), seen.lock().unwrap());
    ack_to_fetch(&acked, &seen)
}

/// A raw consumer with the aggregator's fetch wait, assigned to every partition's end, its
/// start offsets resolved (so that it sees everything produced from now on).
fn end_reader(kafka: &KafkaArgs) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = client_config::reader(kafka, &Fetch::default())
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("enable.partition.eof", "false")
        .create()?;
    let parts = partitions_of(&consumer, &kafka.topic, Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(&kafka.topic, *p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        consumer.poll(Duration::from_millis(50));
    }
    Ok(consumer)
}

/// Produces one record every `1 / rate` seconds for `secs`, each acknowledgement's moment
/// recorded in `acked`.
async fn produce_at_rate(
    kafka: &KafkaArgs,
    rate: f64,
    secs: f64,
    acked: &Times,
) -> anyhow::Result<()> {
    let producer: FutureProducer =
        client_config::producer(kafka, Duration::from_secs(30), None).create()?;
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
    Ok(())
}

/// Percentiles of the time from each acknowledgement to the consumer seeing the record.
fn ack_to_fetch(
    acked: &HashMap<(i32, i64), Instant>,
    seen: &HashMap<(i32, i64), Instant>,
) -> anyhow::Result<Millis> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for (k, a) in acked {
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

pub(crate) async fn raw_produce_truth(
    kafka: &KafkaArgs,
    n: u64,
    keys: u64,
) -> anyhow::Result<Truth> {
    let mut t = Truth::default();
    raw_produce(kafka, n, keys, Some(&mut t)).await?;
    Ok(t)
}

pub(crate) struct RawRead {
    pub records: u64,
    pub rate: f64,
    pub ends: BTreeMap<i32, i64>,
}

/// Reads the whole topic to partition EOF, as a group member (`group`) or by assign; the rate
/// is timed from the first record to the last.
pub(crate) fn raw_consume(kafka: &KafkaArgs, group: bool) -> anyhow::Result<RawRead> {
    let consumer: BaseConsumer = if group {
        // A plain group member: no stored offsets, so it starts where the log starts (Tally's
        // consumers use auto.offset.reset=error and set their start offsets themselves).
        client_config::group_member(
            kafka,
            &Member {
                group: &unique("raw"),
                session_timeout: Duration::from_secs(6),
                client_id: None,
                statistics_interval: None,
                fetch: Fetch::default(),
            },
        )
        .set("auto.offset.reset", "earliest")
        .create()?
    } else {
        client_config::reader(kafka, &Fetch::default()).create()?
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
