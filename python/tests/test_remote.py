"""The same calls against a deployment of real processes on loopback (mutual TLS), and the
predictions the Rust CLI gets from it."""

import subprocess
import sys

import numpy as np
import pytest

import secure_serving as ss
from conftest import DATA, DIGITS, REPO


def test_flow_across_processes(cluster, digits):
    x, y = digits
    dep = ss.connect(cluster.config, keys=cluster.keys, as_="clinic")
    owner, client = dep.model_owner("hospital"), dep.client()
    rep = owner.upload("digits", DIGITS)
    assert rep.classes == 10 and rep.bytes_sent > 0
    assert [m.name for m in client.models()] == ["digits"]
    res = client.classify("digits", x, labels=y, batch=120)
    assert owner.score(res.request_id) == int((res.predictions == y).sum()) == 313
    # Only the model's owner gets its count; anyone else gets the answer an unknown id gets
    # (a refusal does not tell a stranger whether the request exists).
    res = client.classify("digits", x[:4], labels=y[:4])
    with pytest.raises(ss.Refused, match="no correct count"):
        dep.model_owner("pharma").score(res.request_id)

    # The CLI, as the same client, gets the same predictions.
    out = cluster.root / "cli.npy"
    cluster.cli("classify", "--remote", "digits", "--input", str(DATA / "digits_test_x.npy"),
                "--batch", "120", "--output", str(out), "--json")
    np.testing.assert_array_equal(np.load(out), client.classify("digits", x, batch=120).predictions)

    # An upload by the CLI is served to Python, and deleted from Python.
    cluster.cli("upload", "--model", str(DIGITS), "--name", "from-cli", "--as", "pharma")
    assert sorted(m.name for m in client.models()) == ["digits", "from-cli"]
    dep.model_owner("pharma").delete("from-cli")
    owner.delete("digits")
    assert client.models() == []
    with pytest.raises(ss.UnknownModel):
        client.classify("digits", x[:1])


def test_connect_refusals(cluster, tmp_path):
    with pytest.raises(ss.BadInput, match="no data owner named 'nobody'"):
        ss.connect(cluster.config, keys=cluster.keys, as_="nobody")
    dep = ss.connect(cluster.config, keys=cluster.keys)
    with pytest.raises(ss.BadInput, match="several model owners"):
        dep.model_owner()
    with pytest.raises(ss.BadInput, match="missing.toml: no such deployment file"):
        ss.connect(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 3\n")
    with pytest.raises(ss.BadInput, match="deployment file"):
        ss.connect(bad)
    # Keys of another directory: nothing to authenticate with.
    with pytest.raises(ss.Error):
        ss.connect(cluster.config, keys=tmp_path).client()


def test_tutorial_example_against_the_deployment(cluster):
    """python/examples/tutorial.py with --config: the same flow against the three services."""
    out = subprocess.run(
        [sys.executable, str(REPO / "python" / "examples" / "tutorial.py"),
         "--config", str(cluster.config), "--keys", str(cluster.keys), "--owner", "hospital",
         "--name", "tutorial"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "connected to deployment 'pytest'" in out.stdout
    assert "Test set: Accuracy: 313/360 (87%)  [revealed to hospital only]" in out.stdout
