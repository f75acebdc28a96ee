//! A tansu broker process for one test: free port, temporary data directory, durable SQLite
//! storage, advertised on 127.0.0.1. It can be killed and restarted on the same data.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// Path of the tansu binary: `TALLY_TANSU_BIN`, else `$TALLY_TANSU_ROOT/bin/tansu`, else
/// `$HOME/.cache/tally/tansu-0.6.0/bin/tansu`. Panics when it is missing.
pub fn tansu_bin() -> PathBuf {
    let bin = if let Ok(b) = std::env::var("TALLY_TANSU_BIN") {
        PathBuf::from(b)
    } else {
        let root = std::env::var("TALLY_TANSU_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").expect("HOME is set"))
                    .join(".cache/tally/tansu-0.6.0")
            });
        root.join("bin/tansu")
    };
    assert!(
        bin.is_file(),
        "the tansu broker is not installed at {}: run infra/install-broker.sh (the test command does)",
        bin.display()
    );
    bin
}

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port with a new data directory.
    pub fn start() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("tally-broker-")
            .tempdir()
            .expect("cannot create the broker's data directory");
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir,
        };
        b.spawn();
        b
    }

    /// `127.0.0.1:PORT`, for `--brokers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("cannot open the broker log");
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory (tansu strips a leading '/').
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start tansu");
        self.child = Some(child);
        let port = self.port;
        wait_for("the broker to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        self.add_indexes();
    }

    /// Adds the index tansu 0.6's schema lacks (see `infra/tansu-indexes.sql`): without it
    /// every fetched record scans all stored headers.
    fn add_indexes(&self) {
        let db = self.dir.path().join("tansu.db");
        let conn = rusqlite::Connection::open(&db).expect("cannot open the broker's database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        wait_for(
            "tansu to create its schema",
            Duration::from_secs(30),
            || {
                conn.query_row(
                    "select count(*) from sqlite_master where type = 'table' and name = 'header'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
                .filter(|n| *n == 1)
            },
        );
        conn.execute_batch(include_str!("../../infra/tansu-indexes.sql"))
            .expect("cannot add the header index to the broker's database");
    }

    /// SIGKILLs the broker (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs the broker: its connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONTs a paused broker.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("broker is running").id() as i32;
        assert_eq!(
            crate::process::unsafe_kill(pid, sig),
            0,
            "kill(broker, {sig})"
        );
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let _ = crate::process::unsafe_kill(c.id() as i32, libc::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("broker directory kept: {}", self.dir.path().display());
        }
    }
}
