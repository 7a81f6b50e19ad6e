"""Make the small ONNX test models of tests/onnx.rs and examples/digits_cnn.rs.

Needs numpy, onnx and scikit-learn (not needed by the tests, which use the committed files):

    python3 tests/data/make_onnx.py

`digits_cnn.onnx` is a small CNN for scikit-learn's 8x8 digits (real data shipped with
scikit-learn): Conv(1->4, 3x3, pad 1) -> BatchNormalization -> Relu -> MaxPool(2) ->
Conv(4->8, 3x3, pad 1) -> Relu -> AveragePool(2, stride 2) -> Dropout -> Identity -> Flatten ->
Gemm(32 -> 10). The convolutions are random features (seeded); the batch norm statistics are the
training set's; the Gemm is trained by multinomial logistic regression on the training split.
The graph follows what `torch.onnx.export` writes for the same nn.Sequential in eval mode
(Gemm with transB = 1, explicit 4-value pads, count_include_pad on AveragePool). Expected
outputs come from the model's definition written out in float64 numpy below, independent of
the engine (onnx's reference evaluator, in float32, agrees on the predictions).

Also written: the held-out test split (`digits_test_x.npy` float32 [N, 1, 8, 8],
`digits_test_y.npy` int64 [N]), the reference logits of its first 8 rows
(`digits_logits8.npy`), and two graphs the importer must refuse: `unsupported_op.onnx`
(a Sigmoid) and `branching.onnx` (a residual Add of two branches).
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(11)

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(np.int64)
perm = rng.permutation(len(x))
x, y = x[perm], y[perm]
n_train = 1437
xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


w1 = rng.normal(0, 0.6, (4, 1, 3, 3)).astype(np.float32)
b1 = rng.normal(0, 0.1, 4).astype(np.float32)
w2 = rng.normal(0, 0.4, (8, 4, 3, 3)).astype(np.float32)
b2 = rng.normal(0, 0.1, 8).astype(np.float32)


def feature_nodes(bn):
    g, beta, mean, var = bn
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="/features/0/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["c1", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                         ["n1"], name="/features/1/BatchNormalization", epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"], name="/features/2/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/features/3/MaxPool",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="/features/4/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/features/5/Relu"),
        helper.make_node("AveragePool", ["r2"], ["p2"], name="/features/6/AveragePool",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0, count_include_pad=1),
        helper.make_node("Dropout", ["p2"], ["d1"], name="/classifier/0/Dropout"),
        helper.make_node("Identity", ["d1"], ["i1"], name="/classifier/1/Identity"),
        helper.make_node("Flatten", ["i1"], ["flat"], name="/classifier/2/Flatten", axis=1),
    ]
    inits = [init("conv1.weight", w1), init("conv1.bias", b1), init("conv2.weight", w2), init("conv2.bias", b2),
             init("bn.weight", g), init("bn.bias", beta), init("bn.running_mean", mean), init("bn.running_var", var)]
    return nodes, inits


def graph_io(out_name, out_shape):
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)
    return inp, out


def model(nodes, inits, out_name, out_shape):
    inp, out = graph_io(out_name, out_shape)
    m = helper.make_model(helper.make_graph(nodes, "digits_cnn", [inp], [out], inits),
                          opset_imports=[helper.make_opsetid("", 13)], producer_name="make_onnx.py")
    onnx.checker.check_model(m)
    return m


# Batch norm statistics: the training set's per-channel mean and variance after conv1.
conv_only = model(feature_nodes((np.ones(4), np.zeros(4), np.zeros(4), np.ones(4) - 1e-5))[0][:1],
                  feature_nodes((np.ones(4), np.zeros(4), np.zeros(4), np.ones(4)))[1][:2], "c1", ["batch", 4, 8, 8])
c1 = ReferenceEvaluator(conv_only).run(None, {"input": xtr})[0]
bn = (rng.uniform(0.8, 1.2, 4), rng.normal(0, 0.1, 4), c1.mean(axis=(0, 2, 3)), c1.var(axis=(0, 2, 3)))

nodes, inits = feature_nodes(bn)
feats = ReferenceEvaluator(model(nodes, inits, "flat", ["batch", 32])).run(None, {"input": xtr})[0]
clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats, ytr)
wf, bf = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)

nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/classifier/3/Gemm",
                              alpha=1.0, beta=1.0, transB=1))
inits += [init("fc.weight", wf), init("fc.bias", bf)]
full = model(nodes, inits, "logits", ["batch", 10])
onnx.save(full, os.path.join(HERE, "digits_cnn.onnx"))



def numpy_forward(x):
    """The model's definition in float64 numpy, written out op by op (the expected logits)."""
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in inits}

    def conv(h, w, b):
        n, c, hh, ww = h.shape
        hp = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((n, w.shape[0], hh, ww))
        for i in range(hh):
            for j in range(ww):
                out[:, :, i, j] = np.einsum("ncij,ocij->no", hp[:, :, i:i + 3, j:j + 3], w) + b
        return out

    n = len(x)
    h = conv(x.astype(np.float64), p["conv1.weight"], p["conv1.bias"])
    s = p["bn.weight"] / np.sqrt(p["bn.running_var"] + np.float64(np.float32(1e-5)))
    h = (h - p["bn.running_mean"][None, :, None, None]) * s[None, :, None, None] + p["bn.bias"][None, :, None, None]
    h = np.maximum(h, 0).reshape(n, 4, 4, 2, 4, 2).max(axis=(3, 5))
    h = np.maximum(conv(h, p["conv2.weight"], p["conv2.bias"]), 0)
    h = h.reshape(n, 8, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(n, -1)
    return h @ p["fc.weight"].T + p["fc.bias"]


logits = numpy_forward(xte)
onnx_logits = ReferenceEvaluator(full).run(None, {"input": xte})[0]
print("test accuracy (plaintext):", (logits.argmax(1) == yte).mean(),
      "| onnx reference evaluator agrees on", (onnx_logits.argmax(1) == logits.argmax(1)).mean(),
      "of predictions, max logit difference", np.abs(onnx_logits - logits).max())
np.save(os.path.join(HERE, "digits_test_x.npy"), xte)
np.save(os.path.join(HERE, "digits_test_y.npy"), yte)
np.save(os.path.join(HERE, "digits_logits8.npy"), logits[:8].astype(np.float64))

# Refusals: an unsupported op, and a branching (residual) graph.
bad = [n for n in nodes]
bad.insert(2, helper.make_node("Sigmoid", ["n1"], ["s1"], name="/features/2/Sigmoid"))
bad[3] = helper.make_node("Relu", ["s1"], ["r1"], name="/features/2/Relu")
onnx.save(model(bad, inits, "logits", ["batch", 10]), os.path.join(HERE, "unsupported_op.onnx"))

branch = list(nodes)
branch.insert(3, helper.make_node("Add", ["r1", "n1"], ["sum1"], name="/features/2/Add"))
branch[4] = helper.make_node("MaxPool", ["sum1"], ["p1"], name="/features/3/MaxPool",
                             kernel_shape=[2, 2], strides=[2, 2])
onnx.save(model(branch, inits, "logits", ["batch", 10]), os.path.join(HERE, "branching.onnx"))
