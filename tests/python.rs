//! The Python package's pytest suite (`python/tests`), run by the README's test command.
//!
//! With `SECURE_SERVING_PYTHON` set (CI: a fresh virtual environment where `.ci/run` installed
//! the wheel it built, numpy and pytest), the suite runs in that interpreter against the
//! installed package. Without it, the extension is built here (`cargo build --release -p
//! secure-serving-python`) and put, with the package's Python files, on `PYTHONPATH` of
//! `python3`; a `python3` without numpy and pytest skips the suite with a line saying so, and
//! with `CI=true` fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (the `secure-serving` package's directory).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `python` imports every module of `modules`.
fn imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Build the extension module (release, as an extension: libpython left to the interpreter)
/// and lay out the importable package `secure_serving` under `dir`.
fn stage_package(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "secure-serving-python"])
        .args(["--features", "extension-module"])
        .current_dir(repo())
        .status()
        .expect("run cargo build for the Python extension");
    assert!(status.success(), "building the Python extension failed");
    // The binary this test runs beside is target/release/secure-serving: the library lies there.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_secure-serving"));
    let lib = bin
        .parent()
        .expect("the binary's directory")
        .join("libsecure_serving_native.so");
    assert!(lib.is_file(), "{} was not built", lib.display());
    let pkg = dir.join("secure_serving");
    std::fs::create_dir_all(&pkg).expect("create the package directory");
    let src = repo().join("python/package/secure_serving");
    for entry in std::fs::read_dir(&src).expect("read the package's sources") {
        let path = entry.expect("a package file").path();
        if path.is_file() {
            let name = path.file_name().expect("a file name");
            std::fs::copy(&path, pkg.join(name)).expect("copy a package file");
        }
    }
    std::fs::copy(&lib, pkg.join("_native.abi3.so")).expect("copy the extension");
}

#[test]
fn python_package_pytest_suite() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: the Python suite is run on Linux only");
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let installed = std::env::var_os("SECURE_SERVING_PYTHON").map(PathBuf::from);
    let python = installed.clone().unwrap_or_else(|| "python3".into());
    let needed = match installed {
        Some(_) => "numpy, pytest, secure_serving",
        None => "numpy, pytest",
    };
    if !imports(&python, needed) {
        let msg = format!(
            "{} cannot import {needed}: the Python suite needs them (`.ci/run` shows how to \
             install them in a virtual environment; SECURE_SERVING_PYTHON names its python)",
            python.display()
        );
        assert!(!ci, "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let staged = tempfile::tempdir().expect("a temporary directory");
    let mut pytest = Command::new(&python);
    if installed.is_none() {
        stage_package(staged.path());
        pytest.env("PYTHONPATH", staged.path());
    }
    let status = pytest
        .args([
            "-m",
            "pytest",
            "python/tests",
            "-q",
            "-ra",
            "-p",
            "no:cacheprovider",
        ])
        .env("SECURE_SERVING_BIN", env!("CARGO_BIN_EXE_secure-serving"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(repo())
        .status()
        .expect("run pytest");
    assert!(status.success(), "the Python suite failed ({status})");
}
