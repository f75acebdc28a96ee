//! Tally's binaries (and tools such as Prometheus) as child processes of a test, with their logs in files, and signals
//! (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) to inject faults.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// Path of a Tally binary built by `cargo build` (debug unless `TALLY_PROFILE=release`).
/// Panics when missing: the test command builds them first.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let profile = std::env::var("TALLY_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running Tally process.
pub struct Proc {
    name: String,
    cmd: Command,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin(name)` with `args` and `envs`, logging to `log_dir/NAME.log`.
    pub fn start(name: &str, args: &[String], envs: &[(&str, String)], log_dir: &Path) -> Proc {
        Proc::launch(Command::new(bin(name)), name, args, envs, log_dir)
    }

    /// Starts another program (a tool on PATH, such as Prometheus) the same way, logging to
    /// `log_dir/NAME.log`.
    pub fn start_program(
        program: &Path,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> Proc {
        Proc::launch(Command::new(program), name, args, envs, log_dir)
    }

    /// Like [`Proc::start`], inside network namespace `netns` (`ip netns exec`, which execs the
    /// binary itself: signals reach it, not a wrapper).
    pub fn start_in(
        netns: &str,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin(name));
        Proc::launch(cmd, name, args, envs, log_dir)
    }

    fn launch(
        mut cmd: Command,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> Proc {
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("TALLY_TEST_LOG")
                    .unwrap_or_else(|_| "info,warp::filters::trace=warn".into()),
            )
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let label = crate::unique(name);
        let mut p = Proc {
            name: label.clone(),
            cmd,
            child: None,
            log: log_dir.join(format!("{label}.log")),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cannot open process log");
        self.cmd
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        self.child = Some(
            self.cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name)),
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("process is running").id() as i32
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe_kill(self.pid(), sig);
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.name);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("process is running");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop_signal(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn cont_signal(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Starts it again with the same command line.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process cannot die of SIGKILL until continued.
            let _ = unsafe_kill(c.id() as i32, libc::SIGCONT);
        }
        self.kill();
    }
}

#[allow(unsafe_code)]
pub(crate) fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) }
}

/// A memory figure of process `pid` from `/proc/PID/status` in MB (`field` such as `"VmRSS:"`
/// or `"VmHWM:"`), or None when the process or the field is gone.
pub fn memory_mb(pid: i32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
