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
    // Each wrong answer names its request, the row, the expected class and the answer.
    let details = r["mismatch_details"].as_array().expect("details");
    assert_eq!(details.len(), 5, "{r}");
    for d in details {
        assert_eq!(d["row"].as_u64(), Some(ROWS as u64 - 1), "{r}");
        assert_eq!(d["expected"].as_i64(), Some(wrong[ROWS - 1]), "{r}");
        assert_eq!(d["answer"].as_i64(), Some(expect[ROWS - 1]), "{r}");
        assert!(d["request"].as_u64().is_some_and(|id| id != 0), "{r}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "row {} expected class {}, answered {}",
            ROWS - 1,
            wrong[ROWS - 1],
            expect[ROWS - 1]
        )),
        "{stderr}"
    );
}

/// Issue 21's soak, short and bounded: 20 clients for 20 s against a deployment with material
/// made ahead (pool 2, the default) and labels, every answer compared bit for bit with the
/// in-process predictions. Some requests must have run on material made ahead, or the soak
/// would not test what it is for.
#[test]
fn soak_with_material_made_ahead_and_labels_gives_no_wrong_answer() {
    let c = Cluster::start(Options {
        log_filter: Some("info,engine::service::party=debug".into()),
        ..Default::default()
    });
    let model = data("digits_cnn.onnx").display().to_string();
    c.owner_ok(&[
        "upload", "--model", &model, "--name", "digits", "--as", "hospital",
    ]);
    let rows = 8;
    let (_, x) = load_inputs(&data("digits_test_x.npy").display().to_string(), &[1, 8, 8]).unwrap();
    let x32: Vec<f32> = x[..rows * 64].iter().map(|&v| v as f32).collect();
    ndarray_npy::write_npy(
        c.path("x8.npy"),
        &Array4::from_shape_vec((rows, 1, 8, 8), x32).unwrap(),
    )
    .unwrap();
    let y: Array1<i64> = ndarray_npy::read_npy(data("digits_test_y.npy")).unwrap();
    ndarray_npy::write_npy(
        c.path("y8.npy"),
        &Array1::from(y.iter().take(rows).copied().collect::<Vec<_>>()),
    )
    .unwrap();
    c.local_ok(&[
        "classify", "--model", &model, "--input", "x8.npy", "--output", "e8.npy",
    ]);
    let out = c.owner(&[
        "bench-service",
        "--model",
        "digits",
        "--as",
        "clinic",
        "--input",
        "x8.npy",
        "--labels",
        "y8.npy",
        "--expect",
        "e8.npy",
        "--clients",
        "20",
        "--seconds",
        "20",
        "--json",
    ]);
    let r = json(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (key, want) in [("mismatches", 0), ("errors", 0), ("lost", 0)] {
        assert_eq!(r[key].as_u64(), Some(want), "{key} in {r}");
    }
    let answered = r["answered"].as_u64().unwrap();
    assert!(answered >= 100, "only {answered} answers in 20 s: {r}");
    let ahead = c.log("alice").matches("ahead=1").count();
    assert!(
        ahead > 0,
        "no request ran on material made ahead ({answered} answered)"
    );
    eprintln!("soak: {answered} answers, all correct; {ahead} batches on material made ahead");
}
