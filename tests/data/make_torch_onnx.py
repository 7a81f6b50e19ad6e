"""Make the torch-exported ONNX test models of tests/onnx.rs, tests/onnx_privacy.rs and
examples/resnet_small.rs: the patterns users export, each exported by `torch.onnx.export` as a
user would (dynamic batch axes, constant folding off, opsets 9 to 17).

Needs torch 1.13.1, onnx 1.13.1, numpy 1.26 and scikit-learn (for the digits data; the tests
need none of them, they use the committed files):

    python tests/data/make_torch_onnx.py
    ONLY=hardswish,relu6 python tests/data/make_torch_onnx.py    # just these models


Every model reads scikit-learn's 8x8 digits ([N, 1, 8, 8], pixels in [0, 1]) with the split of
make_onnx.py (so `digits_test_x.npy` is its test split) and is trained for a few epochs on the
training split. For each model `torch/<name>.onnx` this writes:

- `torch/<name>_rows.npy` (int64 [ROWS]): the test rows it is checked on, the first ones whose
  top-2 logit gap is at least GAP (far above the fixed-point error, so the encrypted
  predictions must equal torch's exactly);
- `torch/<name>_logits.npy` (float64 [ROWS, 10]): torch's logits for those rows, computed in
  float64 (`model.double()`), before a trailing softmax, log_softmax or sigmoid (the script
  checks that the full output has the same argmax).

It also writes graphs the importer must refuse: a training-mode export at opsets 14 and 11,
and a model with an unsupported activation (Tanh).
"""

import os

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch")
ROWS = 32
GAP = 0.05

# The digits split of make_onnx.py.
rng = np.random.default_rng(11)
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(np.int64)
perm = rng.permutation(len(x))
x, y = x[perm], y[perm]
n_train = 1437
xtr, ytr, xte, yte = (torch.from_numpy(a) for a in (x[:n_train], y[:n_train], x[n_train:], y[n_train:]))
assert np.array_equal(xte.numpy(), np.load(os.path.join(HERE, "digits_test_x.npy")))


def conv(i, o, k=3, **kw):
    return nn.Conv2d(i, o, k, **kw)


class Head(nn.Module):
    """A trunk, then an optional trailing monotone map (kept out of `logits`)."""

    def __init__(self, trunk, last=None):
        super().__init__()
        self.trunk = trunk
        self.last = last

    def logits(self, x):
        return self.trunk(x)

    def forward(self, x):
        z = self.trunk(x)
        return z if self.last is None else self.last(z)


class ViewNet(nn.Module):
    """The export tutorial's `x.view(x.size(0), -1)`."""

    def __init__(self):
        super().__init__()
        self.c = conv(1, 6, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def small_cnn(act, pool=None):
    layers = [conv(1, 6, padding=1), act, pool or nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)]
    return nn.Sequential(*layers)


class Normalise(nn.Module):
    """Normalisation inside forward, `(x - mean) / std`, before a padded convolution."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.3]))
        self.register_buffer("std", torch.tensor([0.4]))
        self.body = small_cnn(nn.ReLU())

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


class ReduceMeanNet(nn.Module):
    """`x.mean([2, 3])` as the global pool."""

    def __init__(self):
        super().__init__()
        self.c1 = conv(1, 8, padding=1)
        self.c2 = conv(8, 16, padding=1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.mean([2, 3]))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.conv1 = conv(i, o, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = conv(o, o, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.downsample = None
        if stride != 1 or i != o:
            self.downsample = nn.Sequential(conv(i, o, 1, stride=stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetSmall(nn.Module):
    """A small ResNet: stem, a downsampling BasicBlock, an identity BasicBlock, global pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv(1, 8, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 16, 2)
        self.layer2 = BasicBlock(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class ConcatNet(nn.Module):
    """Two branches concatenated along channels (an Inception-style block)."""

    def __init__(self):
        super().__init__()
        self.a = conv(1, 4, padding=1)
        self.b = conv(1, 2, 1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))


class DepthwiseNet(nn.Module):
    """A MobileNet-style depthwise-separable block (a grouped convolution)."""

    def __init__(self):
        super().__init__()
        self.c = conv(1, 8, padding=1)
        self.dw = conv(8, 8, groups=8, padding=1)
        self.pw = conv(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu6(self.pw(F.relu6(self.dw(F.relu(self.c(x))))))
        return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))


# name -> (model, export options)
MODELS = {
    "view_dynamic": (Head(ViewNet()), dict(opset_version=13, dynamic_axes={"input": {0: "batch"}})),
    "view_nofold": (Head(ViewNet()), dict(opset_version=11, do_constant_folding=False)),
    "log_softmax": (Head(small_cnn(nn.ReLU()), nn.LogSoftmax(dim=1)), dict(opset_version=9)),
    "softmax": (Head(small_cnn(nn.ReLU()), nn.Softmax(dim=-1)), dict(opset_version=13)),
    "sigmoid": (Head(small_cnn(nn.ReLU()), nn.Sigmoid()), dict(opset_version=17)),
    # Default AvgPool2d (count_include_pad=True): Pad + AveragePool; with padding 1 the
    # border windows count the padded zeros.
    "avgpool": (Head(nn.Sequential(conv(1, 6, padding=1), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1),
                                   nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 10))), dict(opset_version=10)),
    # The first BatchNorm1d folds into its Linear; the second sits between two ReLUs.
    "batchnorm1d": (Head(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                       nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))), dict(opset_version=14)),
    "normalise": (Head(Normalise()), dict(opset_version=12, dynamic_axes={"input": {0: "batch"}})),
    "reducemean": (Head(ReduceMeanNet()), dict(opset_version=17)),
    "relu6": (Head(small_cnn(nn.ReLU6())), dict(opset_version=9)),
    "hardtanh": (Head(small_cnn(nn.Hardtanh())), dict(opset_version=13)),
    "leaky_relu": (Head(small_cnn(nn.LeakyReLU(0.1))), dict(opset_version=14)),
    # Batch norms kept as nodes (eval statistics) for the importer to fold.
    "resnet_small": (Head(ResNetSmall()), dict(opset_version=14, dynamic_axes={"input": {0: "batch"}},
                                               training=torch.onnx.TrainingMode.PRESERVE)),
    "concat": (Head(ConcatNet()), dict(opset_version=13)),
    "depthwise": (Head(DepthwiseNet()), dict(opset_version=11)),
    # nn.Hardswish is one HardSwish node from opset 14 on.
    "hardswish": (Head(small_cnn(nn.Hardswish())), dict(opset_version=14)),
}


def train(model, seed, epochs=40):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_train)
        for i in range(0, n_train, 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model.logits(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    model.eval()


def export(model, name, **kw):
    path = os.path.join(OUT, name + ".onnx")
    torch.onnx.export(model, xte[:2], path, input_names=["input"], output_names=["output"], **kw)
    onnx.checker.check_model(onnx.load(path))
    return path


ONLY = [n for n in os.environ.get("ONLY", "").split(",") if n]
assert all(n in MODELS for n in ONLY), f"ONLY names a model not in {list(MODELS)}"
os.makedirs(OUT, exist_ok=True)
for seed, (name, (model, opts)) in enumerate(MODELS.items()):
    if ONLY and name not in ONLY:
        continue
    torch.manual_seed(seed)
    # Fresh parameters for every model, trained with its own seed.
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    train(model, seed)
    export(model, name, **opts)
    with torch.no_grad():
        ref = model.double()
        z = ref.logits(xte.double()).numpy()
        full = ref(xte.double()).numpy()
        model.float()
    assert (z.argmax(1) == full.argmax(1)).all(), name
    top2 = np.sort(z, axis=1)[:, -2:]
    rows = np.flatnonzero(top2[:, 1] - top2[:, 0] >= GAP)[:ROWS]
    assert len(rows) == ROWS, name
    np.save(os.path.join(OUT, name + "_rows.npy"), rows.astype(np.int64))
    np.save(os.path.join(OUT, name + "_logits.npy"), z[rows].astype(np.float64))
    acc = (z.argmax(1) == yte.numpy()).mean()
    print(f"{name}: test accuracy {acc:.3f}, {len(onnx.load(os.path.join(OUT, name + '.onnx')).graph.node)} nodes")

if ONLY:
    raise SystemExit(0)

# Refusals: a training-mode export (opset 14: BatchNormalization training_mode=1 and a
# Dropout with training_mode true; opset 11: BatchNormalization with its running statistics
# as further outputs), and an unsupported activation.
trainable = nn.Sequential(conv(1, 4, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).train()
export(trainable, "training", opset_version=14, training=torch.onnx.TrainingMode.TRAINING)
export(trainable, "training_opset11", opset_version=11, training=torch.onnx.TrainingMode.TRAINING)
export(small_cnn(nn.Tanh()).eval(), "unsupported_tanh", opset_version=13)


# A narrow ResNet-18 under torchvision's state-dict names (widths 4, 4, 8, 8 instead of 64 to
# 512), saved as safetensors for the `resnet18` preset (read at 3x32x32, `--arch resnet18:32`),
# with random weights and batch-norm statistics, and torch's float64 logits on two random
# images whose top-2 gap is at least GAP.
class ResNet18(nn.Module):
    def __init__(self, widths=(4, 4, 8, 8), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
            c = w
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def save_safetensors(path, tensors):
    """The safetensors format: an 8-byte header length, a JSON header, the raw data."""
    import json
    import struct
    header, blobs, at = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy()
        dtype = {"float32": "F32", "int64": "I64"}[str(a.dtype)]
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


torch.manual_seed(18)
r18 = ResNet18()
for m in r18.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.weight.data.uniform_(0.8, 1.2)
        m.bias.data.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
r18.eval()
save_safetensors(os.path.join(OUT, "resnet18_narrow.safetensors"), r18.state_dict())
with torch.no_grad():
    cand = torch.randn(64, 3, 32, 32)
    z = r18.double()(cand.double()).numpy()
top2 = np.sort(z, axis=1)[:, -2:]
best = np.argsort(top2[:, 0] - top2[:, 1])[:2]
assert (top2[best, 1] - top2[best, 0] >= GAP).all()
np.save(os.path.join(OUT, "resnet18_narrow_x.npy"), cand[best].numpy())
np.save(os.path.join(OUT, "resnet18_narrow_logits.npy"), z[best])
print("resnet18_narrow: top-2 gaps", top2[best, 1] - top2[best, 0])
