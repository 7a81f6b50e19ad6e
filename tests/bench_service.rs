//! `secure-serving bench-service` against a loopback deployment (three service processes): two
//! clients, five requests of the digits CNN; the report counts every request and compares every
//! answer with the in-process predictions bit for bit (and catches wrong expectations).

mod common;

use common::cluster::{data, Cluster, Options};
use engine::io::load_inputs;
use ndarray::{Array1, Array4};

/// Rows per request (odd, not a multiple of the batch).
const ROWS: usize = 7;

fn json(out: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn bench_service_counts_every_request_and_checks_every_answer() {
    let c = Cluster::start(Options {
        netns: false,
        ..Default::default()
    });
    let model = data("digits_cnn.onnx").display().to_string();
    c.owner_ok(&[
        "upload", "--model", &model, "--name", "digits", "--as", "hospital",
    ]);
    let (_, x) = load_inputs(&data("digits_test_x.npy").display().to_string(), &[1, 8, 8]).unwrap();
    let x32: Vec<f32> = x[..ROWS * 64].iter().map(|&v| v as f32).collect();
    ndarray_npy::write_npy(
        c.path("x.npy"),
        &Array4::from_shape_vec((ROWS, 1, 8, 8), x32).unwrap(),
    )
    .unwrap();
    c.local_ok(&[
        "classify",
        "--model",
        &model,
        "--input",
        "x.npy",
        "--output",
        "expect.npy",
        "--batch",
        "4",
    ]);
    let expect: Array1<i64> = ndarray_npy::read_npy(c.path("expect.npy")).unwrap();
    let run = |expect_file: &str| {
        c.owner(&[
            "bench-service",
            "--model",
            "digits",
            "--as",
            "clinic",
            "--input",
            "x.npy",
            "--batch",
            "4",
            "--clients",
            "2",
            "--requests",
            "5",
            "--expect",
            expect_file,
            "--json",
        ])
    };

    let out = run("expect.npy");
    assert!(
        out.status.success(),
        "bench-service failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json(&out.stdout);
    for (key, want) in [
        ("started", 5),
        ("answered", 5),
        ("errors", 0),
        ("busy", 0),
        ("mismatches", 0),
        ("lost", 0),
        ("clients", 2),
        ("rows_per_request", ROWS as u64),
    ] {
        assert_eq!(r[key].as_u64(), Some(want), "{key} in {r}");
    }
    assert!(r["p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["p50_ms"].as_f64() <= r["p99_ms"].as_f64(), "{r}");
    assert!(r["party_rounds"][0].as_u64().unwrap() > 0, "{r}");
    assert!(r["client_bytes_sent"].as_u64().unwrap() > 0, "{r}");

    // A wrong expectation (one prediction changed) is caught in every answer, and the run fails.
    let mut wrong = expect.clone();
    wrong[ROWS - 1] = (wrong[ROWS - 1] + 1) % 10;
    ndarray_npy::write_npy(c.path("wrong.npy"), &wrong).unwrap();
    let out = run("wrong.npy");
    assert!(!out.status.success(), "a wrong answer must fail the run");
    let r = json(&out.stdout);
    assert_eq!(r["mismatches"].as_u64(), Some(5), "{r}");
    assert_eq!(r["answered"].as_u64(), Some(5), "{r}");
}
