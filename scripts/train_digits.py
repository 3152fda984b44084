"""Train the digits MLP and CNN; write golden/data/digits_{mlp,cnn}[_2of4].npz.

    python scripts/train_digits.py [--out DIR] [--only mlp|cnn]

The data, split and architectures are those of ``npugen.golden.digits`` (the test split
is never used for training or model selection; its accuracy is only reported).

* MLP: scikit-learn ``MLPClassifier`` (64-32 hidden ReLU units, Adam, L2 1e-3, batch
  64, at most 400 epochs with scikit-learn's stopping rule, ``random_state=0``; the
  epochs run are recorded as ``n_iter``).
* CNN: a NumPy trainer (He initialization from ``numpy.random.default_rng(0)``, Adam
  with learning rate 3e-3 decayed ×0.5 every 20 epochs, batch 32, 60 epochs, L2 1e-4,
  softmax cross-entropy), float64 throughout.
* 2:4 versions (``digits_<kind>_2of4.npz``): each trained network pruned to 2:4 along K
  (``npugen.golden.digits.prune_2_4``: groups of 4 rows of an FC matrix, of 4 input
  channels of one kernel tap of a convolution) and fine-tuned with the masks fixed (the
  NumPy trainer, learning rate 1e-3, 30 epochs, seed 1).

Each file holds float32 arrays ``<layer>.w`` / ``<layer>.b`` and ``meta``, a JSON string
with the architecture, seed, split and the float test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from npugen.golden.digits import (
    ARCHITECTURES,
    DATA_DIR,
    SPARSE_SUFFIX,
    WEIGHT_SHAPES,
    DigitsNetwork,
    conv2d_float,
    load_digits_split,
    maxpool2x2,
    prune_2_4,
)

SEED = 0


def train_mlp(x_train, y_train):
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", solver="adam",
                        alpha=1e-3, batch_size=64, learning_rate_init=1e-3, max_iter=400,
                        random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train.reshape(len(x_train), 64), y_train)
    params = {}
    for spec, w, b in zip(ARCHITECTURES["mlp"], clf.coefs_, clf.intercepts_):
        params[f"{spec.name}.w"], params[f"{spec.name}.b"] = w, b
    trainer = {"trainer": "sklearn.neural_network.MLPClassifier",
               "sklearn": sklearn.__version__, "hidden_layer_sizes": [64, 32],
               "alpha": 1e-3, "batch_size": 64, "learning_rate_init": 1e-3, "max_iter": 400,
               "n_iter": int(clf.n_iter_), "random_state": SEED}
    return params, trainer


# -- the NumPy CNN trainer ------------------------------------------------------------------


def conv_backward(x, w, dout):
    """Gradients of ``conv2d_float(x, w, b, 1)`` (3×3, stride 1) w.r.t. x, w and b."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
    dw = np.einsum("nhwcij,nhwo->ijco", windows, dout, optimize=True)
    db = dout.sum(axis=(0, 1, 2))
    dxp = np.zeros_like(xp)
    h, wd = x.shape[1:3]
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + wd, :] += dout @ w[i, j].T
    return dxp[:, 1:-1, 1:-1, :], dw, db


def pool_backward(x, out, dout):
    n, h, w, c = x.shape
    win = x.reshape(n, h // 2, 2, w // 2, 2, c)
    mask = win == out[:, :, None, :, None, :]
    mask = mask / mask.sum(axis=(2, 4), keepdims=True)
    return (mask * dout[:, :, None, :, None, :]).reshape(x.shape)


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.mean(np.log(prob[np.arange(n), y] + 1e-300))
    d = prob
    d[np.arange(n), y] -= 1
    return loss, d / n


def add_l2(loss, p, g, l2):
    for key in g:
        if key.endswith(".w"):
            loss += 0.5 * l2 * float(np.sum(p[key] ** 2))
            g[key] = g[key] + l2 * p[key]
    return loss, g


def mlp_loss_and_grads(p, x, y, l2):
    acts = [x.reshape(len(x), -1)]
    zs = []
    names = [spec.name for spec in ARCHITECTURES["mlp"]]
    for i, name in enumerate(names):
        z = acts[-1] @ p[f"{name}.w"] + p[f"{name}.b"]
        zs.append(z)
        acts.append(np.maximum(z, 0) if i < len(names) - 1 else z)
    loss, d = softmax_xent(acts[-1], y)
    g = {}
    for i in reversed(range(len(names))):
        name = names[i]
        if i < len(names) - 1:
            d = d * (zs[i] > 0)
        g[f"{name}.w"], g[f"{name}.b"] = acts[i].T @ d, d.sum(axis=0)
        d = d @ p[f"{name}.w"].T
    return add_l2(loss, p, g, l2)


def cnn_loss_and_grads(p, x, y, l2):
    z1 = conv2d_float(x, p["conv1.w"], p["conv1.b"], 1)
    a1 = np.maximum(z1, 0)
    p1 = maxpool2x2(a1)
    z2 = conv2d_float(p1, p["conv2.w"], p["conv2.b"], 1)
    a2 = np.maximum(z2, 0)
    p2 = maxpool2x2(a2)
    f = p2.reshape(len(x), -1)
    z3 = f @ p["fc1.w"] + p["fc1.b"]
    a3 = np.maximum(z3, 0)
    z4 = a3 @ p["fc2.w"] + p["fc2.b"]
    loss, d4 = softmax_xent(z4, y)
    g = {}
    g["fc2.w"], g["fc2.b"] = a3.T @ d4, d4.sum(axis=0)
    d3 = (d4 @ p["fc2.w"].T) * (z3 > 0)
    g["fc1.w"], g["fc1.b"] = f.T @ d3, d3.sum(axis=0)
    dp2 = (d3 @ p["fc1.w"].T).reshape(p2.shape)
    dz2 = pool_backward(a2, p2, dp2) * (z2 > 0)
    dp1, g["conv2.w"], g["conv2.b"] = conv_backward(p1, p["conv2.w"], dz2)
    dz1 = pool_backward(a1, p1, dp1) * (z1 > 0)
    _, g["conv1.w"], g["conv1.b"] = conv_backward(x, p["conv1.w"], dz1)
    return add_l2(loss, p, g, l2)


LOSS = {"mlp": mlp_loss_and_grads, "cnn": cnn_loss_and_grads}


def adam(kind, params, x, y, *, epochs, batch, lr, l2, rng, masks=None):
    """Adam with the learning rate halved every 20 epochs; ``masks`` keep pruned
    weights at zero (their gradient is dropped and the mask reapplied every step)."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(val) for k, val in params.items()}
    step = 0
    for epoch in range(epochs):
        rate = lr * 0.5 ** (epoch // 20)
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss, grads = LOSS[kind](params, x[idx], y[idx], l2)
            total += loss * len(idx)
            step += 1
            for key, grad in grads.items():
                m[key] = 0.9 * m[key] + 0.1 * grad
                v[key] = 0.999 * v[key] + 0.001 * grad ** 2
                mhat = m[key] / (1 - 0.9 ** step)
                vhat = v[key] / (1 - 0.999 ** step)
                params[key] -= rate * mhat / (np.sqrt(vhat) + 1e-8)
                if masks and key in masks:
                    params[key] *= masks[key]
        print(f"{kind} epoch {epoch + 1:2d}: loss {total / len(x):.4f}", flush=True)
    return params


def train_cnn(x_train, y_train, *, epochs=60, batch=32, lr=3e-3, l2=1e-4):
    rng = np.random.default_rng(SEED)
    params = {}
    for name, shape in WEIGHT_SHAPES["cnn"].items():
        fan_in = int(np.prod(shape[:-1]))
        params[f"{name}.w"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        params[f"{name}.b"] = np.zeros(shape[-1])
    params = adam("cnn", params, x_train[..., None], y_train, epochs=epochs, batch=batch,
                  lr=lr, l2=l2, rng=rng)
    trainer = {"trainer": "numpy", "epochs": epochs, "batch": batch, "lr": lr,
               "lr_schedule": "x0.5 every 20 epochs", "l2": l2, "optimizer": "adam",
               "init": "he-normal", "seed": SEED}
    return params, trainer


def finetune_2_4(kind, dense, x_train, y_train, *, epochs=30, batch=32, lr=1e-3, l2=1e-4):
    """2:4-prune every weight of ``dense`` (``prune_2_4``: along K, per kernel tap for
    convolutions) and fine-tune the kept weights with the masks fixed (the usual recipe)."""
    params = {k: np.array(v, dtype=np.float64) for k, v in dense.items()}
    masks = {}
    for key, w in params.items():
        if key.endswith(".w"):
            params[key], mask = prune_2_4(w)
            masks[key] = mask.astype(np.float64)
    x = x_train[..., None] if kind == "cnn" else x_train
    params = adam(kind, params, x, y_train, epochs=epochs, batch=batch, lr=lr, l2=l2,
                  rng=np.random.default_rng(SEED + 1), masks=masks)
    trainer = {"trainer": "numpy", "finetune": "2:4 masks from prune_2_4, fixed",
               "sparsity": "2:4", "epochs": epochs, "batch": batch, "lr": lr,
               "lr_schedule": "x0.5 every 20 epochs", "l2": l2, "optimizer": "adam",
               "seed": SEED + 1}
    return params, trainer


def save(kind, params, trainer, x_test, y_test, out_dir, *, suffix=""):
    arrays = {key: np.asarray(value, dtype=np.float32) for key, value in params.items()}
    # Report the accuracy of exactly what is saved (the float32 weights).
    net = DigitsNetwork(kind, {k: a.astype(np.float64) for k, a in arrays.items()})
    correct = int(np.sum(net.predict(x_test) == y_test))
    meta = {"kind": kind, "architecture": [spec._asdict() for spec in ARCHITECTURES[kind]],
            "input": "pixel / 16", "split": "test: index % 5 == 0 of load_digits()",
            "test_images": int(len(y_test)), "test_correct": correct,
            "test_accuracy": correct / len(y_test), **trainer}
    path = Path(out_dir) / f"digits_{kind}{suffix}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    print(f"{path}: float test accuracy {correct}/{len(y_test)} = {correct / len(y_test):.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DATA_DIR), help="output directory")
    parser.add_argument("--only", choices=("mlp", "cnn"), help="train one network")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_digits_split()
    trainers = {"mlp": train_mlp, "cnn": train_cnn}
    for kind in ("mlp", "cnn"):
        if args.only not in (None, kind):
            continue
        dense, trainer = trainers[kind](x_train, y_train)
        save(kind, dense, trainer, x_test, y_test, args.out)
        sparse, trainer = finetune_2_4(kind, dense, x_train, y_train)
        save(kind, sparse, trainer, x_test, y_test, args.out, suffix=SPARSE_SUFFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
