//! Shared helpers of the layer-level tests: ring inputs with edge
//! values, one shared layer run on revealed ring values.

use std::sync::Arc;

use engine::nn::shared::SharedLayer;
use engine::{Computation, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Fractional bits of the default session.
pub const F: u32 = 16;

/// Ring values of fixed-point inputs in ±`max` with edge values (0, ±1 ulp, -1.0, ±max).
pub fn ring_inputs(rng: &mut ChaCha20Rng, n: usize, max: f64) -> Vec<i64> {
    let top = (max * (1u64 << F) as f64) as i64;
    let edges = [0, 1, -1, -(1 << F), top, -top];
    (0..n)
        .map(|i| {
            if i < edges.len() {
                edges[i]
            } else {
                rng.gen_range(-top..=top)
            }
        })
        .collect()
}

/// Run one shared layer on `x` (ring values) with all its material preprocessed; checks that
/// the layer consumed exactly its declared material, and returns the revealed ring output.
pub fn run_layer(
    s: &mut Computation,
    layer: Arc<dyn SharedLayer>,
    shape: &[usize],
    x: &[i64],
) -> Vec<i64> {
    run_layer_on(s, layer, &[(shape, x)])
}

/// [`run_layer`] of a layer reading several values `(shape, ring values)`.
pub fn run_layer_on(
    s: &mut Computation,
    layer: Arc<dyn SharedLayer>,
    inputs: &[(&[usize], &[i64])],
) -> Vec<i64> {
    let mut ids = Vec::new();
    for (shape, x) in inputs {
        let words: Vec<u64> = x.iter().map(|&v| v as u64).collect();
        ids.push(s.share_ring(PartyId::Client, shape, &words).unwrap().id());
    }
    let batch = inputs[0].0[0];
    let [(id, shape_out), _] = s
        .run(move |p| {
            p.preprocess(&layer.material(batch, F))?;
            let xs = ids
                .iter()
                .map(|&i| p.kept(i))
                .collect::<engine::Result<Vec<_>>>()?;
            let refs: Vec<&engine::Share> = xs.iter().collect();
            let y = layer.forward_inputs(p, &refs)?;
            assert_eq!(p.queued_material(), 0, "{} left material", layer.name());
            let shape = y.shape().to_vec();
            Ok((p.keep(y), shape))
        })
        .unwrap();
    let h = Computation::handle(id, &shape_out);
    s.reveal_ring(PartyId::ModelOwner, &h)
        .unwrap()
        .into_iter()
        .map(|v| v as i64)
        .collect()
}
