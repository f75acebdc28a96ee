//! Every read answered 200 is checked against the ledger ([`tally_testkit::ledger`]): while
//! the load runs ([`watch`]) and once it has stopped ([`every_key_through_every_member`]).
//! A database that holds a key's partition answers a prefix of the log: no request counted
//! twice, none counted that was never sent, and, with the read-your-writes token of the key's
//! last acknowledged write, every request acknowledged before the read was sent. Once the
//! owners have folded everything, a read without a token from such a database equals the
//! ground truth exactly. A database that does not hold the partition fails these: it answers
//! what it folded of the partition before it moved away (or nothing, 404), forever.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_testkit::client::http;
use tally_testkit::ledger::{Counted, KeyLedger};

use super::members::Acked;

/// What reads showed.
#[derive(Debug, Default)]
pub struct Seen {
    /// 200 answers, each checked.
    pub ok: u64,
    /// 200 answers (or 404s of keys with acknowledged writes) no database holding the key's
    /// partition could give, described.
    pub wrong: Vec<String>,
    /// Over those answers: requests they should count and do not, and counts beyond one of a
    /// request (or of one never sent), apart.
    pub lost: u64,
    pub doubled: u64,
    /// 503 `owner_not_shared`.
    pub refused: u64,
    /// Anything else (503 during rebalances, 504, a member down).
    pub other: u64,
    /// Key → the members that answered it 200 (after the load).
    pub answered: BTreeMap<String, usize>,
}

/// One read of `key` through `base`, with the token of the key's last acknowledged write when
/// `token`: the status, the sum (200) and the error code (otherwise); `None` when the member
/// did not answer.
fn read(
    c: &reqwest::blocking::Client,
    base: &str,
    key: &str,
    token: Option<&str>,
) -> Option<(u16, Option<i64>, String)> {
    let mut q = vec![];
    if let Some(t) = token {
        q = vec![("min_offset", t), ("wait_ms", "3000")];
    }
    let r = c.get(format!("{base}/sums/{key}")).query(&q).send().ok()?;
    let status = r.status().as_u16();
    let body: Value = r.json().ok()?;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Some((status, body["sum"].as_i64(), code))
}

impl Seen {
    /// Checks an answer to a read of `key` sent when the ledger said `before` (acknowledged
    /// requests) and answered when it said `after` (requests sent). `token`: the answer must
    /// count every request acknowledged before the read (it waited for them, or they were all
    /// folded before it was sent).
    fn check(
        &mut self,
        base: &str,
        key: &str,
        token: bool,
        answer: Option<(u16, Option<i64>, String)>,
        before: KeyLedger,
        after: KeyLedger,
    ) {
        let Some((status, sum, code)) = answer else {
            self.other += 1;
            return;
        };
        match (status, sum) {
            (200, Some(sum)) => {
                self.ok += 1;
                let ledger = KeyLedger {
                    acked: if token { before.acked } else { 0 },
                    sent: after.sent | after.acked,
                };
                let mut c = Counted::default();
                c.count(ledger, sum);
                self.lost += c.lost;
                self.doubled += c.doubled;
                if c.lost > 0 || c.doubled > 0 {
                    self.wrong.push(format!(
                        "{base} answered {key} = {sum}: {} lost, {} doubled",
                        c.lost, c.doubled
                    ));
                }
            }
            (404, _) if token && before.acked != 0 => {
                self.lost += u64::from(before.acked.count_ones());
                self.wrong.push(format!(
                    "{base} answered {key} not found after its token: all its requests lost"
                ));
            }
            (503, _) if code == "owner_not_shared" => self.refused += 1,
            _ => self.other += 1,
        }
    }
}

/// Reads running through members while the load runs, until [`Watch::finish`].
pub struct Watch {
    stop: Arc<AtomicBool>,
    members: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<Seen>,
}

/// Reads the keys the load wrote, one after another, through each of `members` in turn, each
/// once without and once with its token, checking every answer.
pub fn watch(members: &[&str], acked: &Arc<Mutex<Acked>>) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let bases = Arc::new(Mutex::new(
        members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
    ));
    let (s, b, acked) = (stop.clone(), bases.clone(), acked.clone());
    let thread = std::thread::spawn(move || {
        let c = http();
        let mut seen = Seen::default();
        let mut i = 0usize;
        while !s.load(Ordering::Relaxed) {
            let pick = {
                let a = acked.lock().unwrap();
                let n = a.ledgers.len();
                (n > 0)
                    .then(|| {
                        let (key, l) = a.ledgers.iter().nth(i % n).unwrap();
                        // A key whose first request is not acknowledged yet has no token.
                        let token =
                            format!("{}:{}", a.partition_of.get(key)?, a.last_offset.get(key)?);
                        Some((key.clone(), *l, token))
                    })
                    .flatten()
            };
            i = i.wrapping_add(7);
            let Some((key, before, token)) = pick else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let members = b.lock().unwrap().clone();
            for base in &members {
                for token in [None, Some(token.as_str())] {
                    let answer = read(&c, base, &key, token);
                    let after = acked.lock().unwrap().ledgers[&key];
                    seen.check(base, &key, token.is_some(), answer, before, after);
                }
            }
        }
        seen
    });
    Watch {
        stop,
        members: bases,
        thread,
    }
}

impl Watch {
    /// Reads through `member` too from now on.
    pub fn add(&self, member: &str) {
        self.members.lock().unwrap().push(member.to_owned());
    }

    /// Stops the reads; what they showed.
    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Once the load has stopped, key by key: first through the members in turn with its token
/// until one answers 200 (its owner has folded every acknowledged request of it; 503
/// `owner_unknown` and 504 retried for up to 90 s), then through each member without a token:
/// every 200 is checked as in [`watch`] and held to every acknowledged request, so it must
/// equal the ground truth exactly. [`Seen::answered`] counts the members that answered 200.
pub fn every_key_through_every_member(members: &[&str], acked: &Acked) -> Seen {
    let c = http();
    let mut seen = Seen::default();
    for (key, ledger) in &acked.ledgers {
        let token = format!("{}:{}", acked.partition_of[key], acked.last_offset[key]);
        let deadline = Instant::now() + Duration::from_secs(90);
        for base in members.iter().cycle() {
            let answer = read(&c, base, key, Some(&token));
            let ok = answer.as_ref().is_some_and(|a| a.0 == 200);
            seen.check(base, key, true, answer, *ledger, *ledger);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no member answered {key} with its token within 90 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answered = 0;
        for base in members {
            let answer = read(&c, base, key, None);
            answered += usize::from(answer.as_ref().is_some_and(|a| a.0 == 200));
            seen.check(base, key, true, answer, *ledger, *ledger);
        }
        seen.answered.insert(key.clone(), answered);
    }
    seen
}
