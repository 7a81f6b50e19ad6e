//! Folding per-channel affine maps ([`Layer::Affine`]: batch norms, normalisations, products and
//! sums with constants) into the Linear or Conv2d layer next to them, where the result is the
//! same function exactly (in real arithmetic):
//!
//! - two affine maps in a row compose into one;
//! - after a Linear or Conv2d whose output nothing else reads: `W' = diag(scale)·W`,
//!   `b' = scale·b + shift` (BatchNorm after a convolution, BatchNorm1d after a Linear, a bias
//!   added after MatMul);
//! - before a Linear, or before a Conv2d without padding (or when every shift is 0), that is
//!   the only reader of the map's output: `W' = W·diag(scale)`, `b' = b + W·shift` (an input
//!   normalisation before the first layer). A convolution with padding pads the map's *output*
//!   with zeros, which a shift folded into its bias would not see, so it is not folded.
//!
//! An affine map that folds nowhere stays a layer; it is shared like a weight (see
//! [`crate::nn::plan`]), never sent to the parties in plaintext.

use crate::nn::plain::{Layer, Sequential};

impl Sequential {
    /// Fold every affine map that can be folded (see the module documentation); the model
    /// computes the same function with fewer layers.
    pub fn fold_affine(mut self) -> Sequential {
        while let Some(i) = (0..self.layers.len()).find(|&i| self.fold_one(i)) {
            self.layers.remove(i);
            self.wiring = self.wiring.without_layer(i);
        }
        self
    }

    /// Fold affine layer `i` into a neighbour, if it can be; `true` when it was (the layer is
    /// then to be removed).
    fn fold_one(&mut self, i: usize) -> bool {
        let Layer::Affine { scale, shift } = &self.layers[i] else {
            return false;
        };
        let (scale, shift) = (scale.clone(), shift.clone());
        if scale.iter().all(|&s| s == 1.0) && shift.iter().all(|&t| t == 0.0) {
            return true;
        }
        let source = self.wiring.inputs(i)[0];
        let readers = self.wiring.readers(i + 1);
        let next = match readers[..] {
            [j] if self.wiring.inputs(j).len() == 1 => Some(j),
            _ => None,
        };
        if let Some(Layer::Affine {
            scale: s2,
            shift: t2,
        }) = next.map(|j| &mut self.layers[j])
        {
            // y = s2·(s·x + t) + t2.
            for c in 0..s2.len() {
                t2[c] += s2[c] * shift[c];
                s2[c] *= scale[c];
            }
            return true;
        }
        if source > 0
            && self.wiring.readers(source) == [i]
            && after(&mut self.layers[source - 1], &scale, &shift)
        {
            return true;
        }
        match next {
            Some(j) => before(&mut self.layers[j], &scale, &shift),
            None => false,
        }
    }
}

/// Fold `y = scale·x + shift` into the layer computing `x`.
fn after(layer: &mut Layer, scale: &[f64], shift: &[f64]) -> bool {
    let (weight, bias) = match layer {
        Layer::Linear { weight, bias, .. } | Layer::Conv2d { weight, bias, .. } => (weight, bias),
        _ => return false,
    };
    if bias.len() != scale.len() || bias.is_empty() {
        return false;
    }
    let k = weight.len() / bias.len();
    for o in 0..bias.len() {
        weight[o * k..(o + 1) * k]
            .iter_mut()
            .for_each(|w| *w *= scale[o]);
        bias[o] = bias[o] * scale[o] + shift[o];
    }
    true
}

/// Fold `x = scale·u + shift` into the layer reading `x` (one weight column per channel, or
/// `kh·kw` of them for a convolution).
fn before(layer: &mut Layer, scale: &[f64], shift: &[f64]) -> bool {
    let (weight, bias, taps) = match layer {
        Layer::Linear {
            in_features,
            weight,
            bias,
            ..
        } if *in_features == scale.len() => (weight, bias, 1),
        Layer::Conv2d {
            in_channels,
            window,
            weight,
            bias,
            ..
        } if *in_channels == scale.len()
            && (window.padding == [0, 0] || shift.iter().all(|&t| t == 0.0)) =>
        {
            (weight, bias, window.kernel[0] * window.kernel[1])
        }
        _ => return false,
    };
    let k = scale.len() * taps;
    for (o, b) in bias.iter_mut().enumerate() {
        for (x, w) in weight[o * k..(o + 1) * k].iter_mut().enumerate() {
            let c = x / taps;
            *b += *w * shift[c];
            *w *= scale[c];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::geometry::Window2d;
    use crate::nn::graph::Wiring;

    fn affine(scale: Vec<f64>, shift: Vec<f64>) -> Layer {
        Layer::Affine { scale, shift }
    }

    fn same_function(a: &Sequential, b: &Sequential) {
        let n = 3;
        let x: Vec<f64> = (0..n * a.in_features())
            .map(|i| ((i * 7919) % 23) as f64 / 7.0 - 1.5)
            .collect();
        let (ya, yb) = (a.forward_f64(&x, n).unwrap(), b.forward_f64(&x, n).unwrap());
        for (p, q) in ya.iter().zip(&yb) {
            assert!((p - q).abs() < 1e-9, "{p} vs {q}");
        }
    }

    #[test]
    fn affine_maps_fold_where_exact_and_stay_elsewhere() {
        let conv = |pad| {
            Layer::conv2d(
                2,
                3,
                Window2d::square(3, 1, pad),
                (0..54).map(|i| i as f64 / 50.0 - 0.5).collect(),
                vec![0.1, -0.2, 0.3],
            )
            .unwrap()
        };
        let lin = Layer::linear(
            12,
            2,
            (0..24).map(|i| i as f64 / 9.0 - 1.0).collect(),
            vec![0.5, -0.5],
        )
        .unwrap();
        // Normalise (two maps), conv without padding, BN, ReLU, BN, flatten, linear.
        let m = Sequential::with_input(
            vec![
                affine(vec![1.0, 1.0], vec![-0.4, -0.5]),
                affine(vec![4.0, 2.0], vec![0.0, 0.0]),
                conv(0),
                affine(vec![0.5, 2.0, -1.0], vec![0.1, 0.2, 0.3]),
                Layer::ReLU,
                affine(vec![1.5, 0.5, 2.0], vec![0.0, 1.0, -1.0]),
                Layer::Flatten,
                lin.clone(),
            ],
            vec![2, 4, 4],
        )
        .unwrap();
        let f = m.clone().fold_affine();
        same_function(&m, &f);
        let names: Vec<String> = f.layers.iter().map(Layer::name).collect();
        // The last map sits between a ReLU and a Flatten: it stays.
        assert_eq!(
            names[0],
            "Conv2d(2, 3, kernel_size=[3, 3], stride=[1, 1], padding=[0, 0])"
        );
        assert_eq!(
            names[1..],
            ["ReLU", "Affine(3)", "Flatten", "Linear(12, 2)"]
        );
        // Before a padded convolution a shift cannot fold; a pure scale can.
        let m = Sequential::with_input(
            vec![
                affine(vec![2.0, 3.0], vec![0.5, 0.0]),
                conv(1),
                Layer::Flatten,
                Layer::linear(60, 2, vec![0.1; 120], vec![0.0; 2]).unwrap(),
            ],
            vec![2, 4, 5],
        )
        .unwrap();
        let f = m.clone().fold_affine();
        assert!(matches!(f.layers[0], Layer::Affine { .. }));
        same_function(&m, &f);
        let mut scaled = m.clone();
        scaled.layers[0] = affine(vec![2.0, 3.0], vec![0.0, 0.0]);
        let f = scaled.clone().fold_affine();
        assert_eq!(f.layers.len(), 3);
        same_function(&scaled, &f);
        // A map after a layer whose output is also read elsewhere (a residual) does not fold.
        let m = Sequential::graph(
            vec![
                Layer::linear(2, 2, vec![1.0, 2.0, 3.0, 4.0], vec![0.0; 2]).unwrap(),
                affine(vec![2.0, 2.0], vec![1.0, 1.0]),
                Layer::Add,
                Layer::linear(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![0.0; 2]).unwrap(),
                affine(vec![3.0, 3.0], vec![0.0, 0.0]),
                Layer::ReLU,
                Layer::Add,
                lin_out(),
            ],
            vec![2],
            // Only the map after the second Linear, its only reader, folds.
            Wiring::new(vec![
                vec![0],
                vec![1],
                vec![1, 2],
                vec![3],
                vec![4],
                vec![5],
                vec![3, 6],
                vec![7],
            ]),
        )
        .unwrap();
        let f = m.clone().fold_affine();
        same_function(&m, &f);
        assert_eq!(
            f.layers.len(),
            7,
            "{:?}",
            f.layers.iter().map(Layer::name).collect::<Vec<_>>()
        );
    }

    fn lin_out() -> Layer {
        Layer::linear(2, 3, vec![0.5, -1.0, 1.0, 0.25, -0.5, 2.0], vec![0.0; 3]).unwrap()
    }
}
