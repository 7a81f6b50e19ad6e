//! Exact rewrites of the shared model: the plaintext model stays as its owner wrote it, and
//! the shared layers the parties build from its plan ([`crate::nn::plan`]) compute the same
//! function with fewer comparisons.
//!
//! # A max pool after a ReLU: `maxpool(relu(x)) = relu(maxpool(x))`
//! ReLU is monotone (non-decreasing), and a monotone `g` commutes with a maximum:
//! `g(max S) = max g(S)` for every finite set `S`. A max pool's window `S` holds input elements
//! only (a padded position repeats an element of its own window, see
//! [`crate::nn::geometry::max_pool_index`]), so the pool of the ReLU's output equals the ReLU of
//! the pool's output, exactly, on every ring value the comparisons order correctly. Where a
//! ReLU's output is read by nothing but one `MaxPool2d` (a chain's `ReLU → MaxPool2d`, or the
//! same pair inside a graph whose ReLU has no other reader), the ReLU layer becomes the identity
//! and the pool computes `relu(maxpool(x))` ([`crate::nn::shared::SharedMaxPool2d::then_relu`]):
//! one ReLU per pooled output instead of one per input (a quarter for a 2x2 stride-2 pool),
//! its comparisons in the same place in the model's material as the pool's. The pairs are found
//! from the layer kinds and the wiring alone ([`relu_pool_pairs`]); the plan lists the ReLUs
//! it moves ([`crate::nn::plan::ModelPlan::relu_after_pool`]).
//!
//! # Soundness of the range protection
//! - **Full-width comparisons** ([`CompareMode::Full`]): the range analysis proves every value
//!   below `2^62` ring units, so every difference the pool compares is below `2^63` and every
//!   comparison is exact, whichever the order.
//! - **Narrow, unchecked** ([`CompareMode::Narrow`], never chosen by the analysis; a
//!   measurement of the bench on a model whose values are known small): exact wherever every
//!   compared value is below `2^31`; after the rewrite the pool compares differences of
//!   pre-ReLU values, `|x_a - x_b| <= 2·max |x|`.
//! - **Checked comparisons** ([`CompareMode::Checked`]): the pool's comparisons are the narrow
//!   comparisons with the fused range check, and the ReLU after the pool is one too. The range
//!   analysis ([`crate::nn::range`]) runs on the rewritten order: the moved ReLU is the identity
//!   (it compares nothing and does not re-anchor), and the pool compares differences of its
//!   input, bounded by `2·r` where `r` bounds `|x|` (every operand at every level of the
//!   tournament is an element of the window), then the pooled value (below `r`); the analysis
//!   holds `2·r` below the check's exact window `2^(top - 2)`, and re-anchors after the pool at
//!   the check's guarantee `1.5·2^30`, as it did after the ReLU (the maximum of values that
//!   passed a ReLU's check is below the same bound, so every later layer is analysed exactly as
//!   before). Then, by the induction of [`crate::protocols::range_check`]: if every earlier
//!   check passed, `x` is computed exactly; a difference that passes is below `1.5·2^30`, so its
//!   sign, and the tournament's maximum, is exact; a difference outside the narrow width fails
//!   its check and the batch ends with [`crate::error::ErrorKind::OverflowDetected`]; the pooled
//!   value is checked by the ReLU, so a pooled value out of range is detected too. An input
//!   element in no window affects no output and need not be checked. Nothing out of range is
//!   compared without a recorded failure, so no answer is silently wrong.
//! - **The rare model the rewrite cannot prove**: `2·r` is at most one bit above what the ReLU
//!   alone needed (`r`). A value after a product is below `2^(62 - f)` plus its bias, so `2·r`
//!   stays below the window `2^(64 - f)`; only a sum of several large values (a residual `Add`
//!   of four) before the ReLU can reach it. Where the checked analysis fails with the rewrite
//!   it runs again without it, and the model keeps its ReLUs before the pools (the plan then
//!   lists none: one bit about the model's bounds, of the same kind as its comparison mode).
//!
//! The parties learn nothing new: the list is a function of the public layer kinds and wiring
//! (or empty), and the comparisons are the same protocols with their own security arguments.
//!
//! [`CompareMode::Full`]: crate::protocols::compare::CompareMode::Full
//! [`CompareMode::Narrow`]: crate::protocols::compare::CompareMode::Narrow
//! [`CompareMode::Checked`]: crate::protocols::compare::CompareMode::Checked

use crate::error::Result;
use crate::nn::graph::Wiring;
use crate::nn::plain::Layer;
use crate::nn::source::{LayerShape, ModelSource};

/// Name of a ReLU layer moved after the max pool that reads it (the identity where it stood).
pub const DEFERRED_RELU: &str = "ReLU deferred to the max pool";

/// The pairs `(relu, pool)` of a model with `layers` layers wired by `wiring`: `relu` is a ReLU
/// (`is_relu`), its output is read by layer `pool` alone, which is a max pool (`is_max_pool`)
/// reading that one value. Sorted by `relu`.
pub fn relu_pool_pairs_by(
    layers: usize,
    wiring: &Wiring,
    is_relu: impl Fn(usize) -> bool,
    is_max_pool: impl Fn(usize) -> bool,
) -> Vec<(usize, usize)> {
    if wiring.len() != layers {
        return Vec::new();
    }
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); layers + 1];
    for i in 0..layers {
        for &v in wiring.inputs(i) {
            if v <= layers && !readers[v].contains(&i) {
                readers[v].push(i);
            }
        }
    }
    (0..layers)
        .filter(|&r| is_relu(r))
        .filter_map(|r| match readers[r + 1].as_slice() {
            [p] if is_max_pool(*p) && wiring.inputs(*p) == [r + 1] => Some((r, *p)),
            _ => None,
        })
        .collect()
}

/// The ReLU → max pool pairs of `model` (see [`relu_pool_pairs_by`]).
pub fn relu_pool_pairs(model: &(impl ModelSource + ?Sized)) -> Result<Vec<(usize, usize)>> {
    let kinds = model.layer_shapes();
    let wiring = model.wiring();
    let mut pools = vec![false; kinds.len()];
    for (i, k) in kinds.iter().enumerate() {
        if *k == LayerShape::Other {
            pools[i] = matches!(&*model.layer(i)?, Layer::MaxPool2d { .. });
        }
    }
    Ok(relu_pool_pairs_by(
        kinds.len(),
        &wiring,
        |i| kinds[i] == LayerShape::ReLU,
        |i| pools[i],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::geometry::Window2d;
    use crate::nn::plain::Sequential;

    fn pool() -> Layer {
        Layer::MaxPool2d {
            window: Window2d::square(2, 2, 0),
        }
    }

    #[test]
    fn only_a_relu_read_by_its_max_pool_alone_is_paired() {
        let conv = || Layer::conv2d(1, 1, Window2d::square(1, 1, 0), vec![1.0], vec![0.0]);
        let chain = Sequential::with_input(
            vec![
                conv().unwrap(),
                Layer::ReLU,
                pool(),
                Layer::ReLU,
                Layer::AvgPool2d {
                    window: Window2d::square(2, 2, 0),
                    count_include_pad: true,
                },
                Layer::Flatten,
                Layer::linear(1, 1, vec![1.0], vec![0.0]).unwrap(),
            ],
            vec![1, 4, 4],
        )
        .unwrap();
        assert_eq!(relu_pool_pairs(&chain).unwrap(), vec![(1, 2)]);
        // Value 2 (the ReLU's output) read by the pool and by an Add: no pair.
        let w = Wiring::new(vec![vec![0], vec![1], vec![2], vec![2, 3]]);
        let kinds = [false, true, false, false];
        let pools = [false, false, true, false];
        assert!(relu_pool_pairs_by(4, &w, |i| kinds[i], |i| pools[i]).is_empty());
        // The same graph with the Add reading the pool's output: a pair.
        let w = Wiring::new(vec![vec![0], vec![1], vec![2], vec![3, 3]]);
        assert_eq!(
            relu_pool_pairs_by(4, &w, |i| kinds[i], |i| pools[i]),
            vec![(1, 2)]
        );
    }
}
