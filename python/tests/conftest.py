"""Fixtures: the digits data of tests/data, the secure-serving binary, an in-process deployment
with the digits CNN uploaded, and a deployment of real processes on loopback (dealer, alice and
bob started from the binary, as tests/common/cluster.rs does for the Rust tests)."""

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import secure_serving as ss

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
DIGITS = DATA / "digits_cnn.onnx"


def binary() -> Path:
    """The secure-serving binary: $SECURE_SERVING_BIN, else the release build (built here
    when missing)."""
    if os.environ.get("SECURE_SERVING_BIN"):
        return Path(os.environ["SECURE_SERVING_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    exe = target / "release" / "secure-serving"
    if not exe.exists():
        subprocess.run(
            ["cargo", "build", "--release", "--bin", "secure-serving"], cwd=REPO, check=True
        )
    return exe


@pytest.fixture(scope="session")
def exe() -> Path:
    return binary()


@pytest.fixture(scope="session")
def digits():
    """(x float32 [N, 1, 8, 8], y int64 [N]) of the digits test split."""
    return np.load(DATA / "digits_test_x.npy"), np.load(DATA / "digits_test_y.npy")


@pytest.fixture(scope="module")
def local():
    """An in-process deployment serving the digits CNN as 'digits'."""
    with ss.LocalDeployment() as dep:
        dep.model_owner().upload("digits", str(DIGITS))
        yield dep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Dealer, alice and bob as processes on loopback, with keys made by `keygen`."""

    SERVICES = ("dealer", "alice", "bob")

    def __init__(self, exe: Path, root: Path, max_requests: int = 32, timeout: int = 10):
        self.exe, self.root = exe, root
        self.procs = {}
        self.starts = {}
        ports = {who: free_port() for who in self.SERVICES}
        self.config = root / "deploy.toml"
        self.config.write_text(
            'name = "pytest"\n'
            + "".join(f'[{w}]\naddress = "127.0.0.1:{ports[w]}"\n' for w in self.SERVICES)
            + '[[data_owner]]\nname = "hospital"\nrole = "model-owner"\n'
            + '[[data_owner]]\nname = "pharma"\nrole = "model-owner"\n'
            + '[[data_owner]]\nname = "clinic"\nrole = "client"\n'
            + f"[limits]\ntimeout_secs = {timeout}\nmax_requests = {max_requests}\n"
        )
        self.keys = root / "keys"
        subprocess.run(
            [str(exe), "keygen", "--deployment", str(self.config), "--out", str(self.keys)],
            check=True,
            capture_output=True,
        )
        for who in self.SERVICES:
            self.start(who)

    def log(self, who: str) -> str:
        p = self.root / f"{who}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, who: str):
        cmd = [str(self.exe)]
        cmd += ["dealer"] if who == "dealer" else ["party", "--role", who]
        cmd += ["--config", str(self.config), "--data-dir", str(self.root / f"{who}-data")]
        log = open(self.root / f"{who}.log", "a")
        self.procs[who] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.starts[who] = self.starts.get(who, 0) + 1
        deadline = time.time() + 30
        while self.log(who).count("listening on") < self.starts[who]:
            if self.procs[who].poll() is not None:
                raise RuntimeError(f"{who} exited before listening:\n{self.log(who)}")
            if time.time() > deadline:
                raise RuntimeError(f"{who} did not start:\n{self.log(who)}")
            time.sleep(0.02)

    def kill(self, who: str):
        p = self.procs.pop(who, None)
        if p is not None:
            p.kill()
            p.wait()

    def cli(self, *args: str) -> str:
        """Run a data owner's command against the deployment; its stdout."""
        out = subprocess.run(
            [str(self.exe), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        assert out.returncode == 0, f"{args}: {out.stderr}\n{out.stdout}"
        return out.stdout

    def close(self):
        for who in list(self.procs):
            self.kill(who)


@pytest.fixture(scope="module")
def cluster(exe, tmp_path_factory):
    """A deployment shared by a module's tests."""
    c = Cluster(exe, tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_cluster(exe, tmp_path):
    """A deployment of the test's own (for tests that kill a service)."""
    c = Cluster(exe, tmp_path)
    try:
        yield c
    finally:
        c.close()
