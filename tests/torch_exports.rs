//! Models as users export them with `torch.onnx.export` (tests/data/make_torch_onnx.py, torch
//! 1.13.1, opsets 9-17): each pattern imports, computes torch's float64 logits in plaintext,
//! and classifies encrypted through the service (an in-process deployment: owner upload,
//! client classify) with exactly torch's predictions, on both backends. Training-mode exports
//! and unsupported ops are refused naming the node and saying what to do.

mod common;

use common::argmax;
use engine::io::{import_onnx, load_inputs, OnnxImport};
use engine::nn::{Layer, ModelBounds};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::{BackendKind, FixedPoint};
use ndarray::{Array1, Array2};
use ndarray_npy::read_npy;

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Each export and what its imported model must show (layer names, in order of appearance).
const MODELS: [(&str, &[&str]); 16] = [
    // Shape -> Gather -> Unsqueeze -> Concat -> Reshape: a plain flatten.
    ("view_dynamic", &["MaxPool2d", "Flatten", "Linear(96, 10)"]),
    ("view_nofold", &["MaxPool2d", "Flatten", "Linear(96, 10)"]),
    ("log_softmax", &["Linear(96, 10)"]),
    ("softmax", &["Linear(96, 10)"]),
    ("sigmoid", &["Linear(96, 10)"]),
    // Pad + AveragePool: the padding folds with count_include_pad semantics.
    (
        "avgpool",
        &[
            "AvgPool2d(kernel_size=[3, 3], stride=[2, 2], padding=[1, 1])",
            "AvgPool2d(kernel_size=[2, 2], stride=[2, 2], padding=[0, 0])",
        ],
    ),
    // The first BatchNorm1d folds into its Linear; the one between two ReLUs stays.
    (
        "batchnorm1d",
        &["Linear(64, 32)", "ReLU", "Affine(32)", "ReLU"],
    ),
    // (x - mean) / std before a padded convolution: one affine map, shared.
    ("normalise", &["Affine(1)", "Conv2d(1, 6"]),
    (
        "reducemean",
        &["AdaptiveAvgPool2d([1, 1])", "Flatten", "Linear(16, 10)"],
    ),
    ("relu6", &["Clip(min=0, max=6)"]),
    ("hardtanh", &["Clip(min=-1, max=1)"]),
    (
        "leaky_relu",
        &["LeakyReLU(negative_slope=0.10000000149011612)"],
    ),
    (
        "resnet_small",
        &["Conv2d(8, 16", "Add", "Add", "AdaptiveAvgPool2d([1, 1])"],
    ),
    ("concat", &["Concat", "MaxPool2d"]),
    // A depthwise convolution is the dense one with a block-diagonal weight.
    (
        "depthwise",
        &[
            "Conv2d(8, 8, kernel_size=[3, 3]",
            "Clip(min=0, max=6)",
            "Conv2d(8, 8, kernel_size=[1, 1]",
        ],
    ),
    ("hardswish", &["Conv2d(1, 6", "Hardswish()", "MaxPool2d"]),
];

/// A model's import, its test rows (inputs) and torch's float64 logits on them.
fn load(name: &str) -> (OnnxImport, Vec<f64>, Array2<f64>) {
    let import =
        import_onnx(&data(&format!("torch/{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rows: Array1<i64> = read_npy(data(&format!("torch/{name}_rows.npy"))).unwrap();
    let logits: Array2<f64> = read_npy(data(&format!("torch/{name}_logits.npy"))).unwrap();
    let (_, all) = load_inputs(&data("digits_test_x.npy"), &[1, 8, 8]).unwrap();
    let x = rows
        .iter()
        .flat_map(|&r| all[r as usize * 64..(r as usize + 1) * 64].to_vec())
        .collect();
    (import, x, logits)
}

#[test]
fn torch_exports_import_and_compute_torch_logits() {
    for (name, expect) in MODELS {
        let (import, x, want) = load(name);
        let m = &import.model;
        let names: Vec<String> = m.layers.iter().map(Layer::name).collect();
        let mut at = 0;
        for e in expect {
            match names[at..].iter().position(|n| n.starts_with(e)) {
                Some(i) => at += i + 1,
                None => panic!("{name}: no {e} after layer {at} in {names:?}"),
            }
        }
        let monotone = ["log_softmax", "softmax", "sigmoid"].contains(&name);
        assert_eq!(
            import.notes.len(),
            usize::from(monotone),
            "{name}: {:?}",
            import.notes
        );
        if monotone {
            let n = &import.notes[0];
            assert!(
                n.starts_with("node '/last/")
                    && n.contains("the predictions (the argmax) are unchanged"),
                "{n}"
            );
        }
        let rows = want.nrows();
        let got = m.forward_f64(&x, rows).unwrap();
        // The weights are the same float32 values; attributes such as a LeakyReLU slope are
        // float32 in the file and float64 in torch's reference (0.100000001 vs 0.1).
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                (g - w).abs() < 1e-6 * w.abs().max(1.0),
                "{name}: {g} vs torch {w}"
            );
        }
    }
}

/// Upload every export to an in-process deployment on `backend` and classify `rows` test
/// rows of each; the client's predictions must be torch's.
fn classify_all(backend: BackendKind, rows: usize) {
    let d = LocalDeployment::start(LocalConfig {
        backend,
        ..Default::default()
    })
    .unwrap();
    let mut owner = d.model_owner().unwrap();
    let mut client = d.client().unwrap();
    for (name, _) in MODELS {
        let (import, x, want) = load(name);
        owner
            .upload(
                name,
                &import.model,
                &FixedPoint::default(),
                &ModelBounds::default(),
                &mut |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = client
            .classify(name, &x[..rows * 64], None, rows.div_ceil(2))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let torch: Vec<i64> = want
            .rows()
            .into_iter()
            .take(rows)
            .map(|r| argmax(r.as_slice().unwrap()))
            .collect();
        assert_eq!(r.predictions, torch, "{name} on {backend:?}");
    }
}

#[test]
fn torch_exports_classify_encrypted_as_torch_predicts_on_cpu() {
    classify_all(BackendKind::Cpu, 32);
}

#[test]
fn torch_exports_classify_encrypted_as_torch_predicts_on_gpu() {
    if kernels::GpuBackend::new().is_err() && std::env::var("CI").as_deref() != Ok("true") {
        eprintln!("SKIP gpu torch exports: no adapter");
        return;
    }
    classify_all(BackendKind::Gpu, 8);
}

fn refusal(name: &str) -> String {
    import_onnx(&data(&format!("torch/{name}.onnx")))
        .unwrap_err()
        .to_string()
}

#[test]
fn training_mode_exports_and_unsupported_ops_are_refused_naming_the_node() {
    // Opset 14: BatchNormalization with training_mode 1 (before the Dropout).
    let e = refusal("training");
    assert!(
        e.contains("node '/1/BatchNormalization' (BatchNormalization): the graph was exported in training mode")
            && e.contains("export with model.eval()"),
        "{e}"
    );
    // Opset 11, which an earlier importer ran silently as eval: the running statistics are
    // further outputs.
    let e = refusal("training_opset11");
    assert!(
        e.contains("node '/1/BatchNormalization' (BatchNormalization): the graph was exported in training mode")
            && e.contains("export with model.eval()"),
        "{e}"
    );
    let e = refusal("unsupported_tanh");
    assert!(
        e.contains("node '/1/Tanh' (Tanh): unsupported op")
            && e.contains("replace Tanh by one of them and retrain"),
        "{e}"
    );
}

/// Damaged exports: random byte changes in every export are refused with an error or import
/// as some other model, never a panic or a huge allocation.
#[test]
fn damaged_exports_never_panic() {
    use rand::Rng;
    let mut rng = common::test_rng("damaged_exports");
    let dir = std::env::temp_dir().join(format!("damaged-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.onnx");
    let names = MODELS
        .iter()
        .map(|m| m.0)
        .chain(["training", "unsupported_tanh"]);
    for name in names {
        let bytes = std::fs::read(data(&format!("torch/{name}.onnx"))).unwrap();
        for _ in 0..40 {
            let mut b = bytes.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            std::fs::write(&p, &b).unwrap();
            let small = |m: &OnnxImport| m.model.in_features() <= 1 << 12;
            if let Some(m) = import_onnx(p.to_str().unwrap()).ok().filter(small) {
                let x = vec![0.5; m.model.in_features()];
                // Whatever imports is a model that runs.
                let _ = m.model.forward_f64(&x, 1);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
