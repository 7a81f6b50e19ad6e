"""The tutorial's flow on an in-process deployment: upload, classify, score, models, delete;
predictions equal to the Rust CLI's; progress callbacks; the GIL released while computing."""

import io
import subprocess
import sys
import threading

import numpy as np
import pytest

import secure_serving as ss
from conftest import DATA, DIGITS, REPO


def test_tutorial_flow(local, digits):
    x, y = digits
    owner, client = local.model_owner("hospital"), local.client("clinic")
    res = client.classify("digits", x, labels=y, batch=120)
    assert res.predictions.dtype == np.int64 and res.predictions.shape == (len(x),)
    assert res.scored and res.seconds > 0
    assert all(r > 0 for r in res.rounds) and all(b > 0 for b in res.bytes_sent)
    correct = owner.score(res.request_id)
    assert correct == int((res.predictions == y).sum())
    # Revealed once: a second fetch is refused by the parties.
    with pytest.raises(ss.Refused, match="no correct count"):
        owner.score(res.request_id)
    # The README's figure for this model and data (equal to the plaintext model's count).
    assert correct == 313


def test_predictions_equal_the_cli(local, digits, exe, tmp_path):
    x, y = digits
    out = tmp_path / "cli.npy"
    subprocess.run(
        [str(exe), "classify", "--model", str(DIGITS), "--input", str(DATA / "digits_test_x.npy"),
         "--labels", str(DATA / "digits_test_y.npy"), "--batch", "120", "--output", str(out)],
        check=True, capture_output=True,
    )
    res = local.client().classify("digits", x, batch=120)
    np.testing.assert_array_equal(res.predictions, np.load(out))
    assert not res.scored


def test_models_and_delete():
    with ss.LocalDeployment(model_owners=["hospital", "pharma"]) as dep:
        h = dep.model_owner("hospital")
        rep = h.upload("digits", DIGITS)  # a pathlib.Path
        assert (rep.input_shape, rep.classes, rep.layers > 0) == ([1, 8, 8], 10, True)
        assert rep.range and "headroom" in rep.range
        (info,) = h.models()
        assert (info.name, info.owner, info.input_shape, info.classes) == (
            "digits", "hospital", [1, 8, 8], 10)
        assert info.parameters and info.parameters > 0
        # A client sees what it needs to classify, not who owns the model or its size.
        (seen,) = dep.client().models()
        assert (seen.name, seen.owner, seen.parameters, seen.classes) == ("digits", None, None, 10)
        # Another model owner may not delete it.
        with pytest.raises(ss.Refused, match="belongs to model owner 'hospital'"):
            dep.model_owner("pharma").delete("digits")
        h.delete("digits")
        assert h.models() == []
        with pytest.raises(ss.UnknownModel):
            dep.client().classify("digits", np.zeros((1, 1, 8, 8)))
        # Several model owners: say which.
        with pytest.raises(ss.BadInput, match="several model owners"):
            dep.model_owner()


def test_onnx_bytes_and_linear_1x1():
    """The tutorial's exact case, Linear(1, 1) on data (1, 1), from ONNX bytes."""
    with ss.LocalDeployment() as dep:
        onnx = DIGITS.read_bytes()
        dep.model_owner().upload("cnn", onnx)
        dep.model_owner().upload("cnn2", bytearray(onnx))
        with pytest.raises(ss.BadInput, match="not a valid ONNX"):
            dep.model_owner().upload("junk", b"not onnx")
        with pytest.raises(ss.BadInput, match="arch applies"):
            dep.model_owner().upload("x", onnx, arch="linear")
        with pytest.raises(ss.BadInput, match="model must be a path"):
            dep.model_owner().upload("x", 42)
        assert sorted(m.name for m in dep.client().models()) == ["cnn", "cnn2"]


def test_progress_callable_and_bar(local, digits):
    x, _ = digits
    seen = []
    local.client().classify("digits", x[:100], batch=30, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(30, 100), (60, 100), (90, 100), (100, 100)]

    class Bar:  # what tqdm offers: update(n) and a settable total
        def __init__(self):
            self.n, self.total = 0, None

        def update(self, k):
            self.n += k

    bar = Bar()
    local.client().classify("digits", x[:100], batch=30, progress=bar)
    assert (bar.n, bar.total) == (100, 100)

    def boom(d, t):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        local.client().classify("digits", x[:10], progress=boom)
    with pytest.raises(ss.BadInput, match="progress must be"):
        local.client().classify("digits", x[:10], progress=3)


def test_upload_progress_with_tqdm_if_installed(local):
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    with tqdm.tqdm(file=out, mininterval=0) as bar:
        local.model_owner().upload("digits-tqdm", DIGITS, progress=bar)
    assert bar.n == bar.total and bar.total > 0
    assert f"{bar.total}/{bar.total}" in out.getvalue()
    local.model_owner().delete("digits-tqdm")


def test_gil_released_while_classifying(local, digits):
    x, _ = digits
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=count)
    t.start()
    try:
        local.client().classify("digits", np.concatenate([x] * 3), batch=120)
    finally:
        done.set()
        t.join()
    # With the GIL held for the whole request the counter would only run between calls.
    assert len(ticks) > 1000


def test_concurrent_clients_in_threads(local, digits):
    x, y = digits
    out = {}

    def run(i):
        out[i] = local.client().classify("digits", x, batch=120).predictions

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(1, 3):
        np.testing.assert_array_equal(out[0], out[i])


def test_closed_deployment():
    dep = ss.LocalDeployment()
    owner = dep.model_owner()
    dep.close()
    assert dep.closed
    with pytest.raises(ss.Error, match="closed"):
        owner.models()
    with pytest.raises(ss.Error, match="closed"):
        dep.client()
    dep.close()  # idempotent


def test_transports_and_bad_options(digits):
    x, y = digits
    with ss.LocalDeployment(transport="tls") as dep:
        dep.model_owner().upload("digits", DIGITS)
        res = dep.client().classify("digits", x[:16], labels=y[:16])
        assert dep.model_owner().score(res.request_id) <= 16
    with pytest.raises(ss.BadInput, match="unknown backend"):
        ss.LocalDeployment(backend="tpu")
    with pytest.raises(ss.BadInput, match="unknown transport"):
        ss.LocalDeployment(transport="pigeon")
    with pytest.raises(ss.BadInput, match="not a valid name"):
        ss.LocalDeployment(clients=["Bad Name"])


def test_torch_module_if_installed():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.rand(32, 4) * 2 - 1
    with ss.LocalDeployment() as dep:
        with pytest.raises(ss.BadInput, match="example_input"):
            dep.model_owner().upload("m", model)
        dep.model_owner().upload("m", model, example_input=x[:2])
        res = dep.client().classify("m", x.numpy())
    np.testing.assert_array_equal(res.predictions, model(x).argmax(1).numpy())
    assert model.training  # left as it was


def test_tutorial_example_runs():
    """python/examples/tutorial.py, in-process: the seed's flow, the accuracy to the owner."""
    out = subprocess.run(
        [sys.executable, str(REPO / "python" / "examples" / "tutorial.py")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Test set: Accuracy: 313/360 (87%)  [revealed to hospital only]" in out.stdout
