"""Export a torch.nn.Module to ONNX in memory (used only when a Module is uploaded; torch is
imported here and nowhere else)."""

import io
import inspect


def to_onnx(module, example_input):
    """The ONNX bytes of ``module`` in eval mode, traced on ``example_input`` (one batch),
    with a dynamic batch axis."""
    import torch  # noqa: PLC0415 (optional dependency)

    if not isinstance(example_input, torch.Tensor):
        example_input = torch.as_tensor(example_input, dtype=torch.float32)
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    kwargs = dict(
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    # Newer torch exports through dynamo by default; the TorchScript exporter writes the graphs
    # the engine's importer is tested on.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    try:
        with torch.no_grad():
            torch.onnx.export(module, (example_input,), buf, **kwargs)
    finally:
        module.train(was_training)
    return buf.getvalue()
