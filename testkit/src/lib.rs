//! Test support for Tally's end-to-end tests: a real Apache Kafka broker (one node, or a
//! three-node KRaft cluster) per test on free ports with its own data directory ([`broker`]),
//! or one that lets in only SASL_SSL logins with ACLs ([`secured`]),
//! Tally's binaries as child processes that can be killed and restarted ([`process`]), HTTP
//! helpers with ground-truth bookkeeping ([`client`]), and values that tell a loss from a
//! double on one key ([`ledger`]), and the 0/1/2 exit codes every tool keeps ([`exit`]).
//!
//! What must not live here: any Tally logic. Tests check the product through its processes and
//! its HTTP API, so this crate depends on none of Tally's crates.
//!
//! A missing broker is a loud failure, never a skip: run `infra/install-kafka.sh`.

pub mod broker;
pub mod client;
pub mod exit;
pub mod ledger;
pub mod netns;
pub mod process;
pub mod secured;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent directory")
        .to_path_buf()
}

/// A program on PATH, or a loud failure naming how to install it (`install`); scripts/test.sh
/// installs every tool the tests need, so a missing one is never a skip.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed, so this check cannot run: {install} (scripts/test.sh does)"
        )
    })
}

/// A unique name for topics and groups, so tests sharing a broker never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
