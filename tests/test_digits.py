"""The digits networks: committed weights, float and quantized accuracy, NPU semantics."""

import re

import numpy as np
import pytest

import npugen.golden.digits as digits
from npugen.golden.binary import pack_bits, xnor_popcount_gemm
from npugen.golden.digits import (
    KINDS,
    VARIANTS,
    layer_table,
    load_network,
    quantize_network,
)
from npugen.golden.model_zoo import get_model
from npugen.golden.quant import requantize
from npugen.golden.sparse_formats import NMMatrix

# The float test-split results recorded by scripts/train_digits.py (360 images).
FLOAT_CORRECT = {("mlp", False): 351, ("cnn", False): 353, ("mlp", True): 350, ("cnn", True): 353}


@pytest.fixture(scope="module")
def split():
    pytest.importorskip("sklearn", reason="the digits images ship with scikit-learn "
                                          "(pip install 'npugen[models]')")
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def calibration(split):
    return split[0][:digits.CALIBRATION_SIZE]


def accuracy(model, split):
    _, _, x_test, y_test = split
    return float(np.mean(model.predict(x_test) == y_test))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparse", [False, True])
def test_committed_weights_load(kind, sparse):
    net = load_network(kind, sparse=sparse)
    path = digits.DATA_DIR / f"digits_{kind}{digits.SPARSE_SUFFIX if sparse else ''}.npz"
    assert path.stat().st_size < 64 * 1024
    for name, shape in digits.WEIGHT_SHAPES[kind].items():
        assert net.params[f"{name}.w"].shape == shape
        assert net.params[f"{name}.b"].shape == shape[-1:]
    assert net.meta["kind"] == kind
    assert net.meta["test_correct"] == FLOAT_CORRECT[kind, sparse]
    assert net.meta["test_images"] == digits.TEST_SIZE


def test_split(split):
    x_train, y_train, x_test, y_test = split
    assert x_train.shape == (1437, 8, 8) and x_test.shape == (360, 8, 8)
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    from sklearn.datasets import load_digits
    data = load_digits()
    assert np.array_equal(y_test, data.target[::5])
    assert np.array_equal(x_test * 16, data.images[::5])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparse", [False, True])
def test_float_accuracy_is_the_documented_one(kind, sparse, split):
    net = load_network(kind, sparse=sparse)
    _, _, x_test, y_test = split
    assert int(np.sum(net.predict(x_test) == y_test)) == FLOAT_CORRECT[kind, sparse]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_within_one_point_of_float(kind, method, split, calibration):
    net = load_network(kind)
    qnet = quantize_network(net, calibration, "int8", method=method)
    assert accuracy(qnet, split) >= accuracy(net, split) - 0.01
    # The logits themselves follow the float network.
    _, _, x_test, _ = split
    logits = net.forward(x_test)
    out = qnet.layers[-1].output
    err = np.abs(out.dequantize(qnet.forward(x_test)) - logits)
    assert err.mean() < 0.05 * np.abs(logits).mean()


def test_layer_modes_and_clamps(calibration):
    net = load_network("cnn")
    q = quantize_network(net, calibration, "int4")
    assert [l.mode for l in q.layers] == ["int8", "int4", "int4", "int8"]
    assert [l.weights.precision for l in q.layers] == ["int8", "int4", "int4", "int8"]
    # Each layer's output is the next layer's input; ReLU clamps at its zero point.
    for layer, nxt in zip(q.layers, q.layers[1:]):
        assert layer.output == nxt.input
        assert (layer.out_min, layer.out_max) == (nxt.input.zero_point, nxt.input.qmax)
    assert (q.layers[-1].out_min, q.layers[-1].out_max) == (-128, 127)
    w = quantize_network(net, calibration, "binary", weights_only=True)
    assert [l.mode for l in w.layers] == ["int8"] * 4
    assert [l.weights.precision for l in w.layers] == ["int8", "binary", "binary", "int8"]
    a = quantize_network(net, calibration, "int4", first_last_int8=False)
    assert [l.mode for l in a.layers] == ["int4"] * 4
    codes = a.input_quant.quantize(np.ones((1, 8, 8)))
    assert codes.min() >= -8 and codes.max() <= 7
    report = q.report()
    assert [r["layer"] for r in report] == ["conv1", "conv2", "fc1", "fc2"]


def test_binary_conv_is_xnor_popcount(split, calibration):
    # The binary convolution equals the NPU's lowering: im2col with padding taps at bit 0
    # (-1), XNOR-popcount over K in (kh, kw, C_in) order, then the requantizer.
    net = load_network("cnn")
    q = quantize_network(net, calibration, "binary")
    conv2 = q.layers[1]
    assert conv2.mode == "binary" and q.layers[0].out_max == 1
    x = q.input_quant.quantize(split[2][:40][..., None])
    h = digits.maxpool2x2(digits._conv_layer(q.layers[0], x))
    assert set(np.unique(h)) <= {0, 1}
    padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))     # code 0 = bit 0
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 3 * 3 * 8)
    w = conv2.weights.codes.reshape(-1, 16)
    acc = xnor_popcount_gemm(pack_bits(2 * cols.astype(np.int8) - 1, axis=1),
                             pack_bits(w, axis=0), 72)
    want = requantize(acc, conv2.multiplier, conv2.shift, bias=conv2.bias,
                      out_zero_point=conv2.output.zero_point, out_min=conv2.out_min,
                      out_max=conv2.out_max).reshape(40, 4, 4, 16)
    assert np.array_equal(digits._conv_layer(conv2, h), want)


@pytest.mark.parametrize("kind", KINDS)
def test_2_4_weights(kind, split, calibration):
    net = load_network(kind, sparse=True)
    q = quantize_network(net, calibration, "int8", sparsity="2:4")
    for spec, layer in zip(q.specs, q.layers):
        w = net.params[f"{spec.name}.w"]
        codes = layer.weights.codes
        assert np.array_equal(digits.prune_2_4(w)[0], w)       # pruned in training
        if w.ndim == 2 or w.shape[2] >= 4:                      # conv1: one channel a tap
            assert np.mean(w == 0) >= 0.5
        assert not codes[w == 0].any()
        # At most 2 of every 4 in K: rows of an FC matrix, channels of one kernel tap.
        for matrix in ([codes] if codes.ndim == 2 else codes.reshape(-1, *codes.shape[2:])):
            NMMatrix.from_dense(matrix)
    assert accuracy(q, split) >= accuracy(load_network(kind), split) - 0.01


def test_prune_2_4_groups_channels_of_one_tap():
    rng = np.random.default_rng(0xD161_0001)
    print("seed=0xD1610001")
    w = rng.normal(size=(3, 3, 6, 5)) + 0.01
    pruned, mask = digits.prune_2_4(w)
    # Per tap: channels 0-3 keep 2, channels 4-5 (a short group) keep 2 of 2.
    kept = mask.reshape(9, 6, 5)
    assert (kept[:, :4].sum(axis=1) == 2).all() and kept[:, 4:].all()
    assert np.array_equal(pruned, np.where(mask, w, 0))
    one_channel = rng.normal(size=(3, 3, 1, 4))
    assert np.array_equal(digits.prune_2_4(one_channel)[0], one_channel)
    fc = rng.normal(size=(10, 3))
    assert (digits.prune_2_4(fc)[1].reshape(-1)[:24].reshape(2, 4, 3).sum(axis=1) == 2).all()
    with pytest.raises(ValueError, match=r"^w must be \(K, N\) or \[kh, kw, C_in, C_out\], "
                                         r"not shape \(3,\)$"):
        digits.prune_2_4(np.ones(3))


def test_documented_accuracy_table(split):
    table = {}
    for line in digits.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[1].endswith("%"):
            table[cells[0]] = [float(c.rstrip(" %")) for c in cells[1:]]
    assert set(table) == {"float", "float-2:4-finetuned", "bf16"} | set(VARIANTS)
    report = digits.accuracy_report()
    for name, (mlp, cnn) in table.items():
        assert round(100 * report["mlp"][name], 2) == mlp, name
        assert round(100 * report["cnn"][name], 2) == cnn, name
    assert re.search(r"\| variant \| mlp \| cnn \|", digits.format_report(report))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_network_is_the_npu_arithmetic(kind, split):
    """BF16 inference: layer by layer the documented operands, order and conversions,
    recomputed here from the float weights with the generic BF16 GEMM; logits close to
    float, the same prediction on nearly every image."""
    from npugen.golden.bf16_gemm import bf16_gemm
    from npugen.golden.floating import fp32_to_bf16_bits
    _, _, x_test, y_test = split
    net = load_network(kind)
    x = x_test[:40]
    for rows in (2, 8):
        bnet = digits.bf16_network(net, rows)
        assert bnet.k_tile == rows // 2
        logits, outputs = bnet.forward_bits(bnet.input_bits(x), trace=True)
        assert logits.dtype == np.uint32 and logits.shape == (40, 10)
        h = fp32_to_bf16_bits(digits._input(kind, x).astype(np.float32))
        np.testing.assert_array_equal(bnet.input_bits(x), h)
        for i, spec in enumerate(bnet.specs):
            w = fp32_to_bf16_bits(net.params[f"{spec.name}.w"].astype(np.float32))
            b = fp32_to_bf16_bits(net.params[f"{spec.name}.b"].astype(np.float32))
            k = rows // 2
            if spec.kind == "fc":
                h = h.reshape(len(h), -1)
                y = bf16_gemm(*digits.bf16_fc_operands(h, w, b, k), k)
                # the bias tile: fp32(Σ over the padded data tiles + b)
                a0, w0 = digits.bf16_fc_operands(h, w, b, k)
                kp = a0.shape[1] - k
                s = bf16_gemm(a0[:, :kp], w0[:kp], k).view(np.float32)
                bias = np.asarray(b, np.uint32) << 16
                np.testing.assert_array_equal(
                    y.view(np.float32), s + bias.view(np.float32)[None, :])
            else:
                a, wa = digits.bf16_conv_operands(h, w, b, k)
                y = bf16_gemm(a, wa, k).reshape(h.shape[:3] + (w.shape[-1],))
            if spec.pool:
                f = y.view(np.float32)
                pooled = digits.maxpool2x2(np.maximum(f, np.float32(0)))
                y = digits.maxpool2x2(y.view(np.int32)).view(np.uint32)
                np.testing.assert_array_equal(np.maximum(y.view(np.float32), 0), pooled)
            if i < len(bnet.specs) - 1:
                f = y.view(np.float32)
                h = fp32_to_bf16_bits(np.maximum(f, np.float32(0)) if spec.relu else f)
            else:
                h = y
            np.testing.assert_array_equal(outputs[i], h)
        np.testing.assert_array_equal(logits, h)
        ref = net.forward(x)
        assert np.abs(logits.view(np.float32) - ref).max() < 0.5
        assert np.mean(bnet.predict(x) == np.argmax(ref, axis=1)) >= 0.95
    with pytest.raises(ValueError, match=r"^rows must be an even integer in 2\.\.64, not 3$"):
        digits.bf16_network(net, 3)
    with pytest.raises(TypeError, match=r"^net must be a DigitsNetwork, not str$"):
        digits.bf16_network("mlp")


def test_layer_tables():
    mlp, cnn = layer_table("mlp"), layer_table("cnn")
    assert (mlp.macs, mlp.weights) == (64 * 64 + 64 * 32 + 32 * 10,) * 2
    assert cnn.macs == 64 * 9 * 8 + 16 * 72 * 16 + 64 * 32 + 32 * 10
    assert cnn.weights == 9 * 8 + 72 * 16 + 64 * 32 + 32 * 10
    assert [l.out_shape for l in cnn.layers] == [(8, 8, 8), (8, 4, 4), (16, 4, 4), (16, 2, 2),
                                                 (32, 1, 1), (10, 1, 1)]
    assert get_model("digits-cnn") == cnn and get_model("digits-mlp") == mlp


def test_bad_arguments(calibration, tmp_path):
    net = load_network("mlp")
    with pytest.raises(ValueError, match=r"^kind must be one of mlp, cnn, not 'rnn'$"):
        load_network("rnn")
    with pytest.raises(TypeError, match=r"^sparse must be a bool, not 1$"):
        load_network("mlp", sparse=1)
    with pytest.raises(ValueError, match=r"^precision must be one of int8, int4, binary, "
                                         r"not 'fp8'$"):
        quantize_network(net, calibration, "fp8")
    with pytest.raises(ValueError, match=r"^method must be one of minmax, percentile, "
                                         r"entropy, not 'mse'$"):
        quantize_network(net, calibration, method="mse")
    with pytest.raises(ValueError, match=r"^sparsity must be None, '2:4' or a fraction in "
                                         r"\[0, 1\], not '1:4'$"):
        quantize_network(net, calibration, sparsity="1:4")
    with pytest.raises(ValueError, match=r"^sparsity needs int8 layers \(the sparse modes are "
                                         r"int8\), not precision 'int4'$"):
        quantize_network(net, calibration, "int4", sparsity="2:4")
    with pytest.raises(TypeError, match=r"^first_last_int8 must be a bool or None, not 1$"):
        quantize_network(net, calibration, first_last_int8=1)
    with pytest.raises(TypeError, match=r"^net must be a DigitsNetwork, not str$"):
        quantize_network("mlp", calibration)
    with pytest.raises(ValueError, match=r"^images must have shape \(n, 8, 8\), not \(3, 64\)$"):
        net.forward(np.zeros((3, 64)))
    with pytest.raises(ValueError, match=r"^parameter fc1.w of the mlp must have shape "
                                         r"\(64, 64\), not missing$"):
        digits.DigitsNetwork("mlp", {})
    np.savez(tmp_path / "x.npz", meta=np.array('{"kind": "cnn"}'),
             **{k: v for k, v in net.params.items()})
    with pytest.raises(ValueError, match=r"holds a cnn network, not a mlp$"):
        load_network("mlp", path=tmp_path / "x.npz")
    with pytest.raises(ValueError, match=r"^variant must be one of int8, .* not 'int2'$"):
        digits.accuracy_report(variants=["int2"])
