//! Running the suite and recording it: machine, date and commit, appended to BENCHMARKS.md.

use std::path::Path;

use crate::suite::{markdown, run, Config};

/// The trimmed standard output of a command, empty when it cannot run.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A one-line description of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{} cores ({cpu}), {mem}, shared", sh("nproc", &[]))
}

/// Runs the suite, prints the markdown, appends it to `out`; returns whether every stage was
/// exact.
pub fn run_and_record(cfg: Config, out: Option<&Path>) -> anyhow::Result<bool> {
    let res = run(cfg.clone())?;
    let md = markdown(
        &res,
        &cfg,
        &machine(),
        &sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        &sh("git", &["rev-parse", "--short", "HEAD"]),
    );
    print_and_append(&md, out)?;
    Ok(res.exact())
}

/// Prints a run's section and appends it to `out` (BENCHMARKS.md) when given.
pub fn print_and_append(md: &str, out: Option<&Path>) -> anyhow::Result<()> {
    println!("{md}");
    if let Some(out) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        writeln!(f, "\n{md}")?;
    }
    Ok(())
}
