//! The skeleton both chaos runs share ([`drive`]): clients writing with ground truth, faults
//! from the seed until every kind has reached its target, the recovery after each fault (a
//! write acknowledged after it is folded and committed), and the final check (everything
//! acknowledged folded, lost and doubled counted apart, `replayer verify`, and a rebuild of the
//! whole log compared with the live database). What differs between the single-node run
//! ([`crate::run`]) and the cluster run ([`crate::cluster`]) is behind [`Stack`]: the
//! processes, the kinds of fault and how each is injected.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tally_testkit::process::Proc;
use tally_testkit::wait_for;

use crate::check;
use crate::load::{client, probe, ClientConfig, Truth};

/// How long a write after a fault may take to be acknowledged, and then to be folded.
const RECOVERY: Duration = Duration::from_secs(180);

/// A run's figures: faults, acknowledged, lost, doubled, recovery, verify and rebuild.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Figures {
    pub seed: u64,
    pub duration_s: f64,
    pub faults: BTreeMap<String, u64>,
    pub acknowledged: u64,
    /// Acknowledged increments counted zero times.
    pub lost: u64,
    /// Extra counts of increments counted more than once.
    pub doubled: u64,
    /// Increments never acknowledged (still retried when the run ended) and counted once.
    pub unacknowledged_counted: u64,
    pub unfinished: u64,
    pub client_retries: BTreeMap<String, u64>,
    /// Restarts the runner did because a process exited on its own (as systemd would).
    pub crash_restarts: BTreeMap<String, u64>,
    /// Per fault kind: recovery time in ms (until an acknowledged write is folded), max and mean.
    pub recovery_ms: BTreeMap<String, (f64, f64)>,
    pub verify_exit: Option<i32>,
    /// Keys whose sum in a `replayer rebuild` of the whole log differs from the live database
    /// (which was compared with the ground truth above); `None` when the rebuild failed.
    pub rebuild_differences: Option<u64>,
}

impl Figures {
    /// Takes the check's counts and the clients' acknowledgements and retries.
    pub fn record(&mut self, t: check::Tally, truth: Truth) {
        self.lost = t.lost;
        self.doubled = t.doubled;
        self.unacknowledged_counted = t.unacknowledged_counted;
        self.acknowledged = truth.acknowledged;
        self.client_retries = truth.retries;
    }

    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.unfinished == 0
            && self.verify_exit == Some(0)
            && self.rebuild_differences == Some(0)
    }
}

/// What the faults and the checks need of a run's processes.
pub(crate) trait Stack {
    /// Where clients write: ingest, or the balancer in front of it.
    fn entry(&self) -> String;
    fn db(&self) -> &Path;
    fn topic(&self) -> &str;
    /// The replayer's broker and topic flags for this stack.
    fn common(&self) -> Vec<String>;
    /// Acts as systemd's Restart=on-failure: restarts any process that exited on its own,
    /// counting it in [`Stack::crash_restarts`].
    fn supervise(&mut self) -> anyhow::Result<()>;
    fn crash_restarts(&self) -> BTreeMap<String, u64>;
    /// Injects one fault of `kind` and returns when it is over (processes restarted, links
    /// healed). `probes` is for faults that write and read back while they last.
    fn inject(&mut self, kind: &str, rng: &mut StdRng, probes: &mut Probes) -> anyhow::Result<()>;
    /// After the last fault, before the final check (e.g. every replica back in sync).
    fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The aggregators, stopped before the rebuild (SIGTERM: a final commit).
    fn aggregators(&mut self) -> Vec<&mut Proc>;
}

/// What a run is asked to do; the [`Stack`] knows how.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub seed: u64,
    /// The kinds of fault, in the order the figures list them.
    pub kinds: &'static [&'static str],
    /// Minimum faults of each kind (order of `kinds`).
    pub targets: Vec<u64>,
    /// The run lasts until every target is reached and at least this long.
    pub min_duration: Duration,
    pub max_duration: Duration,
    /// Client acknowledgements the run waits for after the last fault if it has fewer, so that
    /// how much load it carried does not depend on how fast the machine was.
    pub min_acknowledged: u64,
    /// Pause before each fault, in ms (drawn from this range).
    pub pause_ms: Range<u64>,
    pub clients: usize,
    /// Keys each client writes at a time.
    pub keys_per_client: usize,
    pub work_dir: PathBuf,
}

/// The probe writes of a run (one fresh key each) and the clients' acknowledgement count.
#[derive(Default)]
pub(crate) struct Probes {
    pub truth: Truth,
    n: u64,
    /// Every client acknowledgement so far, counted as it happens.
    pub acks: Arc<AtomicU64>,
}

impl Probes {
    /// The number of the next probe (its key is `probe-{n}`).
    pub fn next(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// Runs the scenario: clients, faults, recovery after each, the final check.
pub(crate) fn drive(plan: &Plan, s: &mut impl Stack) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(&plan.work_dir)?;
    let mut probes = Probes::default();
    let clients = Clients::start(plan, &s.entry(), probes.acks.clone());
    let faults = fault_loop(plan, s, &mut probes);
    let (mut truth, unfinished) = clients.stop();
    let mut figures = faults?;
    figures.unfinished = unfinished;
    truth.merge(probes.truth);
    final_check(plan, s, &mut figures, truth)?;
    Ok(figures)
}

/// The clients' threads, stopped together.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Truth, u64)>>,
}

impl Clients {
    fn start(plan: &Plan, base: &str, acks: Arc<AtomicU64>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..plan.clients)
            .map(|id| {
                let c = ClientConfig {
                    id,
                    base: base.to_owned(),
                    keys: plan.keys_per_client,
                    seed: plan.seed,
                    stop: stop.clone(),
                    drain: Duration::from_secs(120),
                    acks: acks.clone(),
                };
                std::thread::spawn(move || client(c))
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stops every client (each finishes the increment in hand); their ground truth merged,
    /// and how many increments were never acknowledged.
    fn stop(self) -> (Truth, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut truth = Truth::default();
        let mut unfinished = 0;
        for c in self.threads {
            let (t, u) = c.join().expect("client thread");
            truth.merge(t);
            unfinished += u;
        }
        (truth, unfinished)
    }
}

/// Faults until every kind has reached its target (and `min_duration` has passed), each
/// followed by its recovery; the figures of the faults and recoveries.
fn fault_loop(plan: &Plan, s: &mut impl Stack, probes: &mut Probes) -> anyhow::Result<Figures> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let start = Instant::now();
    let mut done = vec![0u64; plan.kinds.len()];
    let mut recovery: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    while start.elapsed() < plan.min_duration || done.iter().zip(&plan.targets).any(|(d, t)| d < t)
    {
        ensure!(
            start.elapsed() < plan.max_duration,
            "fault targets not reached within {:?}: {done:?}",
            plan.max_duration
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(plan.pause_ms.clone())));
        let kind = pick(plan, &done, &mut rng);
        let name = plan.kinds[kind];
        eprintln!(
            "chaos: {name} #{} at {:.0} s",
            done[kind] + 1,
            start.elapsed().as_secs_f64()
        );
        s.inject(name, &mut rng, probes)?;
        done[kind] += 1;
        let ms = recover(s, probes, name, done[kind])?;
        recovery.entry(name).or_default().push(ms);
        eprintln!("chaos: {name} #{} recovered in {ms:.0} ms", done[kind]);
    }
    while probes.acks.load(Ordering::Relaxed) < plan.min_acknowledged {
        ensure!(
            start.elapsed() < plan.max_duration,
            "only {} of {} client acknowledgements within {:?}",
            probes.acks.load(Ordering::Relaxed),
            plan.min_acknowledged,
            plan.max_duration
        );
        s.supervise()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    s.settle()?;
    Ok(Figures {
        seed: plan.seed,
        duration_s: start.elapsed().as_secs_f64(),
        faults: plan
            .kinds
            .iter()
            .zip(&done)
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect(),
        recovery_ms: check::max_mean(&recovery),
        ..Figures::default()
    })
}

/// A kind still short of its target, or any kind once all are reached.
fn pick(plan: &Plan, done: &[u64], rng: &mut StdRng) -> usize {
    let open: Vec<usize> = (0..plan.kinds.len())
        .filter(|i| done[*i] < plan.targets[*i])
        .collect();
    if open.is_empty() {
        rng.gen_range(0..plan.kinds.len())
    } else {
        open[rng.gen_range(0..open.len())]
    }
}

/// Recovery from the `nth` fault of `name`: the ms until a write acknowledged after it is
/// folded and committed.
fn recover(s: &mut impl Stack, probes: &mut Probes, name: &str, nth: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    s.supervise()?;
    let n = probes.next();
    let (pp, po) = probe(&s.entry(), n, &mut probes.truth, RECOVERY)
        .with_context(|| format!("no write acknowledged after {name} #{nth}"))?;
    let deadline = Instant::now() + RECOVERY;
    while !check::folded(s.db(), s.topic(), pp, po) {
        ensure!(
            Instant::now() < deadline,
            "no recovery within {RECOVERY:?} after {name} #{nth}"
        );
        s.supervise()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Everything acknowledged folded, then counted against the ground truth; `replayer verify`
/// against the log; the aggregators stopped and the whole log rebuilt and compared.
fn final_check(
    plan: &Plan,
    s: &mut impl Stack,
    figures: &mut Figures,
    truth: Truth,
) -> anyhow::Result<()> {
    let (db, topic) = (s.db().to_path_buf(), s.topic().to_owned());
    check::wait_folded(&db, &topic, &truth.max_offsets, || s.supervise())?;
    let t = check::tally(&truth, check::stored_sums(&db, &topic)?);
    figures.record(t, truth);
    figures.crash_restarts = s.crash_restarts();
    // No offset advanced past an unapplied record: the log up to the committed offsets folds
    // to exactly the stored sums.
    figures.verify_exit = check::verify(&s.common(), &db, &plan.work_dir)?;
    for a in s.aggregators() {
        a.terminate(Duration::from_secs(30));
    }
    figures.rebuild_differences =
        check::rebuild_differences(&s.common(), &db, &topic, &plan.work_dir)?;
    Ok(())
}

/// Whether `url` answers 200 within 2 s.
pub(crate) fn answers_ok(url: &str) -> bool {
    reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok_and(|r| r.status() == 200)
}

/// Waits (at most 90 s) until the process at `base` answers its health check.
pub(crate) fn wait_healthy(base: &str) {
    wait_for(
        &format!("{base} to be healthy"),
        Duration::from_secs(90),
        || answers_ok(&format!("{base}/healthz")).then_some(()),
    );
}
