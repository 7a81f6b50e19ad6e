"""Arrays in every dtype and layout give the same predictions as the C-ordered float64 rows."""

import numpy as np
import pytest

import secure_serving as ss


@pytest.fixture(scope="module")
def reference(local, digits):
    x, _ = digits
    x = np.ascontiguousarray(x[:48], dtype=np.float64)
    return x, local.client().classify("digits", x, batch=48).predictions


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: x.astype(np.float32), id="float32-C"),
        pytest.param(lambda x: np.asfortranarray(x), id="float64-F"),
        pytest.param(lambda x: np.asfortranarray(x.astype(np.float32)), id="float32-F"),
        pytest.param(lambda x: np.repeat(x, 2, axis=0)[::2], id="strided-rows"),
        pytest.param(lambda x: np.concatenate([x, x], axis=3)[..., :8], id="sliced-columns"),
        pytest.param(lambda x: x.astype(">f8"), id="big-endian"),
        pytest.param(lambda x: x.astype(np.float16), id="float16"),
        pytest.param(lambda x: x.tolist(), id="nested-list"),
    ],
)
def test_layouts_and_dtypes(local, reference, make):
    x, want = reference
    got = make(x)
    if isinstance(got, np.ndarray) and got.dtype == np.float16:
        want = local.client().classify("digits", got.astype(np.float64), batch=48).predictions
    res = local.client().classify("digits", got, batch=48)
    np.testing.assert_array_equal(res.predictions, want)


def test_labels_dtypes(local, digits):
    x, y = digits
    for labels in (y.astype(np.int32), y.astype(np.uint8), list(map(int, y))):
        res = local.client().classify("digits", x, labels=labels, batch=120)
        assert local.model_owner().score(res.request_id) == 313


def test_refused_arrays(local, digits):
    x, y = digits
    c = local.client()
    with pytest.raises(ss.BadInput, match="dtype complex128 is not supported"):
        c.classify("digits", x.astype(np.complex128))
    with pytest.raises(ss.BadInput, match="expected a 1-D integer array"):
        c.classify("digits", x, labels=y.reshape(-1, 1))
    with pytest.raises(ss.BadInput, match="integer class indices"):
        c.classify("digits", x, labels=y.astype(np.float64))
    with pytest.raises(ss.BadInput, match="360 labels for 10 inputs"):
        c.classify("digits", x[:10], labels=y)
    with pytest.raises(ss.BadInput, match="label 10 at index 0"):
        c.classify("digits", x[:1], labels=[10])


def test_predictions_are_a_fresh_array(local, digits):
    x, _ = digits
    p = local.client().classify("digits", x[:4]).predictions
    # The engine's Vec handed to numpy as is (no copy): numpy does not own it, but may write it.
    assert p.flags["C_CONTIGUOUS"] and p.flags["WRITEABLE"]
    p[0] = -1
