//! Layers, the tutorial flow, model import and the CLI, against plaintext evaluation.

mod common;

use std::process::Command;

use common::cli;
use common::test_rng;
use engine::io::{load_features, load_labels, load_safetensors_model};
use engine::nn::plain::{vgg16_head, Layer, Sequential};
use engine::nn::Wiring;
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::PartyId;
use ndarray::{Array1, Array2};
use rand::Rng;
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("secure-serving-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn mlp(rng: &mut impl Rng, dims: &[usize]) -> Sequential {
    let mut layers = Vec::new();
    for (i, w) in dims.windows(2).enumerate() {
        let b = 1.0 / (w[0] as f64).sqrt();
        layers.push(
            Layer::linear(
                w[0],
                w[1],
                (0..w[0] * w[1]).map(|_| rng.gen_range(-b..b)).collect(),
                (0..w[1]).map(|_| rng.gen_range(-b..b)).collect(),
            )
            .unwrap(),
        );
        if i + 2 < dims.len() {
            layers.push(Layer::ReLU);
            layers.push(Layer::Dropout);
        }
    }
    layers.insert(0, Layer::Flatten);
    Sequential::new(layers).unwrap()
}

fn argmax_rows(v: &[f64], classes: usize) -> Vec<i64> {
    v.chunks(classes)
        .map(|r| (0..classes).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64)
        .collect()
}

#[test]
fn every_layer_and_the_tutorial_flow_match_plaintext() {
    let mut rng = test_rng("tutorial_flow");
    for dims in [
        vec![1usize, 1],
        vec![7, 5, 3],
        vec![33, 17, 10],
        vec![20, 64, 64, 7],
    ] {
        let model = mlp(&mut rng, &dims);
        let (din, classes) = (dims[0], *dims.last().unwrap());
        let n = 37;
        let x: Vec<f64> = (0..n * din).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let plain = model.forward_f64(&x, n).unwrap();
        let plain_pred = argmax_rows(&plain, classes);
        let labels: Vec<i64> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    plain_pred[i]
                } else {
                    rng.gen_range(0..classes as i64)
                }
            })
            .collect();
        let mut s = common::computation(
            engine::LocalConfig::default(),
            engine::FixedPoint::default(),
        )
        .unwrap();
        let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
        let logits = s.logits_for_client(&shared, &x, 16).unwrap();
        let mut clf = SecureClassifier::upload(
            s.deployment(),
            &model,
            &engine::FixedPoint::default(),
            &Default::default(),
        )
        .unwrap();
        // Error bound: inputs and weights are rounded to 2^-17, each truncation adds < 2^-16;
        // with these widths and |w| <= 1/sqrt(in) the accumulated error stays far below 1e-3.
        let max_err = logits
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(max_err < 1e-3, "dims {dims:?}: max logit error {max_err}");
        let r = clf
            .classify(&x, Some(&labels), &ClassifyOptions { batch: 8 })
            .unwrap();
        // Bad classification inputs are refused before anything is shared.
        let opts = ClassifyOptions::default();
        if din > 1 {
            let e = clf.classify(&x[1..], None, &opts).unwrap_err().to_string();
            assert!(
                e.contains(&format!("input values are not rows of {din} features")),
                "{e}"
            );
        }
        let e = clf
            .classify(&x, Some(&labels[1..]), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{} labels for {n} inputs", n - 1)),
            "{e}"
        );
        let mut bad = labels.clone();
        bad[3] = classes as i64;
        let e = clf.classify(&x, Some(&bad), &opts).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "label {classes} at index 3 is not a class index in 0..{classes}"
            )),
            "{e}"
        );
        let mut nan = x.clone();
        nan[0] = f64::NAN;
        let e = clf.classify(&nan, None, &opts).unwrap_err().to_string();
        assert!(
            e.contains("row 0, column 0: value NaN is not finite"),
            "{e}"
        );
        // Predictions can only differ where plaintext logits are within the error bound.
        let preds = r.predictions.clone();
        for i in 0..n {
            if preds[i] != plain_pred[i] {
                let row = &plain[i * classes..(i + 1) * classes];
                let gap = (row[preds[i] as usize] - row[plain_pred[i] as usize]).abs();
                assert!(
                    gap < 2e-3,
                    "row {i}: prediction {} vs {}",
                    preds[i],
                    plain_pred[i]
                );
            }
        }
        let enc_correct = preds.iter().zip(&labels).filter(|(a, b)| a == b).count() as u64;
        assert_eq!(
            r.correct,
            Some(enc_correct),
            "revealed count matches the client's predictions"
        );
        assert_eq!(r.batches, n.div_ceil(8));
    }
}

#[test]
fn vgg_head_traffic_grows_with_activations_not_weights() {
    let mut rng = test_rng("vgg_traffic");
    let (input, hidden, classes, batch) = (512usize, 128usize, 7usize, 4usize);
    let model = vgg16_head(input, hidden, classes, &mut rng);
    let mut s = common::computation(
        engine::LocalConfig::default(),
        engine::FixedPoint::default(),
    )
    .unwrap();
    let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
    let x: Vec<f64> = (0..batch * input)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    let xh = s.share(PartyId::Client, &[batch, input], &x).unwrap();
    let (m, xid) = (shared.clone(), xh.id());
    let [t, _] = s
        .run(move |p| {
            p.preprocess(&m.material_specs(batch, 16))?;
            let before = p.traffic();
            m.forward(p, &p.kept(xid)?)?;
            Ok(p.traffic().since(&before).online())
        })
        .unwrap();
    // Per Linear: E = X - a (batch x in) and the truncation opening (batch x out); per ReLU of
    // n elements: two masked words per AND word (level 0: n; level j: ceil(n/2^j) for G and,
    // below the top, for P), the packed masked sign bits, and one payload word per element.
    let b = batch as u64;
    let linear = |i: u64, o: u64| 8 * b * (i + o);
    let relu = |w: u64| {
        let n = b * w;
        let mut and_words = n;
        for j in 1..=6 {
            and_words += n.div_ceil(1 << j) * if j < 6 { 2 } else { 1 };
        }
        16 * and_words + 8 * n.div_ceil(64) + 8 * n
    };
    let (i, h, c) = (input as u64, hidden as u64, classes as u64);
    let want = linear(i, h) + relu(h) + linear(h, h) + relu(h) + linear(h, c);
    // Every message also carries the material check word.
    let check = 8 * engine::party::CHECK_WORDS_PER_MESSAGE * t.messages;
    assert_eq!(t.bytes_sent, want + check);
    assert_eq!(t.rounds, 2 + 8 + 2 + 8 + 2);
    // The formula has no weight-sized term: a batch moves less than the weights' own size.
    assert!(t.bytes_sent < 8 * model.parameters() as u64);
}

fn write_model(path: &std::path::Path, model: &Sequential, prefix: &str, dtype: Dtype) {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        if let Layer::Linear {
            in_features,
            out_features,
            weight,
            bias,
        } = l
        {
            let enc = |v: &[f64]| -> Vec<u8> {
                match dtype {
                    Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
                    Dtype::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    Dtype::F16 => v
                        .iter()
                        .flat_map(|x| half::f16::from_f64(*x).to_le_bytes())
                        .collect(),
                    Dtype::BF16 => v
                        .iter()
                        .flat_map(|x| half::bf16::from_f64(*x).to_le_bytes())
                        .collect(),
                    _ => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
                }
            };
            bufs.push((
                format!("{prefix}{i}.weight"),
                vec![*out_features, *in_features],
                enc(weight),
            ));
            bufs.push((format!("{prefix}{i}.bias"), vec![*out_features], enc(bias)));
        }
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    serialize_to_file(views, &None, path).unwrap();
}

#[test]
fn model_import_round_trips_and_reports_bad_files() {
    let mut rng = test_rng("model_import");
    let model = mlp(&mut rng, &[6, 5, 3]);
    let arch = "flatten,linear,relu,dropout,linear";
    let p64 = tmp("m64.safetensors");
    write_model(&p64, &model, "classifier.", Dtype::F64);
    let loaded = load_safetensors_model(p64.to_str().unwrap(), arch, "classifier.").unwrap();
    assert_eq!(loaded, model);
    let p32 = tmp("m32.safetensors");
    write_model(&p32, &model, "", Dtype::F32);
    let loaded = load_safetensors_model(p32.to_str().unwrap(), arch, "").unwrap();
    for (a, b) in loaded.layers.iter().zip(&model.layers) {
        if let (Layer::Linear { weight: wa, .. }, Layer::Linear { weight: wb, .. }) = (a, b) {
            for (x, y) in wa.iter().zip(wb) {
                assert_eq!(*x, *y as f32 as f64);
            }
        }
    }
    for (dtype, round) in [
        (
            Dtype::F16,
            (|x: f64| half::f16::from_f64(x).to_f64()) as fn(f64) -> f64,
        ),
        (Dtype::BF16, |x: f64| half::bf16::from_f64(x).to_f64()),
    ] {
        let ph = tmp(&format!("m{dtype:?}.safetensors"));
        write_model(&ph, &model, "", dtype);
        let loaded = load_safetensors_model(ph.to_str().unwrap(), arch, "").unwrap();
        for (a, b) in loaded.layers.iter().zip(&model.layers) {
            if let (
                Layer::Linear {
                    weight: wa,
                    bias: ba,
                    ..
                },
                Layer::Linear {
                    weight: wb,
                    bias: bb,
                    ..
                },
            ) = (a, b)
            {
                assert!(
                    wa.iter().zip(wb).all(|(x, y)| *x == round(*y)),
                    "{dtype:?} weights"
                );
                assert!(
                    ba.iter().zip(bb).all(|(x, y)| *x == round(*y)),
                    "{dtype:?} biases"
                );
            }
        }
    }
    let path = p64.to_str().unwrap();
    let err = |r: engine::Result<Sequential>| r.unwrap_err().to_string();
    let e = err(load_safetensors_model(path, arch, ""));
    assert!(e.contains("tensor '1.weight' is missing"), "{e}");
    let e = err(load_safetensors_model(
        path,
        "flatten,linear,relu,dropout,linear,linear",
        "classifier.",
    ));
    assert!(e.contains("tensor 'classifier.5.weight' is missing"), "{e}");
    let e = err(load_safetensors_model(
        path,
        "flatten,linear,relu,linear,dropout",
        "classifier.",
    ));
    assert!(e.contains("'classifier.3.weight' is missing"), "{e}");
    let e = err(load_safetensors_model(
        path,
        "flatten,linear,gelu",
        "classifier.",
    ));
    assert!(e.contains("unknown layer 'gelu' at position 2"), "{e}");
    let pi = tmp("mi32.safetensors");
    write_model(&pi, &model, "", Dtype::I32);
    let e = err(load_safetensors_model(pi.to_str().unwrap(), arch, ""));
    assert!(e.contains("tensor '1.weight' has dtype I32"), "{e}");
    let garbage = tmp("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let e = err(load_safetensors_model(garbage.to_str().unwrap(), arch, ""));
    assert!(e.contains("not a valid safetensors file"), "{e}");
    let e = err(load_safetensors_model(
        "/nonexistent/model.safetensors",
        arch,
        "",
    ));
    assert!(
        e.contains("/nonexistent/model.safetensors: No such file"),
        "{e}"
    );
    // Wrong bias shape.
    let bad = Sequential {
        input: vec![2],
        wiring: Wiring::chain(1),
        layers: vec![Layer::Linear {
            in_features: 2,
            out_features: 2,
            weight: vec![0.0; 4],
            bias: vec![0.0; 2],
        }],
    };
    let pb = tmp("badbias.safetensors");
    write_model(&pb, &bad, "", Dtype::F64);
    let bytes = std::fs::read(&pb).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("0.weight").unwrap();
    let bias3 = vec![0u8; 24];
    serialize_to_file(
        vec![
            (
                "0.weight".to_string(),
                TensorView::new(Dtype::F64, w.shape().to_vec(), w.data()).unwrap(),
            ),
            (
                "0.bias".to_string(),
                TensorView::new(Dtype::F64, vec![3], &bias3).unwrap(),
            ),
        ],
        &None,
        &pb,
    )
    .unwrap();
    let e = err(load_safetensors_model(pb.to_str().unwrap(), "linear", ""));
    assert!(
        e.contains("tensor '0.bias' has shape [3]; expected [2]"),
        "{e}"
    );
    // Consecutive Linear layers whose widths do not chain.
    let chain = Sequential {
        input: vec![2],
        wiring: Wiring::chain(2),
        layers: vec![
            Layer::Linear {
                in_features: 2,
                out_features: 3,
                weight: vec![0.0; 6],
                bias: vec![0.0; 3],
            },
            Layer::Linear {
                in_features: 4,
                out_features: 1,
                weight: vec![0.0; 4],
                bias: vec![0.0; 1],
            },
        ],
    };
    let pc = tmp("chain.safetensors");
    write_model(&pc, &chain, "", Dtype::F64);
    let e = err(load_safetensors_model(
        pc.to_str().unwrap(),
        "linear,linear",
        "",
    ));
    assert!(
        e.contains("tensor '1.weight' expects 4 input features but the previous Linear produces 3"),
        "{e}"
    );
    // A NaN inside a weight, and a weight that is not 2-D.
    let nanw = Sequential {
        input: vec![2],
        wiring: Wiring::chain(1),
        layers: vec![Layer::Linear {
            in_features: 2,
            out_features: 1,
            weight: vec![0.5, f64::NAN],
            bias: vec![0.0],
        }],
    };
    let pn = tmp("nan.safetensors");
    write_model(&pn, &nanw, "", Dtype::F32);
    let e = err(load_safetensors_model(pn.to_str().unwrap(), "linear", ""));
    assert!(
        e.contains("tensor '0.weight' has a non-finite value (NaN) at index 1"),
        "{e}"
    );
    let flat = vec![0u8; 16];
    let p1 = tmp("rank1.safetensors");
    serialize_to_file(
        vec![
            (
                "0.weight".to_string(),
                TensorView::new(Dtype::F64, vec![2], &flat).unwrap(),
            ),
            (
                "0.bias".to_string(),
                TensorView::new(Dtype::F64, vec![2], &flat).unwrap(),
            ),
        ],
        &None,
        &p1,
    )
    .unwrap();
    let e = err(load_safetensors_model(p1.to_str().unwrap(), "linear", ""));
    assert!(
        e.contains("tensor '0.weight' has shape [2]; a Linear weight is [out, in]"),
        "{e}"
    );
    // Weights outside the fixed-point range are refused when sharing.
    let huge = Sequential::new(vec![Layer::linear(1, 1, vec![1e9], vec![0.0]).unwrap()]).unwrap();
    let mut s = common::computation(
        engine::LocalConfig::default(),
        engine::FixedPoint::default(),
    )
    .unwrap();
    let e = s
        .share_model(PartyId::ModelOwner, &huge)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 0 weight: value 1000000000 at index 0 is outside the fixed-point range"),
        "{e}"
    );
}

#[test]
fn npy_inputs_are_validated() {
    let good = tmp("x.npy");
    ndarray_npy::write_npy(
        &good,
        &Array2::<f32>::from_shape_fn((3, 4), |(i, j)| (i + j) as f32),
    )
    .unwrap();
    let (n, data) = load_features(good.to_str().unwrap(), 4).unwrap();
    assert_eq!((n, data[5]), (3, 2.0));
    let e = load_features(good.to_str().unwrap(), 5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("inputs have 4 features per row, the model expects 5"),
        "{e}"
    );
    let nan = tmp("nan.npy");
    let mut a = Array2::<f64>::zeros((2, 3));
    a[[1, 2]] = f64::NAN;
    ndarray_npy::write_npy(&nan, &a).unwrap();
    let e = load_features(nan.to_str().unwrap(), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("value NaN at row 1, column 2 is not finite"),
        "{e}"
    );
    let labels = tmp("y.npy");
    ndarray_npy::write_npy(&labels, &Array1::from(vec![1i64, 0, 2])).unwrap();
    assert_eq!(
        load_labels(labels.to_str().unwrap()).unwrap(),
        vec![1, 0, 2]
    );
    let e = load_labels(good.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("wrong number of dimensions: shape [3, 4] has 2, expected a 1-D int64"),
        "{e}"
    );
    let junk = tmp("junk.npy");
    std::fs::write(&junk, b"\x93NUMPY garbage").unwrap();
    let e = load_features(junk.to_str().unwrap(), 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported .npy version 32"), "{e}");
}

#[test]
fn cli_classifies_files_end_to_end() {
    let mut rng = test_rng("cli");
    let model = mlp(&mut rng, &[8, 6, 4]);
    let mp = tmp("cli_model.safetensors");
    write_model(&mp, &model, "classifier.", Dtype::F32);
    let n = 40;
    let x: Vec<f64> = (0..n * 8).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let xp = tmp("cli_x.npy");
    ndarray_npy::write_npy(&xp, &Array2::from_shape_vec((n, 8), x32.clone()).unwrap()).unwrap();
    // The model reads the f32 file, so compare with plaintext on the f32-rounded inputs.
    let loaded = load_safetensors_model(
        mp.to_str().unwrap(),
        "flatten,linear,relu,dropout,linear",
        "classifier.",
    )
    .unwrap();
    let xr: Vec<f64> = x32.iter().map(|v| *v as f64).collect();
    let plain = argmax_rows(&loaded.forward_f64(&xr, n).unwrap(), 4);
    let yp = tmp("cli_y.npy");
    ndarray_npy::write_npy(&yp, &Array1::from(plain.clone())).unwrap();
    let out = tmp("cli_pred.npy");
    let run = cli::bin()
        .args([
            "classify",
            "--model",
            mp.to_str().unwrap(),
            "--arch",
            "flatten,linear,relu,dropout,linear",
            "--prefix",
            "classifier.",
        ])
        .args([
            "--input",
            xp.to_str().unwrap(),
            "--labels",
            yp.to_str().unwrap(),
            "--batch",
            "16",
        ])
        .args(["--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let preds = load_labels(out.to_str().unwrap()).unwrap();
    let agree = preds.iter().zip(&plain).filter(|(a, b)| a == b).count();
    assert!(
        stdout.contains(&format!("Accuracy: {agree}/{n}")),
        "{stdout}"
    );
    assert!(agree >= n - 1, "{agree}/{n} agree");
    assert!(
        stdout.contains("alice: sent") && stdout.contains("rounds"),
        "{stdout}"
    );
    // Bad input: wrong feature count gives a clear error and exit code 1.
    let bad = cli::bin()
        .args([
            "classify",
            "--model",
            mp.to_str().unwrap(),
            "--arch",
            "flatten,linear,relu,dropout,linear",
        ])
        .args(["--prefix", "classifier.", "--input", yp.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("wrong number of dimensions: shape [40] has 1, expected a 2-D"),
        "{err}"
    );
    for transport in ["channels", "tcp"] {
        let demo = cli::run(["demo", "--transport", transport]);
        let out = String::from_utf8_lossy(&demo.stdout);
        assert!(
            demo.status.success() && out.contains("Test set: Accuracy: 1/1 (100%)"),
            "{transport}: {out}"
        );
    }
}

/// The examples run as processes (quick sizes) so CI exercises them.
#[test]
fn examples_run() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    for (name, args) in [
        ("linear_1x1", vec![]),
        ("secure_classification", vec![]),
        ("vgg16_head", vec!["256", "64", "7", "40", "16"]),
        ("digits_cnn", vec!["64"]),
        ("resnet_small", vec!["64"]),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            panic!(
                "example binary {} not built (cargo test builds examples)",
                path.display()
            );
        }
        let out = Command::new(&path).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
