//! Keys over a deployment's life, end to end with the real services: a client revoked in the
//! deployment file is refused without a restart (and learns why), SIGHUP reloads the list, a
//! renewed certificate is accepted, a data owner added with `keygen --add` classifies without a
//! restart of alice, and certificates are valid for about a year.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::cluster::{data, Cluster, Options, BIN};
use engine::deploy::keys::summarize_file;
use engine::io::load_inputs;
use ndarray::Array4;

const ROWS: usize = 4;

fn keygen(c: &Cluster, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .arg("keygen")
        .arg("--deployment")
        .arg(&c.config)
        .arg("--out")
        .arg(c.keys())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fingerprint(c: &Cluster, stem: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--fingerprint"])
        .arg(c.keys().join(format!("{stem}.pem")))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().unwrap().to_string()
}

fn classify(c: &Cluster, client: &str) -> Output {
    c.owner(&[
        "classify", "--remote", "digits", "--as", client, "--input", "x.npy", "--batch", "4",
    ])
}

fn classify_ok(c: &Cluster, client: &str) {
    let out = classify(c, client);
    assert!(
        out.status.success(),
        "{client}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(c: &Cluster, text: &str) {
    let mut file = std::fs::read_to_string(&c.config).unwrap();
    file.push_str(text);
    std::fs::write(&c.config, file).unwrap();
}

#[test]
fn revoke_renew_and_add_without_new_keys_for_everyone() {
    let mut c = Cluster::start(Options::default());
    let (n, x) = load_inputs(&data("digits_test_x.npy").display().to_string(), &[1, 8, 8]).unwrap();
    assert!(n >= ROWS);
    let x: Vec<f32> = x[..ROWS * 64].iter().map(|&v| v as f32).collect();
    ndarray_npy::write_npy(
        c.path("x.npy"),
        &Array4::from_shape_vec((ROWS, 1, 8, 8), x).unwrap(),
    )
    .unwrap();
    let model = data("digits_cnn.onnx").display().to_string();
    c.owner_ok(&[
        "upload", "--model", &model, "--name", "digits", "--as", "hospital",
    ]);
    classify_ok(&c, "clinic");

    // Certificates from keygen are valid for about a year.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let s = summarize_file(&c.keys().join("client-clinic.pem")).unwrap();
    let days = (s.not_after.unix_timestamp() - now) as f64 / 86400.0;
    assert!((364.9..=365.1).contains(&days), "{s}");
    assert!(s.not_before.unix_timestamp() <= now, "{s}");

    // Revoke clinic's certificate by editing the deployment file: refused within seconds, by
    // the running services, with the reason; logged once however often it retries.
    let revoked = fingerprint(&c, "client-clinic");
    append(&c, &format!("\n[keys]\nrevoked = [\"{revoked}\"]\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refusals = 0;
    while refusals < 3 {
        let out = classify(&c, "clinic");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            assert_eq!(refusals, 0, "accepted again after a refusal");
            assert!(
                Instant::now() < deadline,
                "a revoked client still classifies"
            );
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert!(err.contains("certificate revoked"), "{err}");
        refusals += 1;
    }
    for who in ["alice", "bob"] {
        assert!(c.alive(who), "{who} died");
        let log = c.log(who);
        assert_eq!(log.matches("listening on").count(), 1, "{who} restarted");
        assert_eq!(
            log.matches("revoked certificate refused").count(),
            1,
            "{who} logs a revoked client once:\n{log}"
        );
        assert!(log.contains(&revoked), "{log}");
    }
    // Other clients are not affected.
    classify_ok(&c, "lab");
    // SIGHUP reloads the list at once and does not stop the service.
    c.signal("alice", "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.log("alice").contains("SIGHUP: revocation list reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload on SIGHUP:\n{}",
            c.log("alice")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.alive("alice"), "SIGHUP stopped alice");

    // A renewed certificate (new key) is accepted by the same running services.
    let out = keygen(&c, &["--renew", "clinic"]);
    assert!(
        out.contains("client 'clinic': new certificate and key"),
        "{out}"
    );
    assert_ne!(fingerprint(&c, "client-clinic"), revoked);
    classify_ok(&c, "clinic");

    // A service renewed too: only bob restarts, with his new keys.
    let alice_key = std::fs::read(c.keys().join("alice.key")).unwrap();
    keygen(&c, &["--renew", "bob"]);
    assert_eq!(
        std::fs::read(c.keys().join("alice.key")).unwrap(),
        alice_key
    );

    // A data owner added to the deployment file gets keys from the same CA; nobody else's
    // keys change. Alice and bob follow the deployment file: the new owner connects without a
    // restart (bob restarts only for his renewed keys).
    append(
        &c,
        "\n[[data_owner]]\nname = \"newlab\"\nrole = \"client\"\n",
    );
    let out = keygen(&c, &["--add"]);
    assert!(
        out.contains("client 'newlab': new certificate and key"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(c.keys().join("alice.key")).unwrap(),
        alice_key
    );
    c.kill("bob");
    c.start_service("bob");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = classify(&c, "newlab");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the added owner is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        c.log("alice").matches("listening on").count(),
        1,
        "alice restarted"
    );
    classify_ok(&c, "clinic");
    let out = classify(&c, "lab");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
