//! ONNX import: a small CNN (conv, batch norm, max and average pooling, dropout, linear) on
//! scikit-learn's digits, made by tests/data/make_onnx.py with reference outputs from the model's
//! definition in numpy; and the refusals (unsupported op, branching graph, truncated file, input shapes).

mod common;

use common::argmax;
use common::cli;
use engine::io::{load_inputs, load_labels, load_onnx_model};
use engine::nn::plain::Layer;
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::BackendKind;
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
        || common::computation(
            engine::LocalConfig {
                backend: BackendKind::Gpu,
                ..Default::default()
            },
            engine::FixedPoint::default(),
        )
        .is_ok()
    {
        backends.push(BackendKind::Gpu);
    } else {
        eprintln!("SKIP gpu onnx: no adapter");
    }
    for backend in backends {
        let d = engine::LocalDeployment::start(engine::LocalConfig {
            backend,
            ..Default::default()
        })
        .unwrap();
        let mut c = SecureClassifier::upload(
            &d,
            &model,
            &engine::FixedPoint::default(),
            &Default::default(),
        )
        .unwrap();
        let report = c
            .classify(x, Some(&labels[..rows]), &ClassifyOptions { batch: 16 })
            .unwrap();
        assert_eq!(report.predictions, plain_pred, "{backend:?}");
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
    let d = engine::LocalDeployment::start(engine::LocalConfig::default()).unwrap();
    let mut c = SecureClassifier::upload(
        &d,
        &model,
        &engine::FixedPoint::default(),
        &Default::default(),
    )
    .unwrap();
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
    let run = cli::bin()
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
    let run = cli::bin()
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

#[test]
fn resnet18_preset_reads_torchvision_names_and_classifies_as_torch() {
    use engine::nn::ModelBounds;
    use engine::service::local::{LocalConfig, LocalDeployment};
    use ndarray::Array4;
    use safetensors::tensor::TensorView;
    use safetensors::{serialize_to_file, Dtype, SafeTensors};
    // A narrow ResNet-18 (widths 4, 4, 8, 8) under torchvision's names, from
    // tests/data/make_torch_onnx.py, read at 3x32x32.
    let path = data("torch/resnet18_narrow.safetensors");
    let m = engine::io::load_safetensors_model(&path, "resnet18:32", "").unwrap();
    assert_eq!(m.input, vec![3, 32, 32]);
    let count = |f: &dyn Fn(&Layer) -> bool| m.layers.iter().filter(|l| f(l)).count();
    // 17 convolutions and the 3 shortcut ones, every batch norm folded, 8 residual additions.
    assert_eq!(count(&|l| matches!(l, Layer::Conv2d { .. })), 20);
    assert_eq!(count(&|l| matches!(l, Layer::Affine { .. })), 0);
    assert_eq!(count(&|l| matches!(l, Layer::Add)), 8);
    let x: Array4<f32> = read_npy(data("torch/resnet18_narrow_x.npy")).unwrap();
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want: Array2<f64> = read_npy(data("torch/resnet18_narrow_logits.npy")).unwrap();
    let got = m.forward_f64(&x, want.nrows()).unwrap();
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 1e-9 * w.abs().max(1.0), "{g} vs torch {w}");
    }
    // Encrypted through an in-process deployment: torch's predictions. Worst-case bounds
    // grow with depth: at 16 fractional bits they exceed the ring over 20 layers, so the
    // model runs with its comparisons checked in the secure computation (no flag needed).
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let mut owner = d.model_owner().unwrap();
    let bounds = ModelBounds::worst_case(x.iter().fold(0.0f64, |a, v| a.max(v.abs())).ceil());
    let fx = engine::FixedPoint::default();
    let (plan, _) = owner
        .upload("resnet18", &m, &fx, &bounds, &mut |_, _| {})
        .unwrap();
    assert_eq!(
        plan.compare,
        engine::protocols::compare::CompareMode::Checked
    );
    eprintln!("{}", plan.range.as_ref().unwrap().summary());
    let r = d
        .client()
        .unwrap()
        .classify("resnet18", &x, None, 2)
        .unwrap();
    let torch: Vec<i64> = want
        .rows()
        .into_iter()
        .map(|r| argmax(r.as_slice().unwrap()))
        .collect();
    assert_eq!(r.predictions, torch);
    // At the default size the same file gives a 3x224x224 model.
    let m224 = engine::io::load_safetensors_model(&path, "resnet18", "").unwrap();
    assert_eq!(m224.input, vec![3, 224, 224]);
    // A tensor the architecture does not read (a third block, as in a ResNet-34) is refused
    // by name unless allowed; a bad size is refused before the file is read.
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 4 * 4 * 4 * 9];
    let mut tensors = st.tensors();
    tensors.push((
        "layer1.2.conv1.weight".into(),
        TensorView::new(Dtype::F32, vec![4, 4, 3, 3], &extra).unwrap(),
    ));
    let dir = std::env::temp_dir().join(format!("resnet18-preset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("resnet34ish.safetensors");
    serialize_to_file(tensors, &None, &p).unwrap();
    let p = p.to_str().unwrap();
    let e = engine::io::load_safetensors_model(p, "resnet18:32", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 tensor(s) are not used by the architecture: layer1.2.conv1.weight")
            && e.contains("--allow-unused-tensors"),
        "{e}"
    );
    engine::io::load_safetensors_model_with(p, "resnet18:32", "", engine::io::UnusedTensors::Allow)
        .unwrap();
    let e = engine::io::load_safetensors_model(p, "resnet18:7", "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be a number in 32..=1024"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
