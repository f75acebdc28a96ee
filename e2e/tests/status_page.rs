//! The aggregator's status page in headless Chromium against a running pipeline: what it shows
//! (read from the rendered page, as a person sees it) matches `/offsets`, `/top`, `/sums` and
//! the ground truth, its records/s follows the load, and the run leaves a screenshot.

mod browser;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use browser::Browser;
use common::{increment, Pipeline};
use serde_json::Value;
use tally_testkit::client::{http, sum, GroundTruth};
use tally_testkit::wait_for;

fn send_counted(
    client: &reqwest::blocking::Client,
    base: &str,
    truth: &mut GroundTruth,
    key: &str,
    value: i64,
) {
    let (p, o) = increment(client, base, key, value);
    truth.add(key, value);
    truth.landed(p, o);
}

/// What the page shows, read from the rendered text of its elements.
/// `null` until the page has loaded.
const READ_PAGE: &str = r##"(() => {
  if (document.readyState !== "complete" || !document.getElementById("updated")) return null;
  const text = (id) => document.getElementById(id).innerText.trim();
  const rows = (sel) => [...document.querySelectorAll(sel + " tbody tr")]
    .map((tr) => [...tr.cells].map((c) => c.innerText.trim()));
  const error = document.getElementById("error");
  return {
    updated: text("updated"),
    error: error.hidden ? null : error.innerText,
    committed: text("committed-total"),
    total_lag: text("total-lag"),
    rate: text("rate"),
    rejected: text("rejected"),
    partitions: rows("#partitions"),
    top: rows("#top"),
    chart_points: document.getElementById("rate-line").getAttribute("points")
      .split(" ").filter(Boolean).length,
  };
})()"##;

/// How the page renders a value it may not have (log end and lag before /offsets has them).
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "\u{2013}".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the page should show, from the API.
struct Expected {
    partitions: Vec<Vec<String>>,
    committed: String,
    total_lag: String,
    rejected: String,
    top: Vec<Vec<String>>,
}

fn expected(client: &reqwest::blocking::Client, base: &str) -> Expected {
    let offsets: Value = client
        .get(format!("{base}/offsets"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let partitions: Vec<Vec<String>> = offsets["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            ["partition", "next_offset", "log_end", "lag"]
                .iter()
                .map(|f| shown(p.get(*f).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let committed: i64 = offsets["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_i64().unwrap())
        .sum();
    let rejected = client.get(format!("{base}/rejected")).send().unwrap();
    let rejected = match rejected.status().as_u16() {
        404 => "n/a".to_owned(),
        200 => shown(&rejected.json::<Value>().unwrap()["count"]),
        s => panic!("GET /rejected: {s}"),
    };
    let top: Value = client
        .get(format!("{base}/top?limit=10"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let top = top["keys"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, k)| vec![(i + 1).to_string(), shown(&k["key"]), shown(&k["sum"])])
        .collect();
    Expected {
        partitions,
        committed: committed.to_string(),
        total_lag: shown(offsets.get("total_lag").unwrap_or(&Value::Null)),
        rejected,
        top,
    }
}

fn mismatches(page: &Value, want: &Expected) -> Vec<String> {
    let strings =
        |v: &Value| -> Vec<Vec<String>> { serde_json::from_value(v.clone()).unwrap_or_default() };
    let mut out = Vec::new();
    let mut check = |what: &str, got: String, want: String| {
        if got != want {
            out.push(format!("{what}: page shows {got:?}, API says {want:?}"));
        }
    };
    check(
        "partitions",
        format!("{:?}", strings(&page["partitions"])),
        format!("{:?}", want.partitions),
    );
    check(
        "records committed",
        shown(&page["committed"]),
        want.committed.clone(),
    );
    check(
        "total lag",
        shown(&page["total_lag"]),
        want.total_lag.clone(),
    );
    check("rejected", shown(&page["rejected"]), want.rejected.clone());
    check(
        "top keys",
        format!("{:?}", strings(&page["top"])),
        format!("{:?}", want.top),
    );
    out
}

#[test]
fn status_page_shows_what_the_api_serves() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let agg = p.aggregator(&[]);
    let client = http();
    let mut truth = GroundTruth::default();

    // Keys with distinct sums, one that needs escaping, one negative, and one at i64::MAX,
    // which JavaScript numbers cannot hold exactly.
    for i in 0..12i64 {
        for _ in 0..3 {
            send_counted(
                &client,
                &ingest.base,
                &mut truth,
                &format!("page:{i}"),
                10 * i + 1,
            );
        }
    }
    send_counted(
        &client,
        &ingest.base,
        &mut truth,
        "<b>tag & \"quote\"</b>",
        95,
    );
    send_counted(&client, &ingest.base, &mut truth, "refunds", -40);
    send_counted(&client, &ingest.base, &mut truth, "big", i64::MAX - 5);
    send_counted(&client, &ingest.base, &mut truth, "big", 5);
    // Acknowledged by ingest, then quarantined by the aggregator: it would overflow "big".
    let (p_over, o_over) = increment(&client, &ingest.base, "big", 1);
    truth.landed(p_over, o_over);

    let mut page = Browser::open(&format!("{}/", agg.base), 1280, 1100);

    // Under load, the page's records/s rises above zero.
    let done = Arc::new(AtomicBool::new(false));
    let loader = std::thread::spawn({
        let (base, done) = (ingest.base.clone(), done.clone());
        move || {
            let client = http();
            let mut truth = GroundTruth::default();
            let start = Instant::now();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(180) {
                send_counted(&client, &base, &mut truth, &format!("load:{}", i % 5), 1);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            truth
        }
    });
    let busy = wait_for(
        "the page to show records/s > 0 under load",
        Duration::from_secs(90),
        || {
            let v = page.eval(READ_PAGE);
            let rate: f64 = v["rate"].as_str()?.parse().ok()?;
            (rate > 0.0).then_some(v)
        },
    );
    println!("under load the page shows {} records/s", busy["rate"]);
    std::thread::sleep(Duration::from_secs(4));
    done.store(true, Ordering::Relaxed);
    truth.merge(loader.join().expect("loader"));
    // Every acknowledged record plus the quarantined one.
    let appended = truth.acknowledged + 1;
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(60));

    // Once idle, the page shows exactly what the API serves, and the rate drops to zero.
    let start = Instant::now();
    let (shown_page, want) = loop {
        let v = page.eval(READ_PAGE);
        let want = expected(&client, &agg.base);
        let wrong = mismatches(&v, &want);
        if wrong.is_empty() && v["rate"] == "0.0" {
            break (v, want);
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the page does not match the API after 90 s:\n{}\npage: {v:#}",
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(shown_page["error"], Value::Null, "the page shows an error");
    assert!(
        shown_page["chart_points"].as_u64().unwrap() >= 3,
        "chart: {shown_page}"
    );

    // And what the API serves is the ground truth.
    assert_eq!(
        want.committed,
        appended.to_string(),
        "records committed should be every appended record"
    );
    let top: Vec<(String, i64)> = want
        .top
        .iter()
        .map(|r| (r[1].clone(), r[2].parse().unwrap()))
        .collect();
    let mut ranked: Vec<(String, i64)> = truth.sums.clone().into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(10);
    assert_eq!(top, ranked, "top keys differ from the ground truth");
    for (key, s) in &top {
        assert_eq!(sum(&client, &agg.base, key), Some(*s), "/sums/{key}");
    }
    assert_eq!(
        top[0],
        ("big".to_owned(), i64::MAX),
        "exact i64::MAX at the top"
    );
    assert!(
        top.iter().any(|(k, _)| k == "<b>tag & \"quote\"</b>"),
        "the key that needs escaping is shown as text: {top:?}"
    );
    if want.rejected != "n/a" {
        assert_eq!(want.rejected, "1", "one record overflowed");
    }

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    page.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is not a page"
    );
    println!("status page screenshot: {}", shot.display());
}
