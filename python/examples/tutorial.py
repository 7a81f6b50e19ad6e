"""The secure classification tutorial (PySyft's "Secure Deep Learning Classification") from
Python, on the Rust engine.

The model owner (hospital) shares its model, fixed-point encoded, between alice and bob; the
client (clinic) shares its test data the same way. The parties classify on shares: the model's
forward pass, the encrypted argmax, the encrypted comparison with the labels (eq) and the sum of
the correct answers. Only the accuracy is revealed, to the model owner; only the predictions, to
the client. The dealer (crypto provider) hands out correlated randomness and sees no data.

    python python/examples/tutorial.py                      # alice, bob and the dealer in-process
    python python/examples/tutorial.py --config deploy.toml --keys keys
        # against a deployment across hosts (README, "Deploy on three hosts"); the data owners
        # are the file's model owner and client, or --owner NAME / --client NAME

Data: the digits CNN and test split in tests/data (--model, --input, --labels to change).
"""

import argparse
import time
from pathlib import Path

import numpy as np

import secure_serving as ss

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DATA / "digits_cnn.onnx"))
    ap.add_argument("--input", default=str(DATA / "digits_test_x.npy"))
    ap.add_argument("--labels", default=str(DATA / "digits_test_y.npy"))
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--backend", default="cpu", help="cpu or gpu (in-process runs)")
    ap.add_argument("--config", help="a deployment file: run against its services")
    ap.add_argument("--keys", help="this host's key directory (default: keys beside --config)")
    ap.add_argument("--owner", help="the model owner to act as (deployments with several)")
    ap.add_argument("--client", help="the client to act as (deployments with several)")
    ap.add_argument("--name", default="digits", help="the name the model is served under")
    args = ap.parse_args()

    x, y = np.load(args.input), np.load(args.labels)
    if args.config:
        dep = ss.connect(args.config, keys=args.keys)
        print(f"connected to deployment '{dep.name}' ({args.config})")
    else:
        dep = ss.LocalDeployment(backend=args.backend)
        print(f"alice, bob and the crypto provider are up in this process ({dep.backend})")
    with dep:
        owner, client = dep.model_owner(args.owner), dep.client(args.client)

        # The model owner: model.fix_precision().share(alice, bob, crypto_provider=dealer).
        t = time.perf_counter()
        up = owner.upload(args.name, args.model)
        print(f"model shared by {owner.name}: {up.layers} layers, input {up.input_shape}, "
              f"{up.classes} classes ({(time.perf_counter() - t) * 1e3:.1f} ms)")
        print(up.range)

        # The client: data.fix_precision().share(...); the parties run the model, the argmax,
        # eq with the shared labels and the sum, all on shares.
        res = client.classify(args.name, x, labels=y, batch=args.batch)
        print(f"time: {res.seconds * 1e3:.3f} ms for {len(x)} inputs "
              f"({len(x) / res.seconds:.1f} inputs/s)")
        for who, r, b in zip(("alice", "bob"), res.rounds, res.bytes_sent):
            print(f"{who}: sent {b / 1e6:.3f} MB in {r} rounds")
        print(f"predictions of the first 10 inputs: {res.predictions[:10].tolist()}  "
              f"[revealed to {client.name} only]")

        # The model owner: correct.get().float_precision() -- the count alone, to it alone.
        correct = owner.score(res.request_id)
        print(f"Test set: Accuracy: {correct}/{len(x)} ({100 * correct / len(x):.0f}%)  "
              f"[revealed to {owner.name} only]")
        owner.delete(args.name)


if __name__ == "__main__":
    try:
        main()
    except ss.Error as e:
        raise SystemExit(f"error ({type(e).__name__}): {e}")
