"""Python overhead over the engine's Rust API, in the same run: the same requests on the same
in-process deployment, each timed end to end from Python (`client.classify`) and inside Rust
around `RemoteOwner::classify` (`client._time_rust_classify`), interleaved.

    python python/bench.py [--repeats 300] [--vgg-repeats 7] [--skip-vgg] [--skip-linear]

Cases: the tutorial's Linear(1, 1) request (data zeros(1, 1), target zeros(1), weight 0.5), and
torchvision's VGG16 classifier head (25088 -> 4096 -> 4096 -> 7, torch's default uniform init,
seeded) on a batch of 64 float64 rows in C order (read in place), and the same rows as float32
(converted once per call). Prints medians and the differences.
"""

import argparse
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

import secure_serving as ss


def write_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file (float32) of `tensors` (name -> array)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def compare(client, name, x, labels, batch, repeats, warmup=2, verbose=False):
    """Median seconds per request from Python and from Rust (interleaved, the order swapped
    every round so that neither always follows the other's background work)."""
    py, rs = [], []

    def from_python():
        t = time.perf_counter()
        client.classify(name, x, labels, batch=batch)
        return time.perf_counter() - t

    def from_rust():
        (r,) = client._time_rust_classify(name, x, labels, batch=batch, repeats=1)
        return r

    for i in range(warmup + repeats):
        if i % 2 == 0:
            p, r = from_python(), from_rust()
        else:
            r, p = from_rust(), from_python()
        if i >= warmup:
            py.append(p)
            rs.append(r)
            if verbose:
                print(f"  round {i - warmup}: Python {p * 1e3:.1f} ms, Rust API {r * 1e3:.1f} ms")
    return statistics.median(py), statistics.median(rs)


def report(label, py, rs):
    print(f"{label}: Python {py * 1e3:.3f} ms, Rust API {rs * 1e3:.3f} ms, "
          f"overhead {(py - rs) * 1e3:+.3f} ms ({100 * (py - rs) / rs:+.2f} %)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--vgg-repeats", type=int, default=7)
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--skip-linear", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"secure_serving {ss.__version__}; seed = {args.seed}")
    with tempfile.TemporaryDirectory() as tmp, ss.LocalDeployment() as dep:
        owner, client = dep.model_owner(), dep.client()
        print(f"backend: {dep.backend}")
        linear = Path(tmp) / "linear.safetensors"
        write_safetensors(linear, {"0.weight": np.array([[0.5]]), "0.bias": np.array([0.0])})
        owner.upload("linear", linear, arch="linear")
        x, y = np.zeros((1, 1)), np.zeros(1, dtype=np.int64)
        if not args.skip_linear:
            py, rs = compare(client, "linear", x, y, 1, args.repeats)
            report(f"Linear(1,1), 1 row with its label, median of {args.repeats}", py, rs)
        if args.skip_vgg:
            return
        rng = np.random.default_rng(args.seed)
        layers = {}
        for i, (fan_in, fan_out) in zip((0, 3, 6), ((25088, 4096), (4096, 4096), (4096, 7))):
            k = 1 / np.sqrt(fan_in)
            layers[f"{i}.weight"] = rng.uniform(-k, k, (fan_out, fan_in)).astype(np.float32)
            layers[f"{i}.bias"] = rng.uniform(-k, k, fan_out).astype(np.float32)
        head = Path(tmp) / "vgg16_head.safetensors"
        write_safetensors(head, layers)
        del layers
        t = time.perf_counter()
        owner.upload("vgg16-head", head, arch="vgg16-head")
        print(f"VGG16 head uploaded in {time.perf_counter() - t:.1f} s")
        x = rng.uniform(0, 1, (64, 25088))
        py, rs = compare(client, "vgg16-head", x, None, 64, args.vgg_repeats, verbose=True)
        report(f"VGG16 head, batch 64 float64 C order, median of {args.vgg_repeats}", py, rs)
        py, rs = compare(client, "vgg16-head", x.astype(np.float32), None, 64, args.vgg_repeats,
                         verbose=True)
        report(f"VGG16 head, batch 64 float32 (converted), median of {args.vgg_repeats}", py, rs)


if __name__ == "__main__":
    main()
