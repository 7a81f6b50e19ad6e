//! The `secure-serving` binary as a test runs it: one place for the command, its environment and
//! the checks every CLI test repeats (exit status, which stream a message is on).

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The `secure-serving` command with no arguments yet (add them with `.args`).
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secure-serving"))
}

/// A `secure-serving` command with `args`, not yet run.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = bin();
    c.args(args);
    c
}

/// Run `secure-serving` with `args` and return what it printed and its status.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command(args)
        .output()
        .expect("the secure-serving binary runs")
}

/// Run `secure-serving` with `args`; it must succeed. Returns its standard output.
pub fn ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Run `secure-serving` with `args`; it must exit with status 1 (a refusal) having printed
/// `message` on standard error. Returns standard error.
pub fn refused<I, S>(args: I, message: &str) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(message),
        "{args:?}: expected '{message}' in: {err}"
    );
    err
}
