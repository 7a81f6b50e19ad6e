//! Least disclosure (issue 18, rows 7 and 8): the out-of-range flag of a model with calibrated
//! bounds goes to the model owner only (the parties never open it; a client learns only that its
//! request failed, and only so often an hour), and each data owner lists only what it may use.

mod common;

use common::cluster::{data, Cluster, Options};
use engine::deploy::{Deployment, Role};
use engine::error::ErrorKind;
use engine::nn::{Layer, ModelBounds, Sequential};
use engine::service::client::RemoteOwner;
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::service::net::Net;
use engine::FixedPoint;
use ndarray::{Array1, Array2, Array4};
use rand::{Rng, SeedableRng};

/// A small MLP (6 inputs, 3 classes), 12 inputs it was calibrated on, and its calibrated
/// bounds (checked at run time: range-checked).
fn calibrated_mlp() -> (Sequential, Vec<f64>, ModelBounds) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let (d, h, c) = (6, 5, 3);
    let mut lin = |i: usize, o: usize| {
        Layer::linear(
            i,
            o,
            (0..i * o).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            (0..o).map(|_| rng.gen_range(-0.1..0.1)).collect(),
        )
        .unwrap()
    };
    let model = Sequential::new(vec![lin(d, h), Layer::ReLU, lin(h, c)]).unwrap();
    let n = 12;
    let x: Vec<f64> = (0..n * d)
        .map(|i| ((i * 7919) % 200) as f64 / 100.0 - 1.0)
        .collect();
    let cal = engine::nn::range::calibrate(&model, &x, n, 1.2).unwrap();
    let bounds = ModelBounds {
        input_bound: 8.0,
        calibrated: Some(cal),
    };
    (model, x, bounds)
}

/// Row 7: with batch 1, the out-of-range bit once reached the client and both parties: a
/// per-input oracle on hidden activations. Now the parties never open it: a flagged batch's
/// predictions are withheld inside the computation, the client learns only that its request
/// failed, and the model owner's listing counts the batches.
#[test]
fn the_out_of_range_flag_goes_to_the_model_owner_only() {
    let (model, x, bounds) = calibrated_mlp();
    let (n, c) = (12, 3);
    let dep = LocalDeployment::start(LocalConfig {
        pool: 0,
        ..Default::default()
    })
    .unwrap();
    let mut owner = dep.model_owner().unwrap();
    owner
        .upload(
            "cal",
            &model,
            &FixedPoint::default(),
            &bounds,
            &mut |_, _| {},
        )
        .unwrap();
    let mut client = dep.client().unwrap();
    let info = client.models().unwrap();
    assert!(info[0].range_checked, "{info:?}");
    // In range: the predictions are plaintext's.
    let plain: Vec<i64> = model
        .forward_f64(&x, n)
        .unwrap()
        .chunks(c)
        .map(|r| (0..c).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64)
        .collect();
    let r = client.classify("cal", &x, None, 1).unwrap();
    assert_eq!(r.predictions, plain);
    let count = |o: &mut engine::service::client::RemoteOwner| {
        o.models().unwrap()[0]
            .out_of_range
            .expect("the owner's count")
    };
    assert_eq!(count(&mut owner), 0);
    // Out of range, one row per batch: the client learns that its request failed, not why.
    let big: Vec<f64> = x.iter().map(|v| v * 6.0).collect();
    let e = client.classify("cal", &big, None, 1).unwrap_err();
    let text = e.to_string();
    eprintln!("client: {text}");
    assert_eq!(e.kind(), ErrorKind::Refused, "{text}");
    assert!(
        !text.contains("range") && !text.contains("calibrat") && !text.contains("overflow"),
        "the client is told why: {text}"
    );
    let withheld: u64 = text
        .split("predictions of ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(withheld >= 1);
    // The model owner is told how many batches left their range.
    assert_eq!(count(&mut owner), withheld);
    // A client does not see the count (nor the owner, nor the parameters).
    let seen = client.models().unwrap();
    assert_eq!(seen[0].out_of_range, None);
    assert_eq!(seen[0].owner, None);
    assert_eq!(seen[0].parameters, None);
    // The deployment serves on.
    assert_eq!(
        client.classify("cal", &x, None, 4).unwrap().predictions,
        plain
    );
}

/// Row 8: every data owner once saw every model, its owner and its parameter count. A client
/// sees what it needs to classify; a model owner lists its own models only. Also: `models`
/// without `--as` in a deployment of several data owners asks for it, the printed `score` hint
/// is a command that runs as printed, and range-checked batches are limited per client and hour.
#[test]
fn data_owners_list_only_what_they_may_use() {
    let c = Cluster::start(Options {
        timeout_secs: 5,
        netns: false,
        limits: "range_checked_batches_per_hour = 6".into(),
        ..Default::default()
    });
    let (n, x) =
        engine::io::load_inputs(&data("digits_test_x.npy").display().to_string(), &[1, 8, 8])
            .unwrap();
    let labels = engine::io::load_labels(&data("digits_test_y.npy").display().to_string()).unwrap();
    assert!(n >= 8);
    let x32: Vec<f32> = x[..8 * 64].iter().map(|&v| v as f32).collect();
    ndarray_npy::write_npy(
        c.path("x.npy"),
        &Array4::from_shape_vec((8, 1, 8, 8), x32).unwrap(),
    )
    .unwrap();
    ndarray_npy::write_npy(c.path("y.npy"), &Array1::from(labels[..8].to_vec())).unwrap();
    let model = data("digits_cnn.onnx").display().to_string();
    c.owner_ok(&[
        "upload", "--model", &model, "--name", "digits", "--as", "hospital",
    ]);
    // A model whose calibrated bounds are checked at run time, and rows within them.
    let (mlp, mx, bounds) = calibrated_mlp();
    let d = Deployment::load(&c.config).unwrap();
    let net = Net::new(d, Role::ModelOwner("hospital".into()), Some(&c.keys())).unwrap();
    RemoteOwner::new(net)
        .unwrap()
        .upload(
            "checked",
            &mlp,
            &FixedPoint::default(),
            &bounds,
            &mut |_, _| {},
        )
        .unwrap();
    for (file, rows) in [("m.npy", 8usize), ("m4.npy", 4)] {
        let v: Vec<f32> = mx[..rows * 6].iter().map(|&v| v as f32).collect();
        ndarray_npy::write_npy(c.path(file), &Array2::from_shape_vec((rows, 6), v).unwrap())
            .unwrap();
    }
    let own = c.owner_ok(&["models", "--as", "hospital"]);
    assert!(
        own.contains("digits  owner hospital") && own.contains("parameters"),
        "{own}"
    );
    assert!(own.contains("0 batches out of range"), "{own}");
    let other = c.owner_ok(&["models", "--as", "pharma"]);
    assert!(
        !other.contains("digits") && !other.contains("checked"),
        "another model owner sees hospital's models: {other}"
    );
    let client = c.owner_ok(&["models", "--as", "clinic"]);
    assert!(
        client.contains("digits  input [1, 8, 8]  10 classes"),
        "{client}"
    );
    assert!(
        !client.contains("owner") && !client.contains("parameters"),
        "a client sees the owner or the size: {client}"
    );
    assert!(
        client.contains("checked") && client.contains("range-checked"),
        "{client}"
    );
    // Without --as, several data owners: asked for it, with the names.
    let out = c.owner(&["models"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("say which one asks with --as NAME"),
        "{err}"
    );
    assert!(err.contains("hospital") && err.contains("clinic"), "{err}");
    // The score hint runs as printed (with the deployment file).
    let out = c.owner_ok(&[
        "classify", "--remote", "digits", "--as", "clinic", "--input", "x.npy", "--labels", "y.npy",
    ]);
    let hint = out
        .lines()
        .find(|l| l.contains("secure-serving score"))
        .unwrap_or_else(|| panic!("{out}"));
    let cmd = hint.split("secure-serving ").nth(1).unwrap();
    assert!(cmd.contains("--config"), "{hint}");
    let args: Vec<String> = cmd
        .split_whitespace()
        .map(|a| a.replace("MODEL_OWNER", "hospital"))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = std::process::Command::new(common::cluster::BIN)
        .args(&args)
        .current_dir(c.path(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{hint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Range-checked batches: 6 an hour per client (8 one-row batches are refused whole).
    let run = |who: &str, rows_file: &str| {
        c.owner(&[
            "classify", "--remote", "checked", "--as", who, "--input", rows_file, "--batch", "1",
        ])
    };
    let out = run("clinic", "m.npy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("limits.range_checked_batches_per_hour"),
        "{err}"
    );
    let ok = run("clinic", "m4.npy");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let again = run("clinic", "m4.npy");
    assert!(!again.status.success(), "the hour's budget was spent");
    // Another client has its own budget.
    let other = run("lab", "m4.npy");
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}
