//! How every tool of the test and benchmark crates ends, in one place: exit 0 when the run
//! passed, 1 when it ran and found a wrong result (an increment lost or doubled, a check that
//! failed), 2 when it could not run (setup failure, an error, a panic). Bad flags exit 2
//! through clap.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

/// Runs `run`; hands its figures to `report`, which prints them and says whether the run
/// passed, and turns the outcome into the exit code. An error or a panic (its message printed
/// above by the panic hook) is exit 2, with one line saying so.
pub fn finish<F>(
    run: impl FnOnce() -> anyhow::Result<F>,
    report: impl FnOnce(&F) -> anyhow::Result<bool>,
) -> ExitCode {
    let outcome = catch_unwind(AssertUnwindSafe(|| run().and_then(|f| report(&f))));
    match outcome {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("error: the run crashed (the panic is above); nothing was judged");
            ExitCode::from(2)
        }
    }
}

/// [`finish`] for figures that are printed as JSON.
pub fn finish_json<F: serde::Serialize>(
    run: impl FnOnce() -> anyhow::Result<F>,
    passed: impl FnOnce(&F) -> bool,
) -> ExitCode {
    finish(run, |f| {
        println!("{}", serde_json::to_string_pretty(f)?);
        Ok(passed(f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_wrong_and_could_not_run_are_0_1_2() {
        let code = |c: ExitCode| format!("{c:?}");
        assert_eq!(
            code(finish(|| Ok(()), |_| Ok(true))),
            code(ExitCode::SUCCESS)
        );
        assert_eq!(
            code(finish(|| Ok(()), |_| Ok(false))),
            code(ExitCode::from(1))
        );
        assert_eq!(
            code(finish(|| anyhow::bail!("no broker"), |_: &()| Ok(true))),
            code(ExitCode::from(2))
        );
        assert_eq!(
            code(finish(
                || -> anyhow::Result<()> { panic!("crash") },
                |_| Ok(true)
            )),
            code(ExitCode::from(2))
        );
        assert_eq!(
            code(finish_json(|| Ok(1u8), |n| *n == 2)),
            code(ExitCode::from(1))
        );
    }
}
