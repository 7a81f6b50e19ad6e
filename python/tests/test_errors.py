"""Every exception class from a real failure, before any work where the input is at fault."""

import numpy as np
import pytest

import secure_serving as ss
from conftest import DIGITS


def test_hierarchy():
    for cls in (ss.BadInput, ss.Refused, ss.UnknownModel, ss.Busy, ss.OutOfStep, ss.PeerLost,
                ss.OverflowDetected, ss.Internal):
        assert issubclass(cls, ss.Error) and issubclass(cls, Exception)


def test_bad_shape(local, digits):
    x, _ = digits
    c = local.client()
    with pytest.raises(ss.BadInput, match=r"shape \[10, 64\] has 2, expected a 4-D array"):
        c.classify("digits", x[:10].reshape(10, 64))
    with pytest.raises(ss.BadInput, match="wrong number of dimensions"):
        c.classify("digits", x[0])
    with pytest.raises(ss.BadInput, match=r"\[2, 1, 8, 7\]"):
        c.classify("digits", x[:2, :, :, :7])
    with pytest.raises(ss.BadInput, match="batch size must be at least 1"):
        c.classify("digits", x[:2], batch=0)


def test_nan(local, digits):
    x, _ = digits
    x = x[:5].copy()
    x[3, 0, 2, 1] = np.nan
    with pytest.raises(ss.BadInput, match="row 3, column 17: value NaN is not finite"):
        local.client().classify("digits", x)


def test_unknown_model(local, digits):
    x, _ = digits
    with pytest.raises(ss.UnknownModel, match="no model 'nope' is served"):
        local.client().classify("nope", x[:1])


def test_overflow_detected(local, digits):
    x, _ = digits
    x = x[:3].copy()
    x[1, 0, 0, 0] = 1e6
    with pytest.raises(ss.OverflowDetected, match="outside the model's declared input bound"):
        local.client().classify("digits", x)
    # The range analysis refuses a model that could overflow, before anything is shared.
    with pytest.raises(ss.OverflowDetected):
        local.model_owner().upload("huge", DIGITS, input_bound=1e12)


def test_refused(local):
    with pytest.raises(ss.Refused, match="already exists"):
        local.model_owner().upload("digits", DIGITS)
    with pytest.raises(ss.Refused, match="only a model owner uploads"):
        local.client().upload("mine", DIGITS)


def test_busy(digits):
    x, _ = digits
    with ss.LocalDeployment(max_requests=1) as dep:
        dep.model_owner().upload("digits", DIGITS)
        # An open computation is one request in progress at each party.
        with dep.computation():
            with pytest.raises(ss.Busy, match="busy"):
                dep.client().classify("digits", x[:2])
        dep.client().classify("digits", x[:2])


def test_peer_lost_when_a_party_is_killed(fresh_cluster, digits):
    x, y = digits
    dep = ss.connect(fresh_cluster.config, keys=fresh_cluster.keys)
    dep.model_owner("hospital").upload("digits", DIGITS)
    client = dep.client()
    client.classify("digits", x[:8])
    fresh_cluster.kill("bob")
    with pytest.raises(ss.PeerLost):
        client.classify("digits", x[:8])
    # A new connection fails the same way, at once.
    with pytest.raises(ss.PeerLost, match="bob"):
        dep.client().classify("digits", x[:8])
