"""Secure Serving from Python: secure two-party inference on the Rust engine.

Alice and bob (the compute parties) hold additive shares of a model owner's model and a
client's data over Z_2^64; a dealer hands out correlated randomness and never sees data. Only
the predictions reach the client, and only the correct count reaches the model owner::

    import numpy as np, secure_serving as ss
    with ss.LocalDeployment(backend="cpu") as dep:       # alice, bob and the dealer in-process
        owner, client = dep.model_owner("hospital"), dep.client("clinic")
        owner.upload("digits", "digits_cnn.onnx")        # path, ONNX bytes, or torch.nn.Module
        res = client.classify("digits", x, labels=y)     # x: float32/float64 [N, ...]
        res.predictions, res.request_id, res.rounds, res.bytes_sent, res.seconds
        owner.score(res.request_id)                      # revealed to the model owner only

    dep = ss.connect("deploy.toml", keys="keys", as_="clinic")   # the same calls across hosts

Errors are ``ss.Error`` subclasses carrying the engine's message: ``BadInput``, ``Refused``,
``UnknownModel``, ``Busy``, ``OutOfStep``, ``PeerLost``, ``OverflowDetected``, ``Internal``.
Every call that computes releases the GIL.
"""

from ._native import (
    BadInput,
    Busy,
    Classification,
    Computation,
    Error,
    Internal,
    LocalDeployment,
    ModelInfo,
    OutOfStep,
    OverflowDetected,
    Owner,
    PeerLost,
    Refused,
    RemoteDeployment,
    SharedTensor,
    UnknownModel,
    UploadReport,
    __version__,
    connect,
)

__all__ = [
    "BadInput",
    "Busy",
    "Classification",
    "Computation",
    "Error",
    "Internal",
    "LocalDeployment",
    "ModelInfo",
    "OutOfStep",
    "OverflowDetected",
    "Owner",
    "PeerLost",
    "Refused",
    "RemoteDeployment",
    "SharedTensor",
    "UnknownModel",
    "UploadReport",
    "__version__",
    "connect",
]
