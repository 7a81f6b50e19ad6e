"""Type stubs of the native module (re-exported by ``secure_serving``)."""

import os
from types import TracebackType
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = Union[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.ArrayLike]
# A callable (done, total), or a tqdm-like bar (anything with ``update(n)``; its total is set).
Progress = Union[Callable[[int, int], Any], Any, None]
ModelLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]

class Error(Exception):
    """Base class of every error the engine reports."""

class BadInput(Error):
    """The input (a file, an option, a shape, a value) is not acceptable; fix it and retry."""

class Refused(Error):
    """Refused by the deployment's policy: who may do what, a name already taken, a limit."""

class UnknownModel(Error):
    """No model of that name is served."""

class Busy(Error):
    """The parties run as many requests as they take at once; retry later."""

class OutOfStep(Error):
    """Alice and bob (or a peer and this side) are out of step; the request was stopped."""

class PeerLost(Error):
    """A peer (alice, bob or the dealer) died, stalled or closed its link."""

class OverflowDetected(Error):
    """A value left (or could leave) the range the protocols are exact on."""

class Internal(Error):
    """Anything else: an internal error or an I/O failure."""

class Classification:
    """What a classification returned to the client."""

    predictions: npt.NDArray[np.int64]
    """Predicted class of every row (int64 [N]), revealed to this client only."""
    request_id: int
    """The request's id: the model owner's ``score(request_id)`` fetches the correct count."""
    seconds: float
    """Wall time of the request in seconds."""
    rounds: Tuple[int, int]
    """Communication rounds counted by (alice, bob)."""
    bytes_sent: Tuple[int, int]
    """Bytes sent by (alice, bob) in the request."""
    messages: Tuple[int, int]
    """Messages sent by (alice, bob)."""
    client_bytes: Tuple[int, int]
    """Bytes this client sent (its shares) and received (the predictions' shares)."""
    scored: bool
    """Whether labels were given (a correct count waits for the model owner)."""

class UploadReport:
    """What an upload shared."""

    name: str
    layers: int
    input_shape: List[int]
    classes: int
    parameters: int
    range: Optional[str]
    """The range analysis' one-line summary (headroom, logit error bound)."""
    notes: List[str]
    """What the import changed that leaves the predictions as they are."""
    seconds: float
    bytes_sent: int
    request_id: int

class ModelInfo:
    """A model the parties serve."""

    name: str
    owner: Optional[str]
    input_shape: List[int]
    classes: int
    frac_bits: int
    input_bound: float
    parameters: Optional[int]

class Owner:
    """A data owner connected to alice and bob: a model owner uploads, lists, deletes and
    fetches correct counts; a client classifies. One request at a time per owner."""

    @property
    def name(self) -> str: ...
    @property
    def is_model_owner(self) -> bool: ...
    def upload(
        self,
        name: str,
        model: ModelLike,
        *,
        example_input: Optional[Any] = None,
        arch: Optional[str] = None,
        prefix: str = "",
        frac_bits: int = 16,
        input_bound: float = 16.0,
        calibrate: Optional[ArrayLike] = None,
        calibration_margin: float = 2.0,
        allow_unused_tensors: bool = False,
        progress: Progress = None,
    ) -> UploadReport:
        """Upload ``model`` under ``name`` (model owners only): a path (``.onnx``, or
        ``.safetensors`` with ``arch``), ONNX bytes, or a torch.nn.Module with
        ``example_input``. The range analysis refuses (OverflowDetected) a model that could
        overflow for inputs within ``input_bound``; ``calibrate`` measures hidden-layer bounds
        on representative inputs instead. ``progress`` counts parameters shared."""
    def classify(
        self,
        name: str,
        x: ArrayLike,
        labels: Optional[npt.ArrayLike] = None,
        *,
        batch: int = 64,
        progress: Progress = None,
    ) -> Classification:
        """Classify ``x`` ([N, ...sample shape], float32/float64, any layout) with model
        ``name``; predictions are revealed to this client only. With ``labels`` ([N] ints) the
        correct count waits at the parties for the model owner's ``score``. ``progress``
        counts rows."""
    def score(self, request_id: int) -> int:
        """The correct count of a classify request (its model's owner only, once)."""
    def models(self) -> List[ModelInfo]:
        """The models the parties serve."""
    def delete(self, name: str) -> None:
        """Delete model ``name`` (its owner only) at alice, bob and the dealer."""

class SharedTensor:
    """A secret tensor held as shares by alice and bob (a handle: no data here)."""

    @property
    def shape(self) -> List[int]: ...

class Computation:
    """A custom secure computation on a local deployment's services."""

    @property
    def frac_bits(self) -> int: ...
    def share(self, owner: str, values: ArrayLike) -> SharedTensor:
        """``owner`` ("client" or "model_owner") shares ``values`` with alice and bob."""
    def matmul(self, x: SharedTensor, y: SharedTensor) -> SharedTensor:
        """Fixed-point ``x @ y`` for ``x`` [m, k] and ``y`` [k, n]."""
    def add(self, x: SharedTensor, y: SharedTensor) -> SharedTensor:
        """``x + y`` (same shapes; no communication)."""
    def relu(self, x: SharedTensor) -> SharedTensor:
        """``max(x, 0)`` elementwise."""
    def argmax(self, x: SharedTensor) -> SharedTensor:
        """Index of the largest entry of every row of ``x`` [m, n] ([m]; ties: lowest)."""
    def reveal(self, owner: str, x: SharedTensor) -> npt.NDArray[np.float64]:
        """Reveal ``x`` to ``owner`` alone; float64 values in ``x``'s shape."""
    def delete(self, x: SharedTensor) -> None:
        """Drop ``x``'s shares at both parties."""
    def close(self) -> None:
        """End the computation (the parties drop its shares)."""
    def __enter__(self) -> "Computation": ...
    def __exit__(
        self,
        ty: Optional[Type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class LocalDeployment:
    """Alice, bob and the dealer as services in this process."""

    def __init__(
        self,
        backend: str = "cpu",
        transport: str = "channels",
        *,
        model_owners: Optional[Sequence[str]] = None,
        clients: Optional[Sequence[str]] = None,
        timeout: float = 30.0,
        max_requests: int = 32,
        pool: int = 2,
        seed: Optional[int] = None,
    ) -> None:
        """backend: "cpu" or "gpu"; transport: "channels", "tcp" or "tls" (loopback);
        model_owners, clients: data owners' names (default "hospital", "clinic")."""
    @property
    def backend(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def model_owner(self, name: Optional[str] = None) -> Owner: ...
    def client(self, name: Optional[str] = None) -> Owner: ...
    def computation(self, frac_bits: int = 16) -> Computation: ...
    def close(self) -> None:
        """Stop the services (idempotent)."""
    def __enter__(self) -> "LocalDeployment": ...
    def __exit__(
        self,
        ty: Optional[Type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class RemoteDeployment:
    """A deployment across hosts (see ``connect``)."""

    @property
    def name(self) -> str: ...
    def model_owner(self, name: Optional[str] = None) -> Owner: ...
    def client(self, name: Optional[str] = None) -> Owner: ...
    def close(self) -> None: ...
    def __enter__(self) -> "RemoteDeployment": ...
    def __exit__(
        self,
        ty: Optional[Type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def connect(
    config: Union[str, "os.PathLike[str]"],
    keys: Optional[Union[str, "os.PathLike[str]"]] = None,
    as_: Optional[str] = None,
    insecure: bool = False,
) -> RemoteDeployment:
    """Reach a deployment across hosts through its deployment file and this host's keys."""
