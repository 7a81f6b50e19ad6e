//! Graph models on shares: the layers that read several values (residual `Add`, `Concat`) and the
//! activations built on comparisons (Clip, LeakyReLU, HardSwish), each against a reference computed here on
//! odd shapes and on both backends; and whole graph models against plaintext within the error
//! bound the range analysis proves.

mod common;

use std::sync::Arc;

use common::layers::{ring_inputs, run_layer, run_layer_on, F};
use common::sessions;
use common::test_rng;
use engine::nn::geometry::Window2d;
use engine::nn::plain::{Layer, Sequential};
use engine::nn::shared::{SharedAdd, SharedClip, SharedConcat, SharedHardSwish, SharedLeakyReLU};
use engine::nn::Wiring;
use engine::{Computation, FixedPoint, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// An odd per-sample image shape.
fn odd_chw(rng: &mut ChaCha20Rng) -> Vec<usize> {
    vec![
        rng.gen_range(1..4),
        rng.gen_range(1..6),
        rng.gen_range(2..7),
    ]
}

#[test]
fn clip_is_exact_on_shares() {
    let mut rng = test_rng("clip");
    let fx = FixedPoint::new(F).unwrap();
    for mut s in sessions("clip") {
        for (min, max) in [
            (Some(0.0), Some(6.0)),
            (Some(-1.0), Some(1.0)),
            (Some(rng.gen_range(-3.0..0.0)), None),
            (None, Some(rng.gen_range(0.0..3.0))),
            (Some(0.5), Some(0.5)),
            (None, None),
        ] {
            let shape = [rng.gen_range(1..4), rng.gen_range(1..30)];
            let x = ring_inputs(&mut rng, shape[0] * shape[1], 9.0);
            let layer = SharedClip::new(shape[1..].to_vec(), min, max, &fx).unwrap();
            let got = run_layer(&mut s, Arc::new(layer), &shape, &x);
            let enc = |v: Option<f64>| v.map(|v| fx.encode_one(v, 0).unwrap() as i64);
            let (lo, hi) = (enc(min), enc(max));
            for (g, v) in got.iter().zip(&x) {
                let want = hi.map_or(lo.map_or(*v, |l| (*v).max(l)), |h| {
                    lo.map_or(*v, |l| (*v).max(l)).min(h)
                });
                assert_eq!(*g, want, "clip({v}) to {min:?}..{max:?}");
            }
        }
    }
    let e = SharedClip::new(vec![2], Some(1.0), Some(0.0), &fx).unwrap_err();
    assert!(e.to_string().contains("above max"), "{e}");
}

#[test]
fn leaky_relu_is_exact_up_to_one_truncation() {
    let mut rng = test_rng("leaky_relu");
    let fx = FixedPoint::new(F).unwrap();
    for mut s in sessions("leaky relu") {
        for slope in [0.01, 0.2, rng.gen_range(-0.5..1.5)] {
            let shape = [rng.gen_range(1..4), rng.gen_range(1..40)];
            let x = ring_inputs(&mut rng, shape[0] * shape[1], 30.0);
            let layer = SharedLeakyReLU::new(shape[1..].to_vec(), slope, &fx).unwrap();
            let got = run_layer(&mut s, Arc::new(layer), &shape, &x);
            let c = fx.encode_one(1.0 - slope, 0).unwrap() as i64 as i128;
            for (g, &v) in got.iter().zip(&x) {
                if v >= 0 {
                    assert_eq!(*g, v, "leaky({v}) with slope {slope}");
                } else {
                    let floor = v - ((c * v as i128) >> F) as i64;
                    assert!(
                        *g == floor || *g == floor - 1,
                        "leaky({v}) with slope {slope}: {g} vs {floor}"
                    );
                }
            }
        }
    }
}

/// HardSwish on shares against `x·clip(x + 3, 0, 6)/6` computed here in ring units, within the
/// module's bound for exact inputs: `|x|·4 ulps + 1 ulp` (the factor is within 4 ulps of
/// `clip(x + 3, 0, 6)/6`, the product's truncation adds one), on odd shapes, both backends, and
/// the kinks at -3 and 3 and both ends of a ±30 range.
#[test]
fn hardswish_is_within_its_bound() {
    let mut rng = test_rng("hardswish");
    let fx = FixedPoint::new(F).unwrap();
    let one = (1i64 << F) as f64;
    for mut s in sessions("hardswish") {
        for _ in 0..3 {
            let shape = [rng.gen_range(1..4), rng.gen_range(1..40)];
            let mut x = ring_inputs(&mut rng, shape[0] * shape[1], 30.0);
            for (i, kink) in [3i64, -3, 6, -6].into_iter().enumerate() {
                if let Some(v) = x.get_mut(6 + i) {
                    *v = kink << F;
                }
            }
            let layer = SharedHardSwish::new(shape[1..].to_vec(), &fx).unwrap();
            let got = run_layer(&mut s, Arc::new(layer), &shape, &x);
            for (g, &v) in got.iter().zip(&x) {
                let v = v as f64;
                let want = v * (v + 3.0 * one).clamp(0.0, 6.0 * one) / (6.0 * one);
                let bound = v.abs() * 4.0 / one + 1.0 + 1e-6 * v.abs();
                assert!(
                    (*g as f64 - want).abs() <= bound,
                    "hardswish({}) = {} (ring {g}), want {} within {bound} ulps",
                    v / one,
                    *g as f64 / one,
                    want / one
                );
            }
        }
    }
}

#[test]
fn add_and_concat_are_local_and_exact() {
    let mut rng = test_rng("add_concat");
    for mut s in sessions("add and concat") {
        let n = rng.gen_range(1..4);
        let chw = odd_chw(&mut rng);
        let per: usize = chw.iter().product();
        let mut shape = vec![n];
        shape.extend(&chw);
        let (a, b, c) = (
            ring_inputs(&mut rng, n * per, 50.0),
            ring_inputs(&mut rng, n * per, 50.0),
            ring_inputs(&mut rng, n * per, 50.0),
        );
        let got = run_layer_on(
            &mut s,
            Arc::new(SharedAdd::new(3)),
            &[(&shape, &a), (&shape, &b), (&shape, &c)],
        );
        for i in 0..n * per {
            assert_eq!(got[i], a[i] + b[i] + c[i]);
        }
        // Concat along channels of [c1, h, w] and [c2, h, w].
        let c2 = rng.gen_range(1..4);
        let mut other = chw.clone();
        other[0] = c2;
        let per2: usize = other.iter().product();
        let mut shape2 = vec![n];
        shape2.extend(&other);
        let d = ring_inputs(&mut rng, n * per2, 50.0);
        let layer = SharedConcat::new(&[chw.clone(), other.clone()]).unwrap();
        let got = run_layer_on(&mut s, Arc::new(layer), &[(&shape, &a), (&shape2, &d)]);
        let want: Vec<i64> = (0..n)
            .flat_map(|j| {
                a[j * per..(j + 1) * per]
                    .iter()
                    .chain(&d[j * per2..(j + 1) * per2])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, want);
    }
}

/// A residual block with a concatenation and every activation: conv, ReLU, conv, Add (the
/// shortcut), LeakyReLU, Concat with a clipped branch, average pool, affine map, flatten,
/// linear.
fn residual_graph(rng: &mut ChaCha20Rng) -> Sequential {
    let c = rng.gen_range(1..4);
    let (h, w) = (rng.gen_range(3..7), rng.gen_range(3..7));
    let mut r = |n: usize, b: f64| (0..n).map(|_| rng.gen_range(-b..b)).collect::<Vec<f64>>();
    let conv = |r: &mut dyn FnMut(usize, f64) -> Vec<f64>| {
        Layer::conv2d(
            c,
            c,
            Window2d::square(3, 1, 1),
            r(c * c * 9, 0.4),
            r(c, 0.1),
        )
        .unwrap()
    };
    let feats = 2 * c * (h - 1) * (w - 1);
    let layers = vec![
        conv(&mut r),                    // 0: reads x
        Layer::ReLU,                     // 1
        conv(&mut r),                    // 2
        Layer::Add,                      // 3: x + conv(relu(conv(x)))
        Layer::LeakyReLU { slope: 0.1 }, // 4
        Layer::Clip {
            // 5: reads the Add
            min: Some(-1.0),
            max: Some(1.0),
        },
        Layer::Concat, // 6: [leaky, clip]
        Layer::AvgPool2d {
            window: Window2d::square(2, 1, 0),
            count_include_pad: true,
        },
        Layer::Affine {
            scale: r(2 * c, 1.5),
            shift: r(2 * c, 0.5),
        },
        Layer::Flatten,
        Layer::linear(feats, 3, r(3 * feats, 0.5), r(3, 0.1)).unwrap(),
    ];
    let wiring = Wiring::new(vec![
        vec![0],
        vec![1],
        vec![2],
        vec![0, 3],
        vec![4],
        vec![4],
        vec![5, 6],
        vec![7],
        vec![8],
        vec![9],
        vec![10],
    ]);
    Sequential::graph(layers, vec![c, h, w], wiring).unwrap()
}

#[test]
fn graph_models_match_plaintext_within_the_proven_error() {
    let mut rng = test_rng("graph_model");
    for mut s in sessions("graph model") {
        let model = residual_graph(&mut rng);
        let n = rng.gen_range(1..4);
        let x: Vec<f64> = (0..n * model.in_features())
            .map(|_| rng.gen_range(-2.0..2.0))
            .collect();
        let plain = model.forward_f64(&x, n).unwrap();
        let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
        let bound = shared.range().expect("the owner's report").logit_error;
        let xh = s
            .share(PartyId::Client, &[n, model.in_features()], &x)
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
            .reveal(PartyId::ModelOwner, &Computation::handle(id, &[n, 3]))
            .unwrap();
        for (g, want) in got.iter().zip(&plain) {
            assert!(
                (g - want).abs() <= bound,
                "graph logit {g} vs {want}: beyond the proven {bound}"
            );
        }
    }
}
