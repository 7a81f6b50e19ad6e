//! Runs the `embed` example binary (built by `cargo test` with the other examples) and checks
//! that it succeeds: it compares its secure result with plaintext and exits non-zero otherwise.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/embed`, next to this test's own `deps/` directory.
fn example_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let p = profile_dir
        .join("examples")
        .join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    p.exists().then_some(p)
}

#[test]
fn embed_example_runs_and_matches_plaintext() {
    let Some(path) = example_path() else {
        // `cargo test --test embed_example` alone does not build examples; the workspace run does.
        assert!(
            std::env::var("CI").is_err(),
            "the embed example binary was not built (run `cargo test --release --workspace`)"
        );
        eprintln!("skip: examples/embed not built (run the whole workspace's tests)");
        return;
    };
    let out = Command::new(&path)
        .output()
        .expect("start the embed example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "embed example failed: {:?}",
        out.status
    );
    assert!(stdout.contains("secure result matches plaintext"));
    assert!(stdout.contains("alice: sent") && stdout.contains("bob: sent"));
}
