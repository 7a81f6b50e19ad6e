//! The `ReLU → MaxPool2d` rewrite (`engine::nn::rewrite`): a ReLU read only by a max pool runs
//! after it, `relu(maxpool(x))`, one ReLU per pooled value. Checked here on odd shapes
//! (channels 1, 3, 7; odd heights and widths; 2x2 stride-2 pools and 3x3 stride-2 pools with
//! padding 1) against plaintext: bit for bit on ring values for the block itself, and the
//! plaintext predictions for whole models, with the full-width, narrow and checked comparisons;
//! the block's traffic drops; an input that overflows the layer before the pool still fails
//! with the detected-overflow error; a ReLU with another reader keeps its place.

mod common;

use std::sync::Arc;

use common::{argmax_rows, computation, test_rng};
use engine::error::ErrorKind;
use engine::nn::geometry::Window2d;
use engine::nn::plain::{GraphBuilder, Layer, Sequential};
use engine::nn::range::ModelBounds;
use engine::nn::rewrite::DEFERRED_RELU;
use engine::nn::shared::SharedLayer;
use engine::nn::{ModelPlan, SharedModel};
use engine::protocols::compare::CompareMode;
use engine::protocols::range_check::{checked_sites, range_check_specs};
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::transport::StepStats;
use engine::{Computation, FixedPoint, LocalConfig, LocalDeployment, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

const F: u32 = 16;
const MODES: [CompareMode; 3] = [CompareMode::Full, CompareMode::Narrow, CompareMode::Checked];

/// `(n, c, h, w)` inputs and the pools: 2x2 stride 2, and 3x3 stride 2 padding 1.
const SHAPES: [[usize; 4]; 3] = [[2, 1, 5, 7], [1, 3, 9, 11], [2, 7, 7, 5]];
const POOLS: [([usize; 2], [usize; 2], [usize; 2]); 2] =
    [([2, 2], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1])];

fn window((kernel, stride, padding): ([usize; 2], [usize; 2], [usize; 2])) -> Window2d {
    Window2d {
        kernel,
        stride,
        padding,
    }
}

/// `maxpool(relu(x))` on signed ring values, from the definition (windows of in-bounds taps).
fn plain_pool_of_relu(x: &[i64], [n, c, h, w]: [usize; 4], win: &Window2d) -> Vec<i64> {
    let out = |len: usize, a: usize| (len + 2 * win.padding[a] - win.kernel[a]) / win.stride[a] + 1;
    let (oh, ow) = (out(h, 0), out(w, 1));
    let mut y = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = i64::MIN;
                for ky in 0..win.kernel[0] {
                    for kx in 0..win.kernel[1] {
                        let iy = (oy * win.stride[0] + ky) as isize - win.padding[0] as isize;
                        let ix = (ox * win.stride[1] + kx) as isize - win.padding[1] as isize;
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let v = x[plane * h * w + iy as usize * w + ix as usize];
                            best = best.max(v.max(0));
                        }
                    }
                }
                y.push(best);
            }
        }
    }
    y
}

/// Run `layers` (a chain) on the kept ring input `xid` of `batch` rows, all material
/// preprocessed (the layers' and the range-check finish's), then finish the range checks.
/// Returns the revealed ring output, alice's online traffic of each layer and of the whole
/// chain (one window: a round that spans two layers is counted once).
fn run_chain(
    s: &mut Computation,
    layers: Vec<Arc<dyn SharedLayer>>,
    batch: usize,
    xid: u64,
) -> (Vec<i64>, Vec<StepStats>, StepStats) {
    let [(id, shape, stats, total), _] = s
        .run(move |p| {
            let mut specs = Vec::new();
            for l in &layers {
                specs.extend(l.material(batch, F));
            }
            specs.extend(range_check_specs(checked_sites(&specs)));
            p.preprocess(&specs)?;
            let mut cur = p.kept(xid)?;
            let mut stats = Vec::new();
            let start = p.traffic();
            for (i, l) in layers.iter().enumerate() {
                let before = p.traffic();
                p.set_range_site(format!("layer {i} {}", l.name()));
                cur = l.forward(p, &cur)?;
                stats.push(p.traffic().since(&before).online());
            }
            let total = p.traffic().since(&start).online();
            p.finish_range_checks()?;
            assert_eq!(
                p.queued_material(),
                0,
                "the layers consume what they declare"
            );
            let shape = cur.shape().to_vec();
            Ok((p.keep(cur), shape, stats, total))
        })
        .unwrap();
    let got = s
        .reveal_ring(PartyId::ModelOwner, &Computation::handle(id, &shape))
        .unwrap();
    (got.into_iter().map(|v| v as i64).collect(), stats, total)
}

/// Ring values in ±8 (real units) with edge values, and the first plane all negative (its
/// pooled ReLUs are 0 while its maxima are negative).
fn ring_inputs(rng: &mut ChaCha20Rng, len: usize, plane: usize) -> Vec<i64> {
    let top = 8i64 << F;
    let edges = [0, 1, -1, -(1 << F), top, -top];
    (0..len)
        .map(|i| match i {
            _ if i < plane => -rng.gen_range(1..=top),
            _ if i - plane < edges.len() => edges[i - plane],
            _ => rng.gen_range(-top..=top),
        })
        .collect()
}

#[test]
fn relu_then_max_pool_is_exact_in_every_mode_with_fewer_bytes() {
    let mut rng = test_rng("relu_pool_block");
    let mut s = computation(LocalConfig::default(), FixedPoint::default()).unwrap();
    let fx = s.fixed_point();
    for [n, c, h, w] in SHAPES {
        for pool in POOLS {
            let win = window(pool);
            // ReLU and pool first, so the shared block's input is the encoded input itself.
            let [oh, ow] = win.output_size("pool", h, w).unwrap();
            let feats = c * oh * ow;
            let model = Sequential::with_input(
                vec![
                    Layer::ReLU,
                    Layer::MaxPool2d { window: win },
                    Layer::Flatten,
                    Layer::linear(feats, 2, vec![0.5; 2 * feats], vec![0.0; 2]).unwrap(),
                ],
                vec![c, h, w],
            )
            .unwrap();
            let mut plan = ModelPlan::of(&model, &fx, &ModelBounds::default()).unwrap();
            assert_eq!(plan.relu_after_pool, vec![0], "the pair is rewritten");
            let x = ring_inputs(&mut rng, n * c * h * w, h * w);
            let want = plain_pool_of_relu(&x, [n, c, h, w], &win);
            let words: Vec<u64> = x.iter().map(|&v| v as u64).collect();
            let xid = s
                .share_ring(PartyId::Client, &[n, c, h, w], &words)
                .unwrap()
                .id();
            for mode in MODES {
                plan.compare = mode;
                plan.check().unwrap();
                let fused: Vec<Arc<dyn SharedLayer>> = (0..2)
                    .map(|i| plan.assemble_layer(i, &[], &fx).unwrap())
                    .collect();
                assert_eq!(fused[0].name(), DEFERRED_RELU);
                assert!(
                    fused[1].name().starts_with("ReLU∘MaxPool2d"),
                    "{}",
                    fused[1].name()
                );
                let unfused: Vec<Arc<dyn SharedLayer>> = (0..2)
                    .map(|i| {
                        // Both read values of the input's shape.
                        let inp = [vec![c, h, w]];
                        plan.layers[i].assemble(&inp, &[], &fx, mode).unwrap()
                    })
                    .collect();
                assert_eq!(unfused[0].name(), "ReLU");
                let (got, fs, ft) = run_chain(&mut s, fused, n, xid);
                let (before, us, ut) = run_chain(&mut s, unfused, n, xid);
                let case = format!("{mode:?} input {:?} pool {pool:?}", [n, c, h, w]);
                assert_eq!(
                    got, want,
                    "{case}: relu(maxpool(x)) against maxpool(relu(x))"
                );
                assert_eq!(before, want, "{case}: the original order");
                // The moved ReLU costs nothing where it stood; the block makes the same
                // exchanges (reordered; the meter, which counts rounds per protocol step, may
                // count one more or less where the order changed) and drops most of the
                // ReLU's bytes: it runs on the pooled values only.
                assert_eq!((fs[0].rounds, fs[0].bytes_sent), (0, 0), "{case}");
                let relu_bytes = us[0].bytes_sent;
                eprintln!(
                    "{case}: ReLU → MaxPool {} rounds, {} bytes; rewritten {} rounds, {} bytes",
                    ut.rounds, ut.bytes_sent, ft.rounds, ft.bytes_sent
                );
                assert_eq!(ft.messages, ut.messages, "{case}");
                assert!(ft.rounds <= ut.rounds + 1, "{case}");
                assert!(
                    2 * (ut.bytes_sent - ft.bytes_sent) >= relu_bytes,
                    "{case}: saved {} of the ReLU's {relu_bytes} bytes",
                    ut.bytes_sent.saturating_sub(ft.bytes_sent)
                );
            }
            s.run(move |p| {
                p.forget(xid);
                Ok(())
            })
            .unwrap();
        }
    }
}

/// Share `model` the way every upload does (the owner sends each layer's shares, each party
/// builds the layer from the plan), with the plan's comparisons run by `mode`.
fn share_as(
    s: &mut Computation,
    model: &Sequential,
    bounds: &ModelBounds,
    mode: CompareMode,
) -> (SharedModel, Arc<ModelPlan>) {
    let fx = s.fixed_point();
    let mut plan = ModelPlan::of(model, &fx, bounds).unwrap();
    plan.compare = mode;
    plan.check().unwrap();
    let plan = Arc::new(plan);
    let mut layers = Vec::new();
    for li in 0..plan.layers.len() {
        plan.send_layer(model, li, &fx, &mut |shape, fill| {
            s.send_shares_filled(PartyId::ModelOwner, shape, fill)
        })
        .unwrap();
        let pl = plan.clone();
        let [(layer, _), _] = s
            .run(move |p| pl.build_layer(p, li, PartyId::ModelOwner))
            .unwrap();
        layers.push(layer);
    }
    (plan.model(layers, &fx), plan)
}

/// A CNN with two `ReLU → MaxPool2d` pairs: conv (c → 7, 3x3, padding 1), ReLU, 3x3 stride-2
/// pool with padding 1, conv (7 → 3), ReLU, 2x2 stride-2 pool, flatten, linear (4 classes).
/// The convolutions' weights are uniform in `±a1` and `±a2`.
fn cnn(rng: &mut ChaCha20Rng, [c, h, w]: [usize; 3], a1: f64, a2: f64) -> Sequential {
    let mut r = |n: usize, b: f64| (0..n).map(|_| rng.gen_range(-b..b)).collect::<Vec<f64>>();
    let conv = Window2d::square(3, 1, 1);
    let (p1, p2) = (window(POOLS[1]), window(POOLS[0]));
    let out = |len: usize, p: &Window2d| (len + 2 * p.padding[0] - p.kernel[0]) / p.stride[0] + 1;
    let feats = 3 * out(out(h, &p1), &p2) * out(out(w, &p1), &p2);
    let layers = vec![
        Layer::conv2d(c, 7, conv, r(7 * c * 9, a1), r(7, 0.1)).unwrap(),
        Layer::ReLU,
        Layer::MaxPool2d { window: p1 },
        Layer::conv2d(7, 3, conv, r(3 * 63, a2), r(3, 0.1)).unwrap(),
        Layer::ReLU,
        Layer::MaxPool2d { window: p2 },
        Layer::Flatten,
        Layer::linear(feats, 4, r(4 * feats, 0.5), r(4, 0.1)).unwrap(),
    ];
    Sequential::with_input(layers, vec![c, h, w]).unwrap()
}

/// Secure logits within the plan's proven error of plaintext, so every prediction whose
/// plaintext margin exceeds twice that error is the plaintext one.
fn assert_matches_plaintext(model: &Sequential, x: &[f64], n: usize, got: &[f64], err: f64) {
    let plain = model.forward_f64(x, n).unwrap();
    let classes = plain.len() / n;
    for (g, p) in got.iter().zip(&plain) {
        assert!(
            (g - p).abs() <= err,
            "logit {g} vs plaintext {p}, proven error {err}"
        );
    }
    for (i, (&(want, margin), (g, _))) in argmax_rows(&plain, classes)
        .iter()
        .zip(argmax_rows(got, classes))
        .enumerate()
    {
        if margin > 2.0 * err {
            assert_eq!(g, want, "row {i}: plaintext margin {margin}");
        }
    }
}

#[test]
fn relu_pool_models_give_the_plaintext_predictions_in_every_mode() {
    let mut rng = test_rng("relu_pool_models");
    let mut s = computation(LocalConfig::default(), FixedPoint::default()).unwrap();
    for [n, c, h, w] in SHAPES {
        let model = cnn(&mut rng, [c, h, w], 0.4, 0.4);
        let x: Vec<f64> = (0..n * model.in_features())
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        for mode in MODES {
            let (shared, plan) = share_as(&mut s, &model, &ModelBounds::default(), mode);
            assert_eq!(plan.relu_after_pool, vec![1, 4]);
            let err = plan.range.as_ref().unwrap().logit_error;
            let got = s.logits_for_client(&shared, &x, n).unwrap();
            assert_matches_plaintext(&model, &x, n, &got, err);
            s.delete_model(shared).unwrap();
        }
    }
}

/// A model whose worst-case bounds exceed the ring (input bound 2^14, first convolution's rows
/// of `L1` norm ≈ 2^12, second ≈ 2^5), so it runs checked, with both ReLUs after their pools.
/// Small inputs classify as in plaintext; an input within the bound that drives the first
/// convolution (the layer before the first pair) far past the check's range fails with
/// [`ErrorKind::OverflowDetected`] and reveals nothing; the next request works again.
#[test]
fn an_input_overflowing_the_layer_before_the_pool_is_detected() {
    let mut rng = test_rng("relu_pool_overflow");
    let model = cnn(&mut rng, [3, 9, 11], 300.0, 1.0);
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let fx = FixedPoint::default();
    let bounds = ModelBounds::worst_case(16384.0);
    let mut clf = SecureClassifier::upload(&d, &model, &fx, &bounds).unwrap();
    assert_eq!(clf.plan().compare, CompareMode::Checked);
    assert_eq!(clf.plan().relu_after_pool, vec![1, 4]);
    let n = 4;
    let opts = ClassifyOptions { batch: n };
    // On the fixed-point grid, so the inputs encode exactly.
    let small: Vec<f64> = (0..n * model.in_features())
        .map(|_| (rng.gen_range(-0.05..0.05) * 65536.0f64).round() / 65536.0)
        .collect();
    let plain = model.forward_f64(&small, n).unwrap();
    let r = clf.classify(&small, None, &opts).unwrap();
    for (i, (&(want, margin), &g)) in argmax_rows(&plain, 4)
        .iter()
        .zip(&r.predictions)
        .enumerate()
    {
        if margin > 0.5 {
            assert_eq!(g, want, "row {i}: plaintext margin {margin}");
        }
    }
    // Sample 0 at 2000 everywhere: the first convolution's outputs reach ~10^6, far past the
    // check's 1.5·2^14 (real units at 16 fractional bits).
    let mut big = small.clone();
    big[..model.in_features()].fill(2000.0);
    let e = clf.classify(&big, None, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OverflowDetected, "{e}");
    let r = clf.classify(&small, None, &opts).unwrap();
    assert_eq!(r.predictions.len(), n);
}

/// Inside a graph: a ReLU read by a max pool and by a concatenation keeps its place; a ReLU
/// read by its pool alone runs after it. The model gets the plaintext predictions in every
/// mode.
#[test]
fn in_a_graph_only_a_relu_read_by_its_pool_alone_moves() {
    let mut rng = test_rng("relu_pool_graph");
    let mut s = computation(LocalConfig::default(), FixedPoint::default()).unwrap();
    let mut r = |n: usize, b: f64| (0..n).map(|_| rng.gen_range(-b..b)).collect::<Vec<f64>>();
    let (c, h, w, n) = (3, 9, 7, 2);
    let conv = Window2d::square(3, 1, 1);
    let mut g = GraphBuilder::new();
    let a = g.push(
        Layer::conv2d(c, 4, conv, r(4 * c * 9, 0.4), r(4, 0.1)).unwrap(),
        &[0],
    );
    let ra = g.push(Layer::ReLU, &[a]); // read by the pool and the concatenation
    let pa = g.push(
        Layer::MaxPool2d {
            window: Window2d::square(3, 1, 1),
        },
        &[ra],
    );
    let cat = g.push(Layer::Concat, &[pa, ra]);
    let b = g.push(
        Layer::conv2d(8, 5, conv, r(5 * 72, 0.3), r(5, 0.1)).unwrap(),
        &[cat],
    );
    let rb = g.push(Layer::ReLU, &[b]); // read by its pool alone
    let pb = g.push(
        Layer::MaxPool2d {
            window: window(POOLS[1]),
        },
        &[rb],
    );
    let flat = g.push(Layer::Flatten, &[pb]);
    let feats = 5 * 5 * 4;
    g.push(
        Layer::linear(feats, 3, r(3 * feats, 0.5), r(3, 0.1)).unwrap(),
        &[flat],
    );
    let model = g.build(vec![c, h, w]).unwrap();
    let x: Vec<f64> = (0..n * model.in_features()).map(|_| r(1, 1.0)[0]).collect();
    for mode in MODES {
        let (shared, plan) = share_as(&mut s, &model, &ModelBounds::default(), mode);
        assert_eq!(plan.relu_after_pool, vec![rb - 1]);
        assert_eq!(shared.layers()[ra - 1].name(), "ReLU");
        assert_eq!(shared.layers()[rb - 1].name(), DEFERRED_RELU);
        let err = plan.range.as_ref().unwrap().logit_error;
        let got = s.logits_for_client(&shared, &x, n).unwrap();
        assert_matches_plaintext(&model, &x, n, &got, err);
        s.delete_model(shared).unwrap();
    }
}
