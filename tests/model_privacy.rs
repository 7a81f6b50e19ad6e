//! No model parameter is public to the parties: after an upload of a model with a batch norm
//! that folds nowhere (torch's BatchNorm1d between two ReLUs) and calibrated bounds, neither
//! the plan sent to the parties nor the records alice and bob store hold any value derived
//! from the weights beyond shapes and ring limits — no weight, bias, batch-norm scale or
//! shift, their fixed-point encodings, the owner's range report or its calibrated bounds.

mod common;

use std::path::Path;

use engine::io::{import_onnx, load_inputs};
use engine::nn::range::calibrate;
use engine::nn::{Layer, LayerPlan, ModelBounds, ModelPlan};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::FixedPoint;

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Every value derived from the weights that must stay with the owner.
fn secrets(model: &engine::nn::Sequential, plan: &ModelPlan, bounds: &ModelBounds) -> Vec<f64> {
    let mut v = Vec::new();
    for l in &model.layers {
        match l {
            Layer::Linear { weight, bias, .. } | Layer::Conv2d { weight, bias, .. } => {
                v.extend(weight);
                v.extend(bias);
            }
            Layer::Affine { scale, shift } => {
                v.extend(scale);
                v.extend(shift);
            }
            _ => {}
        }
    }
    let report = plan.range.as_ref().expect("the owner's report");
    v.push(report.logit_error);
    for r in &report.layers {
        v.push(r.accumulator_bits);
        v.push(r.output_bound);
    }
    v.extend(bounds.calibrated.as_deref().unwrap_or(&[]));
    v.retain(|x| *x != 0.0 && x.fract() != 0.0);
    v
}

/// Where in `bytes` a secret appears: as f64 bits, as its JSON text (values with enough
/// digits not to occur by chance), or as its fixed-point encoding where that cannot be a
/// length or a small count (negative values, or magnitudes of 2^20 units and more).
fn leaks(bytes: &[u8], secrets: &[f64], fx: &FixedPoint) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let mut found = Vec::new();
    for &s in secrets {
        if has(&s.to_le_bytes()) {
            found.push(format!("{s} as a float"));
        }
        let t = format!("{s}");
        if t.trim_start_matches(['-', '0', '.']).len() >= 6 && text.contains(&t) {
            found.push(format!("{s} as text"));
        }
        if let Ok(e) = fx.encode_one(s, 0) {
            let signed = e as i64;
            if !(0..1 << 20).contains(&signed) && has(&e.to_le_bytes()) {
                found.push(format!("{s} encoded ({signed})"));
            }
        }
    }
    found
}

fn records(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "model"))
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn parties_receive_and_store_no_value_derived_from_the_weights() {
    let import = import_onnx(&data("torch/batchnorm1d.onnx")).unwrap();
    let model = import.model;
    assert!(
        model
            .layers
            .iter()
            .any(|l| matches!(l, Layer::Affine { .. })),
        "the model keeps a batch norm that folds nowhere"
    );
    let (n, x) = load_inputs(&data("digits_test_x.npy"), &[1, 8, 8]).unwrap();
    let fx = FixedPoint::default();
    let bounds = ModelBounds {
        input_bound: 1.0,
        calibrated: Some(calibrate(&model, &x, n, 2.0).unwrap()),
    };
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let mut owner = d.model_owner().unwrap();
    let (plan, _) = owner
        .upload("bn", &model, &fx, &bounds, &mut |_, _| {})
        .unwrap();
    let secret = secrets(&model, &plan, &bounds);
    assert!(secret.len() > 2000, "{} secrets", secret.len());

    // The plan as it travels: kinds, shapes, wiring, the input bound and ring limits only
    // (the comparison mode is one: full-width, or checked below 2^31 ring units; the ReLUs
    // moved after their max pools follow from the kinds and the wiring).
    let wire = serde_json::to_vec(&plan).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&wire).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "compare",
            "frac_bits",
            "input_bound",
            "layers",
            "limits",
            "relu_after_pool",
            "shapes",
            "wiring"
        ],
        "{json}"
    );
    assert!(
        plan.limits.iter().flatten().count() == 1,
        "{:?}",
        plan.limits
    );
    for l in &plan.layers {
        if let LayerPlan::Public(p) = l {
            assert_eq!(p.parameters(), 0, "{p:?} travels in plaintext");
        }
    }
    assert!(plan.layers.iter().any(|l| matches!(
        l,
        LayerPlan::Linear {
            in_features: 32,
            out_features: 32
        }
    )));
    assert_eq!(leaks(&wire, &secret, &fx), Vec::<String>::new());

    // What alice and bob keep: the plan, shares and masked weights.
    for party in 0..2 {
        let stored = records(&d.party_dir(party));
        assert_eq!(stored.len(), 1);
        let found = leaks(&stored[0], &secret, &fx);
        assert!(found.is_empty(), "party {party} stores {found:?}");
    }
    // The check itself finds a value where there is one.
    assert!(!leaks(&serde_json::to_vec(&model.layers).unwrap(), &secret, &fx).is_empty());
}
