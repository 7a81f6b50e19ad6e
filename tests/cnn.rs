//! Convolutional layers on shares, each against a plaintext reference computed here from the
//! definitions (not from the engine's geometry code), on odd shapes and on both backends.
//!
//! Exactness: a max pool is exact on ring values; a convolution and an affine map (a BatchNorm
//! that folds nowhere, shared as a diagonal weight) are exact up to the truncation, whose result is `floor(z / 2^f)` or one more; an average pool is
//! within `|S|·2^-(f+1) + 1` units of the true mean `S / d` (the encoding error of `1/d`, plus
//! the truncation).

mod common;

use std::sync::Arc;

use common::layers::{ring_inputs, run_layer, F};
use common::sessions;
use common::test_rng;
use engine::nn::geometry::Window2d;
use engine::nn::plain::{Layer, Sequential};
use engine::nn::shared::{SharedAvgPool2d, SharedMaxPool2d};
use engine::{Computation, FixedPoint, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// `(kernel, stride, padding)` per axis, input `(n, c, h, w)`, output channels.
type ConvCase = ([usize; 2], [usize; 2], [usize; 2], [usize; 4], usize);

const CONV_CASES: [ConvCase; 5] = [
    ([3, 3], [1, 1], [1, 1], [2, 3, 5, 7], 5),
    ([1, 1], [2, 2], [0, 0], [1, 1, 4, 6], 1),
    ([3, 3], [2, 2], [0, 0], [3, 7, 6, 5], 9),
    ([3, 3], [2, 2], [1, 1], [1, 2, 7, 4], 67),
    ([1, 3], [1, 2], [0, 1], [2, 5, 3, 8], 17),
];

#[test]
fn conv2d_matches_the_definition_up_to_truncation() {
    let mut rng = test_rng("conv2d");
    for mut s in sessions("cnn layers") {
        for &(kernel, stride, padding, [n, c, h, w], oc) in &CONV_CASES {
            let win = Window2d {
                kernel,
                stride,
                padding,
            };
            let [kh, kw] = kernel;
            let wts: Vec<f64> = (0..oc * c * kh * kw)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            let bias: Vec<f64> = (0..oc).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let x = ring_inputs(&mut rng, n * c * h * w, 8.0);
            let oh = (h + 2 * padding[0] - kh) / stride[0] + 1;
            let ow = (w + 2 * padding[1] - kw) / stride[1] + 1;
            // Shared the one way every model is (its plan's layer, built by each party).
            // (A model ends in a Linear classifier: a 1x1 one after the layer under test.)
            let conv = Sequential::with_input(
                vec![
                    Layer::conv2d(c, oc, win, wts.clone(), bias.clone()).unwrap(),
                    Layer::Flatten,
                    Layer::linear(oc * oh * ow, 1, vec![0.0; oc * oh * ow], vec![0.0]).unwrap(),
                ],
                vec![c, h, w],
            )
            .unwrap();
            let shared = s.share_model(PartyId::ModelOwner, &conv).unwrap();
            let layer = shared.layers()[0].clone();
            let got = run_layer(&mut s, layer, &[n, c, h, w], &x);
            let fx = FixedPoint::new(F).unwrap();
            let we: Vec<i128> = fx
                .encode(&wts)
                .unwrap()
                .iter()
                .map(|&v| v as i64 as i128)
                .collect();
            let be: Vec<i64> = fx
                .encode(&bias)
                .unwrap()
                .iter()
                .map(|&v| v as i64)
                .collect();
            assert_eq!(got.len(), n * oc * oh * ow);
            for b in 0..n {
                for o in 0..oc {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let mut z: i128 = 0;
                            for ch in 0..c {
                                for dy in 0..kh {
                                    for dx in 0..kw {
                                        let r = (y * stride[0] + dy) as isize - padding[0] as isize;
                                        let q =
                                            (xx * stride[1] + dx) as isize - padding[1] as isize;
                                        if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                                            continue;
                                        }
                                        let xv =
                                            x[((b * c + ch) * h + r as usize) * w + q as usize];
                                        z += we[((o * c + ch) * kh + dy) * kw + dx] * xv as i128;
                                    }
                                }
                            }
                            let floor = (z >> F) as i64 + be[o];
                            let g = got[((b * oc + o) * oh + y) * ow + xx];
                            assert!(
                                g == floor || g == floor + 1,
                                "conv {kernel:?}/{stride:?}/{padding:?} on {:?}: got {g}, want {floor} or +1",
                                [n, c, h, w]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The in-range elements of window `(y, x)` over plane `xs` (`h x w`).
fn window(xs: &[i64], win: &Window2d, y: usize, x: usize, h: usize, w: usize) -> (Vec<i64>, usize) {
    let mut v = Vec::new();
    for dy in 0..win.kernel[0] {
        for dx in 0..win.kernel[1] {
            let r = (y * win.stride[0] + dy) as isize - win.padding[0] as isize;
            let q = (x * win.stride[1] + dx) as isize - win.padding[1] as isize;
            if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                v.push(xs[r as usize * w + q as usize]);
            }
        }
    }
    (v, win.kernel[0] * win.kernel[1])
}

const POOL_CASES: [(Window2d, [usize; 4]); 5] = [
    (
        Window2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        },
        [2, 3, 4, 6],
    ),
    (
        Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
        [1, 5, 7, 5],
    ),
    (
        Window2d {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
        },
        [1, 2, 5, 3],
    ),
    (
        Window2d {
            kernel: [1, 1],
            stride: [2, 2],
            padding: [0, 0],
        },
        [3, 1, 5, 5],
    ),
    (
        Window2d {
            kernel: [2, 3],
            stride: [1, 2],
            padding: [1, 1],
        },
        [1, 3, 3, 6],
    ),
];

#[test]
fn max_pool_is_exact() {
    let mut rng = test_rng("max_pool");
    for mut s in sessions("cnn layers") {
        for &(win, [n, c, h, w]) in &POOL_CASES {
            let x = ring_inputs(&mut rng, n * c * h * w, 100.0);
            let layer = SharedMaxPool2d::new(vec![c, h, w], win).unwrap();
            let got = run_layer(&mut s, Arc::new(layer), &[n, c, h, w], &x);
            let oh = (h + 2 * win.padding[0] - win.kernel[0]) / win.stride[0] + 1;
            let ow = (w + 2 * win.padding[1] - win.kernel[1]) / win.stride[1] + 1;
            let mut want = Vec::new();
            for plane in 0..n * c {
                for y in 0..oh {
                    for xx in 0..ow {
                        let (v, _) =
                            window(&x[plane * h * w..(plane + 1) * h * w], &win, y, xx, h, w);
                        want.push(*v.iter().max().unwrap());
                    }
                }
            }
            assert_eq!(got, want, "max pool {win:?} on {:?}", [n, c, h, w]);
        }
    }
}

fn check_mean(got: i64, sum: i64, d: usize, what: &str) {
    let exact = sum as f64 / d as f64;
    let bound = sum.unsigned_abs() as f64 / (1u64 << (F + 1)) as f64 + 1.0;
    assert!(
        (got as f64 - exact).abs() <= bound,
        "{what}: got {got}, mean {exact}, bound {bound}"
    );
}

#[test]
fn avg_pools_are_within_the_truncation_bound() {
    let mut rng = test_rng("avg_pool");
    for mut s in sessions("cnn layers") {
        for &(win, [n, c, h, w]) in &POOL_CASES {
            for include_pad in [true, false] {
                let x = ring_inputs(&mut rng, n * c * h * w, 100.0);
                let layer = SharedAvgPool2d::avg(vec![c, h, w], win, include_pad).unwrap();
                let got = run_layer(&mut s, Arc::new(layer), &[n, c, h, w], &x);
                let oh = (h + 2 * win.padding[0] - win.kernel[0]) / win.stride[0] + 1;
                let ow = (w + 2 * win.padding[1] - win.kernel[1]) / win.stride[1] + 1;
                assert_eq!(got.len(), n * c * oh * ow);
                let mut i = 0;
                for plane in 0..n * c {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let (v, k) =
                                window(&x[plane * h * w..(plane + 1) * h * w], &win, y, xx, h, w);
                            let d = if include_pad { k } else { v.len() };
                            check_mean(got[i], v.iter().sum(), d, &format!("avg {win:?}"));
                            i += 1;
                        }
                    }
                }
            }
        }
        // Adaptive: shrinking, identity, growing and uneven windows.
        for &([n, c, h, w], out) in &[
            ([1, 3, 5, 7], [3, 2]),
            ([2, 2, 4, 4], [4, 4]),
            ([1, 2, 1, 1], [7, 7]),
            ([1, 1, 6, 5], [1, 1]),
        ] {
            let x = ring_inputs(&mut rng, n * c * h * w, 100.0);
            let layer = SharedAvgPool2d::adaptive(vec![c, h, w], out).unwrap();
            let got = run_layer(&mut s, Arc::new(layer), &[n, c, h, w], &x);
            let mut i = 0;
            for plane in 0..n * c {
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                for y in 0..out[0] {
                    // PyTorch: start = floor(i·in/out), end = ceil((i+1)·in/out).
                    let (r0, r1) = (y * h / out[0], ((y + 1) * h).div_ceil(out[0]));
                    for xx in 0..out[1] {
                        let (c0, c1) = (xx * w / out[1], ((xx + 1) * w).div_ceil(out[1]));
                        let sum: i64 = (r0..r1)
                            .flat_map(|r| (c0..c1).map(move |q| xs[r * w + q]))
                            .sum();
                        check_mean(got[i], sum, (r1 - r0) * (c1 - c0), "adaptive");
                        i += 1;
                    }
                }
            }
        }
    }
}

#[test]
fn affine_map_is_a_shared_diagonal_weight_exact_up_to_truncation() {
    let mut rng = test_rng("affine");
    let fx = FixedPoint::new(F).unwrap();
    for mut s in sessions("cnn layers") {
        let [n, c, h, w] = [2, rng.gen_range(1..5), rng.gen_range(1..4), 5];
        let scale: Vec<f64> = (0..c).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let shift: Vec<f64> = (0..c).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let x = ring_inputs(&mut rng, n * c * h * w, 50.0);
        let model = Sequential::with_input(
            vec![
                Layer::Affine {
                    scale: scale.clone(),
                    shift: shift.clone(),
                },
                Layer::Flatten,
                Layer::linear(c * h * w, 1, vec![0.0; c * h * w], vec![0.0]).unwrap(),
            ],
            vec![c, h, w],
        )
        .unwrap();
        let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
        let layer = shared.layers()[0].clone();
        assert_eq!(
            layer.name(),
            format!("Conv2d({c}, {c}, kernel_size=[1, 1], stride=[1, 1], padding=[0, 0])"),
            "the parties see a 1x1 convolution's shape, not the map"
        );
        let got = run_layer(&mut s, layer, &[n, c, h, w], &x);
        let (se, te) = (fx.encode(&scale).unwrap(), fx.encode(&shift).unwrap());
        for (i, &g) in got.iter().enumerate() {
            let ch = (i / (h * w)) % c;
            let floor = ((x[i] as i128 * se[ch] as i64 as i128) >> F) as i64 + te[ch] as i64;
            assert!(
                g == floor || g == floor + 1,
                "affine at {i}: {g} vs {floor}"
            );
        }
    }
}

/// A small CNN with every layer kind, batch norm folded and standalone.
fn small_cnn(rng: &mut ChaCha20Rng) -> Sequential {
    let mut r = |n: usize, b: f64| (0..n).map(|_| rng.gen_range(-b..b)).collect::<Vec<f64>>();
    let layers = vec![
        Layer::conv2d(3, 4, Window2d::square(3, 1, 1), r(4 * 27, 0.4), r(4, 0.1)).unwrap(),
        Layer::Affine {
            scale: r(4, 1.5),
            shift: r(4, 0.5),
        },
        Layer::ReLU,
        Layer::MaxPool2d {
            window: Window2d::square(2, 2, 0),
        },
        Layer::conv2d(4, 6, Window2d::square(3, 2, 1), r(6 * 36, 0.3), r(6, 0.1)).unwrap(),
        Layer::ReLU,
        Layer::AvgPool2d {
            window: Window2d::square(2, 1, 0),
            count_include_pad: true,
        },
        Layer::Affine {
            scale: r(6, 1.5),
            shift: r(6, 0.5),
        },
        Layer::AdaptiveAvgPool2d { output: [2, 2] },
        Layer::Flatten,
        Layer::Dropout,
        Layer::linear(24, 5, r(120, 0.5), r(5, 0.1)).unwrap(),
    ];
    Sequential::with_input(layers, vec![3, 9, 11]).unwrap()
}

#[test]
fn small_cnn_matches_plaintext_and_declares_its_material() {
    let mut rng = test_rng("small_cnn");
    let model = small_cnn(&mut rng);
    let folded = model.clone().fold_affine();
    assert_eq!(
        folded.layers.len(),
        model.layers.len() - 1,
        "first BN folds"
    );
    let n = 3;
    let x: Vec<f64> = (0..n * model.in_features())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let plain = model.forward_f64(&x, n).unwrap();
    let plain_folded = folded.forward_f64(&x, n).unwrap();
    for (a, b) in plain.iter().zip(&plain_folded) {
        assert!(
            (a - b).abs() < 1e-9,
            "folding changes the function: {a} vs {b}"
        );
    }
    for mut s in sessions("cnn layers") {
        let shared = s.share_model(PartyId::ModelOwner, &folded).unwrap();
        let xh = s
            .share(PartyId::Client, &[n, folded.in_features()], &x)
            .unwrap();
        let (m, xid) = (shared.clone(), xh.id());
        let [id, _] = s
            .run(move |p| {
                p.preprocess(&m.material_specs(n, F))?;
                let y = m.forward(p, &p.kept(xid)?)?;
                assert_eq!(p.queued_material(), 0);
                Ok(p.keep(y))
            })
            .unwrap();
        let got = s
            .reveal(PartyId::ModelOwner, &Computation::handle(id, &[n, 5]))
            .unwrap();
        for (g, want) in got.iter().zip(&plain) {
            // A few truncations of < 1 ulp each, amplified by at most the weights' row sums.
            assert!((g - want).abs() < 2e-3, "cnn logit {g} vs {want}");
        }
    }
}

#[test]
fn bad_cnn_shapes_are_refused_before_any_work() {
    let mut rng = test_rng("cnn_shapes");
    let model = small_cnn(&mut rng);
    let mut layers = model.layers.clone();
    // A Linear whose width does not match the flattened features.
    layers[11] = Layer::linear(25, 5, vec![0.0; 125], vec![0.0; 5]).unwrap();
    let e = Sequential::with_input(layers, vec![3, 9, 11])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 11 Linear(25, 5)") && e.contains("[24]"),
        "{e}"
    );
    // Wrong channel count for the input.
    let e = Sequential::with_input(model.layers.clone(), vec![2, 9, 11])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 0 Conv2d(3, 4") && e.contains("receives 2 channels"),
        "{e}"
    );
    // An input too small for the kernels.
    let e = Sequential::with_input(model.layers.clone(), vec![3, 1, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
    // No output layer width without an input shape.
    let e = Sequential::new(model.layers.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input shape of a model starting with Conv2d"),
        "{e}"
    );
    // Shared input of the wrong size.
    let mut s = common::computation(
        engine::LocalConfig::default(),
        engine::FixedPoint::default(),
    )
    .unwrap();
    let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
    let xh = s.share(PartyId::Client, &[2, 7], &[0.0; 14]).unwrap();
    let xid = xh.id();
    let e = s
        .run(move |p| shared.forward(p, &p.kept(xid)?).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is not a batch of samples of shape [3, 9, 11]"),
        "{e}"
    );
}

#[test]
fn output_bounds_cover_the_layers() {
    let mut rng = test_rng("bounds");
    let model = small_cnn(&mut rng);
    let n = 4;
    let x: Vec<f64> = (0..n * model.in_features())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut bound = 1.0;
    let shapes = model.shapes().unwrap();
    let mut cur = x;
    for (i, l) in model.layers.iter().enumerate() {
        cur = l.forward_f64(&[&cur], n, &[&shapes[i]]);
        bound = l.output_bound(&[bound]);
        let max = cur.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            max <= bound + 1e-12,
            "layer {i} {}: {max} > {bound}",
            l.name()
        );
    }
}
