"""Custom secure computations from Python (share, matmul, relu, argmax, reveal) against numpy,
as examples/embed.rs does in Rust. Random inputs: the seed is printed (rerun with SEED=...)."""

import os

import numpy as np
import pytest

import secure_serving as ss


@pytest.fixture
def rng():
    seed = int(os.environ.get("SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed = {seed} (rerun with SEED={seed})")
    return np.random.default_rng(seed)


def test_relu_of_a_product_and_argmax(rng):
    m, k, n = 7, 33, 5
    # Values on a 1/256 grid: products exact at 16 fractional bits, the only error left is the
    # secure truncation's (below one ulp per product).
    x = rng.integers(-1024, 1025, size=(m, k)) / 256.0
    w = rng.integers(-1024, 1025, size=(k, n)) / 256.0
    ulp = 2.0**-16
    with ss.LocalDeployment() as dep, dep.computation() as c:
        xs = c.share("client", x)
        ws = c.share("model_owner", np.asfortranarray(w.astype(np.float32)))
        z = c.relu(c.matmul(xs, ws))
        assert z.shape == [m, n]
        got = c.reveal("client", z)
        assert got.shape == (m, n) and got.dtype == np.float64
        np.testing.assert_allclose(got, np.maximum(x @ w, 0), rtol=0, atol=ulp)
        idx = c.reveal("model_owner", c.argmax(c.add(z, z)))
        want = np.argmax(np.maximum(x @ w, 0), axis=1)
        # Near-ties may differ by the truncation error; elsewhere the index is exact.
        top2 = np.sort(np.maximum(x @ w, 0), axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 4 * ulp
        np.testing.assert_array_equal(idx[clear], want[clear])
        c.delete(xs)


def test_refusals():
    with ss.LocalDeployment() as dep:
        with dep.computation() as c, dep.computation() as other:
            a = c.share("client", np.ones((2, 3)))
            with pytest.raises(ss.BadInput, match="do not multiply"):
                c.matmul(a, a)
            with pytest.raises(ss.BadInput, match="expected a matrix"):
                c.argmax(c.share("client", np.ones(3)))
            with pytest.raises(ss.BadInput, match="owner must be"):
                c.share("alice", np.ones(2))
            with pytest.raises(ss.BadInput, match="another computation"):
                other.relu(a)
            with pytest.raises(ss.BadInput, match="not finite"):
                c.share("client", np.array([1.0, np.inf]))
        with pytest.raises(ss.Error, match="closed"):
            c.relu(a)
        with pytest.raises(ss.BadInput, match="fractional bits"):
            dep.computation(frac_bits=70)
