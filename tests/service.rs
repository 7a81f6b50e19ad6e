//! End to end across processes: the dealer, alice and bob as `secure-serving` services (each in
//! its own network namespace where this machine allows, else on loopback), a model owner
//! uploading, clients classifying; predictions compared bit for bit with the in-process run and
//! with plaintext; persistence across restarts; deletion.

mod common;

use std::time::{Duration, Instant};

use common::argmax;
use common::cluster::{data, Cluster, Options};
use engine::io::{load_inputs, load_labels, load_onnx_model};
use ndarray::{Array1, Array4};

const ROWS: usize = 96;

/// Write the first `rows` digits (inputs and labels) into the cluster's directory; returns the
/// plaintext predictions and the labels.
fn digits(c: &Cluster, rows: usize, name: &str) -> (Vec<i64>, Vec<i64>) {
    let model = load_onnx_model(&data("digits_cnn.onnx").display().to_string()).unwrap();
    let (n, x) = load_inputs(&data("digits_test_x.npy").display().to_string(), &[1, 8, 8]).unwrap();
    let labels = load_labels(&data("digits_test_y.npy").display().to_string()).unwrap();
    // Repeat the test set to reach `rows`.
    let x: Vec<f64> = (0..rows)
        .flat_map(|r| x[(r % n) * 64..(r % n + 1) * 64].to_vec())
        .collect();
    let y: Vec<i64> = (0..rows).map(|r| labels[r % n]).collect();
    let plain: Vec<i64> = model
        .forward_f64(&x, rows)
        .unwrap()
        .chunks(10)
        .map(argmax)
        .collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    ndarray_npy::write_npy(
        c.path(&format!("{name}_x.npy")),
        &Array4::from_shape_vec((rows, 1, 8, 8), x32).unwrap(),
    )
    .unwrap();
    ndarray_npy::write_npy(c.path(&format!("{name}_y.npy")), &Array1::from(y.clone())).unwrap();
    (plain, y)
}

/// A long classify request (one row per batch of `long_x.npy`) by client "clinic", running.
fn spawn_long(c: &Cluster) -> std::process::Child {
    c.owner_spawn(&[
        "classify",
        "--remote",
        "digits",
        "--as",
        "clinic",
        "--input",
        "long_x.npy",
        "--batch",
        "1",
    ])
}

fn read_preds(c: &Cluster, name: &str) -> Vec<i64> {
    let a: Array1<i64> = ndarray_npy::read_npy(c.path(name)).unwrap();
    a.to_vec()
}

fn json_field(out: &str, key: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[key].clone()
}

fn upload(c: &Cluster, name: &str) -> String {
    let model = data("digits_cnn.onnx").display().to_string();
    c.owner_ok(&[
        "upload", "--model", &model, "--name", name, "--as", "hospital",
    ])
}

fn classify_remote(c: &Cluster, client: &str, name: &str, set: &str, out: &str) -> String {
    c.owner_ok(&[
        "classify",
        "--remote",
        name,
        "--as",
        client,
        "--input",
        &format!("{set}_x.npy"),
        "--labels",
        &format!("{set}_y.npy"),
        "--batch",
        "16",
        "--output",
        out,
        "--json",
    ])
}

#[test]
fn upload_classify_score_restart_delete() {
    let mut c = Cluster::start(Options::default());
    let (plain, labels) = digits(&c, ROWS, "d");
    let up = upload(&c, "digits");
    assert!(
        up.contains("uploaded 'digits' as model owner 'hospital'"),
        "{up}"
    );
    let listed = c.owner_ok(&["models", "--as", "hospital"]);
    assert!(
        listed.contains("digits  owner hospital  input [1, 8, 8]  10 classes"),
        "{listed}"
    );

    // Two clients at once, each with its own request.
    let a = c.owner_spawn(&[
        "classify",
        "--remote",
        "digits",
        "--as",
        "clinic",
        "--input",
        "d_x.npy",
        "--labels",
        "d_y.npy",
        "--batch",
        "16",
        "--output",
        "p_clinic.npy",
        "--json",
    ]);
    let lab = classify_remote(&c, "lab", "digits", "d", "p_lab.npy");
    let out = a.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clinic = String::from_utf8_lossy(&out.stdout).into_owned();
    let remote = read_preds(&c, "p_clinic.npy");
    assert_eq!(remote, plain, "remote predictions vs plaintext");
    assert_eq!(read_preds(&c, "p_lab.npy"), plain);

    // The in-process run of the same build gives the same predictions.
    let model = data("digits_cnn.onnx").display().to_string();
    let local = c.local_ok(&[
        "classify",
        "--model",
        &model,
        "--input",
        "d_x.npy",
        "--labels",
        "d_y.npy",
        "--batch",
        "16",
        "--output",
        "p_local.npy",
    ]);
    let _ = local;
    assert_eq!(
        read_preds(&c, "p_local.npy"),
        remote,
        "remote vs in-process"
    );

    // The correct count goes to the model owner only, once per request.
    let correct = plain.iter().zip(&labels).filter(|(p, l)| p == l).count();
    for out in [&clinic, &lab] {
        let request = json_field(out, "request").as_str().unwrap().to_string();
        let e = c.owner(&["score", "--request", &request, "--as", "clinic"]);
        assert!(!e.status.success(), "a client cannot run score");
        // Another model owner is refused by both parties, as for an id never used.
        let e = c.owner(&["score", "--request", &request, "--as", "pharma"]);
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(
            err.contains(&format!(
                "no correct count of request {request} is kept for model owner 'pharma'"
            )),
            "{err}"
        );
        let s = c.owner_ok(&["score", "--request", &request, "--as", "hospital"]);
        assert!(
            s.contains(&format!("request {request}: {correct} correct ")),
            "{s} vs {correct}"
        );
        let again = c.owner(&["score", "--request", &request, "--as", "hospital"]);
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(err.contains("no correct count of request"), "{err}");
    }
    assert!(json_field(&clinic, "party_rounds")[0].as_u64().unwrap() > 0);

    // Two uploads of one name at once: one wins, the other is refused, and the winner's
    // records survive a restart.
    let model_path = data("digits_cnn.onnx").display().to_string();
    let twins: Vec<_> = (0..2)
        .map(|_| {
            c.owner_spawn(&[
                "upload",
                "--model",
                &model_path,
                "--name",
                "twin",
                "--as",
                "hospital",
            ])
        })
        .collect();
    let ok = twins
        .into_iter()
        .map(|t| t.wait_with_output().unwrap().status.success())
        .filter(|&s| s)
        .count();
    assert_eq!(
        ok, 1,
        "exactly one of two concurrent uploads of a name succeeds"
    );

    // A correct count not fetched yet: both parties persist their shares of it (off the
    // request's path, so wait until the records are there) and answer for it after a restart.
    let pending = classify_remote(&c, "clinic", "digits", "d", "p_pending.npy");
    let pending = json_field(&pending, "request")
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["alice", "bob"]
        .iter()
        .all(|p| c.path(&format!("{p}-data/scores/{pending}.score")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "the correct count was never persisted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Restart both parties and the dealer: the model is served again without a new upload.
    for who in ["alice", "bob", "dealer"] {
        c.kill(who);
        c.start_service(who);
    }
    classify_remote(&c, "clinic", "digits", "d", "p_after.npy");
    assert_eq!(read_preds(&c, "p_after.npy"), plain);
    let s = c.owner_ok(&["score", "--request", &pending, "--as", "hospital"]);
    assert!(
        s.contains(&format!("request {pending}: {correct} correct ")),
        "{s} vs {correct}"
    );
    // Fetched: both parties forget it, on disk too.
    let record = |p: &str| c.path(&format!("{p}-data/scores/{pending}.score"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["alice", "bob"].iter().any(|p| record(p).exists()) {
        assert!(Instant::now() < deadline, "a fetched count's record stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = c.owner_ok(&["models", "--as", "hospital"]);
    assert!(listed.contains("twin  owner hospital"), "{listed}");

    // A second upload under the same name is refused; deletion removes it everywhere.
    let again = c.owner(&[
        "upload", "--model", &model, "--name", "digits", "--as", "hospital",
    ]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("model 'digits' already exists"), "{err}");
    let e = c.owner(&["models", "--delete", "digits", "--as", "pharma"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("belongs to model owner 'hospital'; model owner 'pharma' may not delete it"),
        "{err}"
    );
    assert!(c
        .owner_ok(&["models", "--as", "hospital"])
        .contains("digits"));
    let e = c.owner(&["models", "--delete", "digits", "--as", "hospital"]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let listed = c.owner_ok(&["models", "--as", "hospital"]);
    assert!(
        !listed.contains("digits ") && listed.contains("twin "),
        "{listed}"
    );
    let gone = c.owner(&[
        "classify", "--remote", "digits", "--input", "d_x.npy", "--as", "clinic",
    ]);
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("no model 'digits' is served"), "{err}");
    // The name is free again.
    upload(&c, "digits");
    for who in ["alice", "bob", "dealer"] {
        assert!(c.alive(who), "{who} died");
    }
    let log = c.log("alice");
    assert!(
        log.contains("request done") && log.contains("kind=\"classify\""),
        "{log}"
    );
}

#[test]
fn a_killed_or_stalled_party_is_named_and_the_others_keep_serving() {
    let mut c = Cluster::start(Options {
        timeout_secs: 3,
        ..Default::default()
    });
    let (plain, _) = digits(&c, ROWS, "d");
    // A long request: one row per batch, many batches.
    let (_, _) = digits(&c, 3000, "long");
    upload(&c, "digits");

    for (victim, signal) in [("alice", None), ("bob", Some("STOP"))] {
        let start = Instant::now();
        let child = spawn_long(&c);
        std::thread::sleep(Duration::from_millis(800));
        let hit = Instant::now();
        match signal {
            None => c.kill(victim),
            Some(s) => c.signal(victim, s),
        }
        let out = child.wait_with_output().unwrap();
        let waited = hit.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the request must fail ({:?})",
            start.elapsed()
        );
        assert!(err.contains(victim), "the error names {victim}: {err}");
        assert!(
            waited < Duration::from_secs(3 + 5),
            "error after {waited:?}, timeout 3 s"
        );
        eprintln!(
            "{victim} ({signal:?}): client error after {waited:?}: {}",
            err.trim()
        );
        // The other party fails the request with an error naming the victim, within the
        // timeout, and logs it.
        let survivor = if victim == "alice" { "bob" } else { "alice" };
        let deadline = Instant::now() + Duration::from_secs(3 + 5);
        let line = loop {
            let log = c.log(survivor);
            if let Some(l) = log.lines().rev().find(|l| l.contains("request failed")) {
                if l.contains("kind=\"classify\"") {
                    break l.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{survivor} logs no failure:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(line.contains(victim), "{survivor}: {line}");
        eprintln!("{survivor}: {line}");
        // The survivors keep running; once the victim is back, new requests succeed.
        for who in ["alice", "bob", "dealer"] {
            if who != victim {
                assert!(c.alive(who), "{who} died");
            }
        }
        match signal {
            None => c.start_service(victim),
            Some(_) => c.signal(victim, "CONT"),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = c.owner(&[
                "classify", "--remote", "digits", "--as", "lab", "--input", "d_x.npy", "--output",
                "p.npy",
            ]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no success after {victim} came back: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(read_preds(&c, "p.npy"), plain);
    }
    let other = if c.log("bob").contains("request failed") {
        "bob"
    } else {
        "alice"
    };
    assert!(
        c.log(other).contains("request failed"),
        "the surviving party logs the failure"
    );
}

#[test]
fn damaged_or_foreign_model_files_are_refused_whole() {
    let mut c = Cluster::start(Options::default());
    upload(&c, "digits");
    for who in ["alice", "bob", "dealer"] {
        c.kill(who);
    }
    let root = c.path("");
    let file = |who: &str| {
        let ext = if who == "dealer" { "dealer" } else { "model" };
        root.join(format!("{who}-data/digits.{ext}"))
    };
    let good: Vec<Vec<u8>> = ["alice", "bob", "dealer"]
        .iter()
        .map(|w| std::fs::read(file(w)).unwrap())
        .collect();
    // One flipped bit in the middle of each record.
    for (i, who) in ["alice", "bob", "dealer"].into_iter().enumerate() {
        let mut bad = good[i].clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        std::fs::write(file(who), &bad).unwrap();
        let out = c.start_must_fail(who);
        assert!(
            out.contains("checksum mismatch") && out.contains("digits."),
            "{who}: {out}"
        );
        // Truncated.
        std::fs::write(file(who), &good[i][..good[i].len() - 7]).unwrap();
        let out = c.start_must_fail(who);
        assert!(out.contains("checksum mismatch"), "{who}: {out}");
        std::fs::write(file(who), &good[i]).unwrap();
    }
    // Bob's record in alice's directory: another party's shares.
    std::fs::write(file("alice"), &good[1]).unwrap();
    let out = c.start_must_fail("alice");
    assert!(out.contains("belongs to the other party"), "{out}");
    // The dealer's record where a party's belongs: a record of another kind.
    std::fs::write(file("alice"), &good[2]).unwrap();
    let out = c.start_must_fail("alice");
    assert!(
        out.contains("a record of kind 'dealer', expected 'party'"),
        "{out}"
    );
    std::fs::write(file("alice"), &good[0]).unwrap();
    for who in ["dealer", "alice", "bob"] {
        c.start_service(who);
    }
    assert!(c
        .owner_ok(&["models", "--as", "hospital"])
        .contains("digits"));
}

#[test]
fn past_the_request_limit_owners_get_busy_at_once() {
    let c = Cluster::start(Options {
        max_requests: 1,
        ..Default::default()
    });
    let (plain, _) = digits(&c, ROWS, "d");
    digits(&c, 1500, "long");
    upload(&c, "digits");
    let long = spawn_long(&c);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let busy = c.owner(&[
        "classify", "--remote", "digits", "--as", "lab", "--input", "d_x.npy",
    ]);
    let waited = start.elapsed();
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success() && err.contains("busy"), "{err}");
    assert!(waited < Duration::from_secs(5), "busy after {waited:?}");
    let out = long.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The limit is free again.
    c.owner_ok(&[
        "classify", "--remote", "digits", "--as", "lab", "--input", "d_x.npy", "--output", "p.npy",
    ]);
    assert_eq!(read_preds(&c, "p.npy"), plain);
}

/// Material made ahead of requests: after a request of a shape, the parties make the next
/// batches' material in the background; later requests of that shape use it (no dealer round
/// trip inside the request: fewer rounds) and still answer exactly.
#[test]
fn material_made_ahead_is_used_by_later_requests() {
    use engine::nn::{Layer, ModelBounds, Sequential};
    use engine::service::local::{LocalConfig, LocalDeployment};
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let model = Sequential::new(vec![
        Layer::linear(
            3,
            4,
            (0..12).map(|i| i as f64 / 10.0 - 0.5).collect(),
            vec![0.1; 4],
        )
        .unwrap(),
        Layer::ReLU,
        Layer::linear(
            4,
            3,
            (0..12).map(|i| 0.3 - i as f64 / 20.0).collect(),
            vec![0.0; 3],
        )
        .unwrap(),
    ])
    .unwrap();
    let x = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
    let plain: Vec<i64> = model
        .forward_f64(&x, 2)
        .unwrap()
        .chunks(3)
        .map(argmax)
        .collect();
    let mut owner = d.model_owner().unwrap();
    owner
        .upload(
            "m",
            &model,
            &engine::FixedPoint::default(),
            &ModelBounds::default(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut client = d.client().unwrap();
    let first = client.classify("m", &x, Some(&[0, 1]), 2).unwrap();
    assert_eq!(first.predictions, plain);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.classify("m", &x, Some(&[0, 1]), 2).unwrap();
        assert_eq!(r.predictions, plain);
        if r.stats.party_rounds[1] < first.stats.party_rounds[1] {
            eprintln!(
                "bob's rounds: {} on demand, {} with material made ahead",
                first.stats.party_rounds[1], r.stats.party_rounds[1]
            );
            let count = owner.score(r.stats.request).unwrap();
            let want = plain.iter().zip([0, 1]).filter(|(p, l)| **p == *l).count() as u64;
            assert_eq!(count, want);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "material made ahead was never used"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Uploads and deletes of one name racing each other: alice alone orders them, so each round
/// exactly one of several concurrent uploads wins (never none because each party let a different
/// one claim the name), the others are refused with a reason, and the winner serves.
#[test]
fn concurrent_uploads_of_one_name_exactly_one_wins() {
    use engine::nn::{Layer, ModelBounds, Sequential};
    use engine::service::local::{LocalConfig, LocalDeployment};
    use std::sync::{Arc, Barrier};
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let model = Sequential::new(vec![Layer::linear(
        2,
        2,
        vec![1.0, 0.0, 0.0, 1.0],
        vec![0.0, 0.0],
    )
    .unwrap()])
    .unwrap();
    const RACERS: usize = 6;
    for round in 0..8 {
        let barrier = Arc::new(Barrier::new(RACERS));
        let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..RACERS)
                .map(|_| {
                    let mut owner = d.model_owner().unwrap();
                    owner.connect().unwrap();
                    let (barrier, model) = (barrier.clone(), &model);
                    s.spawn(move || {
                        barrier.wait();
                        owner
                            .upload(
                                "twin",
                                model,
                                &engine::FixedPoint::default(),
                                &ModelBounds::default(),
                                &mut |_, _| {},
                            )
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert!(
                e.contains("being uploaded or deleted") || e.contains("already exists"),
                "round {round}: {e}"
            );
        }
        let mut client = d.client().unwrap();
        let r = client.classify("twin", &[0.1, 0.9], None, 1).unwrap();
        assert_eq!(r.predictions, vec![1]);
        d.model_owner().unwrap().delete("twin").unwrap();
    }
}
