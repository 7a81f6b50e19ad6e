//! Unit tests of the range analysis.

use super::*;
use crate::nn::plain::Sequential;
use crate::protocols::compare::CompareMode;

fn linear(i: usize, o: usize, w: f64, b: f64) -> Layer {
    Layer::linear(i, o, vec![w; i * o], vec![b; o]).unwrap()
}

#[test]
fn bounds_follow_the_layers_and_refusals_name_layer_bits_and_safe_settings() {
    // 784 inputs within 120, weights 1: accumulator 784·120·2^(2f) = 2^(16.52 + 2f).
    let m = Sequential::new(vec![
        Layer::Flatten,
        linear(784, 4, 1.0, 0.0),
        Layer::ReLU,
        Layer::Dropout,
        linear(4, 2, 0.5, 1.0),
    ])
    .unwrap();
    let b = ModelBounds::worst_case(120.0);
    let r = analyse(&m, &FixedPoint::new(16).unwrap(), &b).unwrap();
    assert_eq!(r.layers.len(), 2);
    let expect = (784.0f64 * 120.0 * 2f64.powi(32)).log2();
    assert!(
        (r.layers[0].accumulator_bits - expect).abs() < 1e-6,
        "{r:?}"
    );
    assert!((r.layers[0].output_bound - 784.0 * 120.0).abs() < 1e-3);
    // Second layer: 4 inputs of 94080, weight 0.5, bias 1.
    assert!((r.layers[1].output_bound - (2.0 * 94080.0 + 1.0)).abs() < 1e-3);
    assert_eq!(r.worst().layer, 4);
    assert!((r.headroom_bits() - (62.0 - r.layers[1].accumulator_bits)).abs() < 1e-12);
    assert!(
        r.summary().contains("worst layer 4 Linear(4, 2)"),
        "{}",
        r.summary()
    );
    let e = analyse(&m, &FixedPoint::new(23).unwrap(), &b)
        .unwrap_err()
        .to_string();
    // Layer 1 at f = 23: 2^(16.52 + 46) = 2^62.5. At f = 22 layer 4 has 2^61.5 (safe). At
    // f = 23, layer 4 needs 4·2^22·(784·B + 1)·2^23 < 2^62: B < 41.8.
    assert!(
        e.starts_with("layer 1 Linear(784, 4) can overflow: its accumulator bound is 2^62.5"),
        "{e}"
    );
    assert!(e.contains("the largest safe --frac-bits is 22"), "{e}");
    assert!(
        e.contains("the largest safe input bound at --frac-bits 23 is 41.7;"),
        "{e}"
    );
    // An input bound that cannot even be encoded.
    let e = analyse(
        &m,
        &FixedPoint::new(24).unwrap(),
        &ModelBounds::worst_case(200.0),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("input bound ±200 cannot be encoded with 24 fractional bits"),
        "{e}"
    );
    // Bad declarations.
    let bad = |b: ModelBounds| {
        analyse(&m, &FixedPoint::default(), &b)
            .unwrap_err()
            .to_string()
    };
    assert!(bad(ModelBounds::worst_case(0.0)).contains("must be a positive number"));
    assert!(bad(ModelBounds::worst_case(f64::NAN)).contains("must be a positive number"));
    let two = ModelBounds {
        input_bound: 1.0,
        calibrated: Some(vec![1.0, 2.0]),
    };
    assert!(bad(two).contains("2 calibrated bounds for a model with 1 hidden Linear layers"));
}

#[test]
fn convolution_and_pooling_layers_are_bounded_and_refused_by_name() {
    use crate::nn::geometry::Window2d;
    // [2, 5, 7] -> Conv2d(2->3, 3x3, pad 1) with weights 1000: 18 taps per output.
    let conv = Layer::conv2d(
        2,
        3,
        Window2d::square(3, 1, 1),
        vec![1000.0; 3 * 18],
        vec![0.5; 3],
    )
    .unwrap();
    let m = Sequential::with_input(
        vec![
            conv,
            Layer::Affine {
                scale: vec![2.0, -1.0, 0.5],
                shift: vec![1.0, 0.0, -1.0],
            },
            Layer::ReLU,
            Layer::AvgPool2d {
                window: Window2d::square(2, 2, 0),
                count_include_pad: true,
            },
            Layer::MaxPool2d {
                window: Window2d::square(1, 1, 0),
            },
            Layer::Flatten,
            linear(3 * 2 * 3, 2, 1.0, 0.0),
        ],
        vec![2, 5, 7],
    )
    .unwrap();
    let b = ModelBounds::worst_case(2.0);
    let f = 16;
    let r = analyse(&m, &FixedPoint::new(f).unwrap(), &b).unwrap();
    // Conv: 18 · round(1000·2^16) · round(2·2^16) ring units; BatchNorm: its output times
    // round(2·2^16).
    let conv_bits = (18.0f64 * 1000.0 * 2.0 * 2f64.powi(2 * f as i32)).log2();
    assert_eq!(r.layers[0].layer, 0);
    assert!(
        (r.layers[0].accumulator_bits - conv_bits).abs() < 1e-6,
        "{r:?}"
    );
    assert!((r.layers[0].output_bound - 36000.5).abs() < 1e-6, "{r:?}");
    assert_eq!(r.layers[1].layer, 1);
    assert!((r.layers[1].output_bound - 72002.0).abs() < 1e-6, "{r:?}");
    // The bounds hold for the plaintext forward pass at the extreme inputs (all ±2).
    for v in [2.0, -2.0] {
        let x = vec![v; 70];
        let mut at = 0;
        m.forward_f64_observed(&x, 1, &mut |l, out| {
            let worst = out.iter().fold(0.0f64, |a, y| a.max(y.abs()));
            if let Some(lr) = r
                .layers
                .iter()
                .find(|lr| lr.name == l.name() && lr.layer == at)
            {
                assert!(
                    worst <= lr.output_bound,
                    "{} {worst} > {}",
                    lr.name,
                    lr.output_bound
                );
            }
            at += 1;
        })
        .unwrap();
    }
    // At f = 24 the convolution's accumulator (18·1000·2·2^48 = 2^63.1) is refused by name.
    let e = analyse(&m, &FixedPoint::new(24).unwrap(), &b)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("layer 0 Conv2d"), "{e}");
    assert!(e.contains("nothing was shared"), "{e}");
}

#[test]
fn calibrated_bounds_replace_worst_case_growth() {
    // Ten layers of 64 inputs with weight 1 overflow in the worst case at f = 16; a
    // calibrated bound of 100 on every hidden output makes each layer provably safe.
    let mut layers = vec![linear(64, 64, 1.0, 0.0)];
    for _ in 0..9 {
        layers.push(Layer::ReLU);
        layers.push(linear(64, 64, 1.0, 0.0));
    }
    let m = Sequential::new(layers).unwrap();
    let fx = FixedPoint::default();
    // Without calibration the proof does not reach the logits: the comparisons are checked.
    let w = analyse(&m, &fx, &ModelBounds::worst_case(1.0)).unwrap();
    assert_eq!(w.compare, CompareMode::Checked);
    let cal = ModelBounds {
        input_bound: 1.0,
        calibrated: Some(vec![100.0; 9]),
    };
    let r = analyse(&m, &fx, &cal).unwrap();
    assert!(r.layers[..9].iter().all(|l| l.checked == Some(100.0)));
    assert!(r.summary().contains("checked at run time"));
    assert_eq!(ring_limits(&cal, &fx), vec![100 << 16; 9]);
    assert_eq!(r.compare, CompareMode::Full);
}

#[test]
fn checked_comparisons_re_anchor_after_each_relu_and_refuse_a_stretch_that_overflows() {
    let fx = FixedPoint::default();
    let b = ModelBounds::worst_case(1.0);
    // Proven from input to logits: full-width comparisons, no check.
    let small = Sequential::new(vec![
        linear(4, 4, 1.0, 0.0),
        Layer::ReLU,
        linear(4, 2, 1.0, 0.0),
    ])
    .unwrap();
    assert_eq!(analyse(&small, &fx, &b).unwrap().compare, CompareMode::Full);
    // Thirty layers of 64 inputs with weight 1: the worst case grows 2^6 per layer, past the
    // ring; from each ReLU's guarantee (1.5·2^30 ring units) one layer's accumulator is
    // 64·2^16·1.5·2^30 < 2^53.
    let mut layers = vec![linear(64, 64, 1.0, 0.0)];
    for _ in 0..29 {
        layers.push(Layer::ReLU);
        layers.push(linear(64, 64, 1.0, 0.0));
    }
    let deep = Sequential::new(layers).unwrap();
    let r = analyse(&deep, &fx, &b).unwrap();
    assert_eq!(r.compare, CompareMode::Checked);
    assert!(
        r.summary().contains("checked at run time"),
        "{}",
        r.summary()
    );
    let anchored = 64.0 * 65536.0 * 1.5 * 2f64.powi(30);
    assert!(r.layers[2..]
        .iter()
        .all(|l| l.accumulator_bits <= anchored.log2() + 1e-6));
    // A weight of 2^20 after a ReLU overflows even from the guarantee: refused.
    let big = Sequential::new(vec![
        linear(64, 64, 1.0, 0.0),
        Layer::ReLU,
        linear(64, 64, 1048576.0, 0.0),
    ])
    .unwrap();
    let e = analyse(&big, &fx, &b).unwrap_err().to_string();
    assert!(
        e.contains("can overflow") && e.contains("nothing was shared"),
        "{e}"
    );
}

#[test]
fn client_check_names_row_and_column() {
    let e = check_inputs(&[0.0, 1.0, 2.0, -3.5], 2, 3.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("row 1, column 1: value -3.5 is outside the model's declared input bound ±3"),
        "{e}"
    );
    assert!(check_inputs(&[3.0, -3.0], 2, 3.0).is_ok());
}

/// Every layer of a report but the comparisons' own entries (ReLUs and max pools).
fn products(r: &RangeReport) -> Vec<(usize, f64, f64)> {
    r.layers
        .iter()
        .filter(|l| !l.name.starts_with("ReLU") && !l.name.starts_with("MaxPool"))
        .map(|l| (l.layer, l.accumulator_bits, l.output_bound))
        .collect()
}

#[test]
fn a_relu_after_its_pool_is_analysed_in_that_order_with_the_same_bounds_after_it() {
    use crate::nn::geometry::Window2d;
    use crate::nn::rewrite::relu_pool_pairs;
    let conv = |c: usize, o: usize, w: f64| {
        Layer::conv2d(
            c,
            o,
            Window2d::square(3, 1, 1),
            vec![w; o * c * 9],
            vec![0.1; o],
        )
        .unwrap()
    };
    let m = Sequential::with_input(
        vec![
            conv(3, 4, 150.0),
            Layer::ReLU,
            Layer::MaxPool2d {
                window: Window2d::square(2, 2, 0),
            },
            conv(4, 4, 1.0),
            Layer::ReLU,
            Layer::MaxPool2d {
                window: Window2d::square(3, 2, 1),
            },
            Layer::Flatten,
            linear(16, 3, 0.5, 0.0),
        ],
        vec![3, 9, 7],
    )
    .unwrap();
    let b = ModelBounds::worst_case(16384.0);
    let r = analyse(&m, &FixedPoint::default(), &b).unwrap();
    assert_eq!(r.compare, CompareMode::Checked);
    assert_eq!(r.relu_after_pool, vec![1, 4]);
    let pairs = relu_pool_pairs(&m).unwrap();
    assert_eq!(pairs, vec![(1, 2), (4, 5)]);
    let fused = propagate(&m, 16, &b, CompareMode::Checked, &pairs)
        .ok()
        .unwrap();
    let plain = propagate(&m, 16, &b, CompareMode::Checked, &[])
        .ok()
        .unwrap();
    // Every product after the pairs is bounded exactly as in the original order.
    assert_eq!(products(&fused), products(&plain));
    assert_eq!(fused.logit_error, plain.logit_error);
    // The pool compares differences of the pre-ReLU values: twice what the ReLU compared.
    let bits = |r: &RangeReport, layer: usize| {
        r.layers
            .iter()
            .find(|l| l.layer == layer)
            .unwrap()
            .accumulator_bits
    };
    assert!((bits(&fused, 2) - bits(&plain, 1) - 1.0).abs() < 1e-9);
    assert!(fused.layers.iter().all(|l| l.layer != 1 && l.layer != 4));
}

#[test]
fn where_the_pool_differences_do_not_fit_the_check_the_relus_stay_before_the_pools() {
    use crate::nn::geometry::Window2d;
    use crate::nn::plain::GraphBuilder;
    use crate::nn::rewrite::relu_pool_pairs;
    // At 8 fractional bits the check proves compared values below 2^56 ring units. A sum of
    // four values each just below 2^54 is below 2^56 (the ReLU's input: provable), but the
    // pool's differences of such sums are not.
    let big = 0.99 * 2f64.powi(23);
    let mut g = GraphBuilder::new();
    let a = g.push(
        Layer::Affine {
            scale: vec![big],
            shift: vec![0.0],
        },
        &[0],
    );
    let sum = g.push(Layer::Add, &[a, a, a, a]);
    let relu = g.push(Layer::ReLU, &[sum]);
    let pool = g.push(
        Layer::MaxPool2d {
            window: Window2d::square(2, 2, 0),
        },
        &[relu],
    );
    let flat = g.push(Layer::Flatten, &[pool]);
    g.push(linear(4, 2, 1.0, 0.0), &[flat]);
    let m = g.build(vec![1, 4, 4]).unwrap();
    assert_eq!(relu_pool_pairs(&m).unwrap(), vec![(2, 3)]);
    let fx = FixedPoint::new(8).unwrap();
    let b = ModelBounds::worst_case(big);
    assert!(propagate(&m, 8, &b, CompareMode::Checked, &[(2, 3)]).is_err());
    let r = analyse(&m, &fx, &b).unwrap();
    assert_eq!(r.compare, CompareMode::Checked);
    assert!(r.relu_after_pool.is_empty(), "{r:?}");
}
