//! ONNX import: a small CNN (conv, batch norm, max and average pooling, dropout, linear) on
//! scikit-learn's digits, made by tests/data/make_onnx.py with reference outputs from the model's
//! definition in numpy; and the refusals (unsupported op, branching graph, truncated file, input shapes).

mod common;

use common::argmax;
use engine::io::{load_inputs, load_labels, load_onnx_model};
use engine::nn::plain::Layer;
use engine::nn::{ClassifyOptions, SecureClassifier};
use engine::{BackendKind, PartyId, Session, SessionConfig};
use ndarray::Array2;
use ndarray_npy::read_npy;

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn digits_cnn_imports_and_matches_onnx_reference() {
    let model = load_onnx_model(&data("digits_cnn.onnx")).unwrap();
    assert_eq!(model.input, vec![1, 8, 8]);
    let names: Vec<String> = model.layers.iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "Conv2d(1, 4, kernel_size=[3, 3], stride=[1, 1], padding=[1, 1])",
            "ReLU",
            "MaxPool2d(kernel_size=[2, 2], stride=[2, 2], padding=[0, 0])",
            "Conv2d(4, 8, kernel_size=[3, 3], stride=[1, 1], padding=[1, 1])",
            "ReLU",
            "AvgPool2d(kernel_size=[2, 2], stride=[2, 2], padding=[0, 0])",
            "Flatten",
            "Linear(32, 10)",
        ],
        "BatchNormalization folds into the first Conv; Dropout and Identity vanish"
    );
    let (n, x) = load_inputs(&data("digits_test_x.npy"), &[1, 8, 8]).unwrap();
    assert!(n >= 8);
    let want: Array2<f64> = read_npy(data("digits_logits8.npy")).unwrap();
    let got = model.forward_f64(&x[..8 * 64], 8).unwrap();
    // The reference evaluates in f32, the engine's plaintext model in f64 (batch norm folded):
    // logits of magnitude ~10 agree to f32 accumulation error.
    for (g, w) in got.iter().zip(want.iter()) {
        assert!(
            (g - w).abs() < 2e-3,
            "plaintext logit {g} vs onnx reference {w}"
        );
    }
}

#[test]
fn encrypted_predictions_equal_plaintext_predictions() {
    let model = load_onnx_model(&data("digits_cnn.onnx")).unwrap();
    let (n, x) = load_inputs(&data("digits_test_x.npy"), &[1, 8, 8]).unwrap();
    let labels = load_labels(&data("digits_test_y.npy")).unwrap();
    let rows = 48.min(n);
    let x = &x[..rows * 64];
    let plain = model.forward_f64(x, rows).unwrap();
    let plain_pred: Vec<i64> = plain.chunks(10).map(argmax).collect();
    let mut backends = vec![BackendKind::Cpu];
    if std::env::var("CI").as_deref() == Ok("true")
        || Session::new(SessionConfig {
            backend: BackendKind::Gpu,
            ..Default::default()
        })
        .is_ok()
    {
        backends.push(BackendKind::Gpu);
    } else {
        eprintln!("SKIP gpu onnx: no adapter");
    }
    for backend in backends {
        let mut s = Session::new(SessionConfig {
            backend,
            ..Default::default()
        })
        .unwrap();
        let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
        let mut c = SecureClassifier::new(&mut s, shared);
        let report = c
            .classify(
                x,
                Some(&labels[..rows]),
                &ClassifyOptions {
                    batch: 16,
                    reveal_predictions: true,
                },
            )
            .unwrap();
        assert_eq!(
            report.predictions.as_deref(),
            Some(&plain_pred[..]),
            "{backend:?}"
        );
        let plain_correct = plain_pred
            .iter()
            .zip(&labels[..rows])
            .filter(|(p, l)| p == l)
            .count() as u64;
        assert_eq!(report.correct, Some(plain_correct));
    }
}

fn import_err(name: &str) -> String {
    load_onnx_model(&data(name)).unwrap_err().to_string()
}

#[test]
fn bad_onnx_graphs_are_refused_with_the_node_and_op() {
    // A Sigmoid in the middle of the graph: refused by the node that reads it, naming both
    // and saying what to do.
    let e = import_err("unsupported_op.onnx");
    assert!(
        e.contains("node '/features/2/Relu' (Relu): reads the output of node '/features/2/Sigmoid' (Sigmoid); Softmax, LogSoftmax and Sigmoid are supported only as the model's last op"),
        "{e}"
    );
    assert!(e.contains("remove it from forward"), "{e}");
    // The residual Add of two branches is a graph now: it imports, and both branches read
    // the batch norm's output (folded into the convolution).
    let m = load_onnx_model(&data("branching.onnx")).unwrap();
    let add = m
        .layers
        .iter()
        .position(|l| matches!(l, Layer::Add))
        .unwrap();
    assert_eq!(m.wiring.inputs(add).len(), 2);
    assert!(!m.wiring.is_chain());
    let bytes = std::fs::read(data("digits_cnn.onnx")).unwrap();
    let dir = std::env::temp_dir().join(format!("onnx-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Truncated files: every cut either fails to decode or leaves an incomplete graph.
    for cut in [1, 17, bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
        let p = dir.join(format!("cut{cut}.onnx"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let r = load_onnx_model(p.to_str().unwrap());
        assert!(
            r.is_err(),
            "a file cut at {cut} of {} bytes imports",
            bytes.len()
        );
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with(p.to_str().unwrap()), "{e}");
    }
    let e = load_onnx_model("/nonexistent/m.onnx")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/m.onnx: No such file"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn input_shapes_are_checked() {
    let dir = std::env::temp_dir().join(format!("onnx-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.npy");
    ndarray_npy::write_npy(&p, &ndarray::Array4::<f32>::zeros((2, 1, 9, 8))).unwrap();
    let e = load_inputs(p.to_str().unwrap(), &[1, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("inputs have shape [2, 1, 9, 8]; the model expects [N, 1, 8, 8]"),
        "{e}"
    );
    ndarray_npy::write_npy(&p, &ndarray::Array2::<f32>::zeros((2, 64))).unwrap();
    let e = load_inputs(p.to_str().unwrap(), &[1, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "wrong number of dimensions: shape [2, 64] has 2, expected a 4-D float32/float64 array [N, C, H, W]"
        ),
        "{e}"
    );
    // A shared batch whose size does not fit the model's samples.
    let model = load_onnx_model(&data("digits_cnn.onnx")).unwrap();
    let mut s = Session::new(SessionConfig::default()).unwrap();
    let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
    let mut c = SecureClassifier::new(&mut s, shared);
    let e = c
        .classify(&[0.0; 100], None, &ClassifyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("100 input values are not rows of 64 features"),
        "{e}"
    );
    // Layers that cannot take the input shape are refused when the model is built.
    let mut layers = model.layers.clone();
    layers.insert(0, Layer::Flatten);
    let e = engine::nn::plain::Sequential::with_input(layers, vec![1, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 Conv2d(1, 4") && e.contains("expects [c, h, w], got [64]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cli_classifies_an_onnx_cnn() {
    let dir = std::env::temp_dir().join(format!("onnx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("pred.npy");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_secure-serving"))
        .args(["classify", "--model", &data("digits_cnn.onnx")])
        .args(["--input", &data("digits_test_x.npy")])
        .args(["--labels", &data("digits_test_y.npy")])
        .args(["--batch", "128", "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let model = load_onnx_model(&data("digits_cnn.onnx")).unwrap();
    let (n, x) = load_inputs(&data("digits_test_x.npy"), &[1, 8, 8]).unwrap();
    let labels = load_labels(&data("digits_test_y.npy")).unwrap();
    let plain: Vec<i64> = model
        .forward_f64(&x, n)
        .unwrap()
        .chunks(10)
        .map(argmax)
        .collect();
    let preds: ndarray::Array1<i64> = read_npy(&out).unwrap();
    assert_eq!(preds.to_vec(), plain);
    let correct = plain.iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert!(
        stdout.contains(&format!("Accuracy: {correct}/{n}")),
        "{stdout}"
    );
    // --arch is for safetensors only; a wrong image shape is refused before any work.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_secure-serving"))
        .args([
            "classify",
            "--model",
            &data("digits_cnn.onnx"),
            "--arch",
            "vgg16",
        ])
        .args(["--input", &data("digits_test_x.npy")])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--arch applies to safetensors"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vgg16_preset_reads_torchvision_names() {
    use safetensors::{serialize_to_file, Dtype, View};
    // A narrow VGG16 (4 channels everywhere, classifier 196-8-8-3) under torchvision's names.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|i| (((i * 7919) % 13) as f32 / 40.0 - 0.15).to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    };
    let (mut i, mut c) = (0, 3);
    for &oc in &engine::nn::plain::VGG16_FEATURES {
        if oc == 0 {
            i += 1;
            continue;
        }
        put(format!("features.{i}.weight"), vec![4, c, 3, 3]);
        put(format!("features.{i}.bias"), vec![4]);
        c = 4;
        i += 2;
    }
    for (j, (o, inp)) in [(0, (8, 196)), (3, (8, 8)), (6, (3, 8))] {
        put(format!("classifier.{j}.weight"), vec![o, inp]);
        put(format!("classifier.{j}.bias"), vec![o]);
    }
    struct T<'a>(&'a [usize], &'a [u8]);
    impl View for T<'_> {
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            self.0
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            self.1.into()
        }
        fn data_len(&self) -> usize {
            self.1.len()
        }
    }
    let dir = std::env::temp_dir().join(format!("vgg16-preset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("vgg16.safetensors");
    serialize_to_file(
        tensors.iter().map(|(n, s, b)| (n.clone(), T(s, b))),
        &None,
        &p,
    )
    .unwrap();
    let m = engine::io::load_safetensors_model(p.to_str().unwrap(), "vgg16", "").unwrap();
    assert_eq!(m.input, vec![3, 224, 224]);
    let convs = m
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Conv2d { .. }))
        .count();
    let pools = m
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::MaxPool2d { .. }))
        .count();
    assert_eq!((convs, pools, m.out_features()), (13, 5, 3));
    assert_eq!(m.shapes().unwrap()[m.layers.len() - 7], vec![196]);
    // A missing tensor names itself.
    tensors.retain(|(n, _, _)| n != "features.28.weight");
    serialize_to_file(
        tensors.iter().map(|(n, s, b)| (n.clone(), T(s, b))),
        &None,
        &p,
    )
    .unwrap();
    let e = engine::io::load_safetensors_model(p.to_str().unwrap(), "vgg16", "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("'features.28.weight' is missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
