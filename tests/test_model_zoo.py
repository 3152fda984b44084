"""Layer tables of the reference networks: totals, per-layer shapes, GEMM lowering."""

import json

import pytest

from npugen.golden.model_zoo import (
    MODEL_NAMES,
    GemmShape,
    Layer,
    ModelBuilder,
    ModelTable,
    get_model,
    load_model,
)

# Reference totals (MACs, weights) that every table must reproduce within 5 %.
REFERENCE = {
    "lenet5": (341e3, 60e3),
    "alexnet": (724e6, 61e6),
    "vgg16": (15.5e9, 138e6),
    "googlenet": (1.43e9, 7e6),
    "resnet50": (3.9e9, 25.5e6),
    "efficientnet-b4": (4.4e9, 19e6),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_weights_within_5_percent(name):
    table = get_model(name)
    assert table.name == name
    assert table.weights == pytest.approx(REFERENCE[name][1], rel=0.05)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "googlenet"])
def test_macs_within_5_percent(name):
    assert get_model(name).macs == pytest.approx(REFERENCE[name][0], rel=0.05)


def test_googlenet_macs():
    # The published architecture sums to the paper's 1.586 G; the 1.43 G reference is
    # that count without the 1x1 reduction convolutions (documented in the module).
    table = get_model("googlenet")
    assert table.macs == pytest.approx(1.586e9, rel=0.005)
    reduce = [layer for layer in table.layers if layer.name.endswith("_reduce")]
    assert len(reduce) == 1 + 9 * 2
    assert table.macs_excluding("_reduce") == table.macs - sum(l.macs for l in reduce)
    assert table.macs_excluding("_reduce") == pytest.approx(REFERENCE["googlenet"][0], rel=0.05)
    # both conventions: macs is the full count, reference_macs the 1.43 G one
    summary = table.summary()
    assert summary["macs"] == table.macs == pytest.approx(1.583e9, rel=0.001)
    assert summary["reference_macs"] == pytest.approx(1.43e9, rel=0.005)
    assert summary["reference_excludes"] == "*_reduce"
    assert "reference_macs" not in get_model("vgg16").summary()


def test_exact_totals():
    # Hand-checked layer sums (the docstring's table).
    exact = {
        "lenet5": (117_600 + 150_000 + 48_000 + 10_080 + 840, 150 + 1_500 + 48_000 + 10_080 + 840),
        "alexnet": (724_406_816, 60_954_656),
        "vgg16": (15_470_264_320, 138_344_128),
        "resnet50": (3_857_973_248, 25_502_912),
    }
    for name, (macs, weights) in exact.items():
        table = get_model(name)
        assert (table.macs, table.weights) == (macs, weights), name


def test_alexnet_layers():
    table = get_model("alexnet")
    conv2 = next(l for l in table.layers if l.name == "conv2")
    assert conv2.in_shape == (96, 27, 27) and conv2.out_shape == (256, 27, 27)
    assert conv2.gemm == GemmShape(27 * 27, 48 * 25, 128, 2)
    assert conv2.macs == 223_948_800 and conv2.weights == 307_200
    fc6 = next(l for l in table.layers if l.name == "fc6")
    assert fc6.gemm == GemmShape(1, 9216, 4096, 1)
    assert [l.out_shape for l in table.layers if l.kind == "maxpool"] == [
        (96, 27, 27), (256, 13, 13), (256, 6, 6)]


def test_googlenet_shapes():
    table = get_model("googlenet")
    by_name = {l.name: l for l in table.layers}
    assert by_name["conv1/7x7_s2"].out_shape == (64, 112, 112)
    assert by_name["pool1/3x3_s2"].out_shape == (64, 56, 56)   # Caffe ceil mode
    assert by_name["inception_3a/1x1"].in_shape == (192, 28, 28)
    assert by_name["inception_3b/1x1"].in_shape == (256, 28, 28)
    assert by_name["inception_4a/1x1"].in_shape == (480, 14, 14)
    assert by_name["inception_5b/1x1"].in_shape == (832, 7, 7)
    assert by_name["loss3/classifier"].gemm == GemmShape(1, 1024, 1000, 1)
    # The inception 3a row of the paper's Table 1: 128 M multiply-adds.
    assert sum(l.macs for l in table.layers
               if l.name.startswith("inception_3a/")) == 784 * 163_328


def test_lenet5_connection_table():
    table = get_model("lenet5")
    c3 = [l for l in table.layers if l.name.startswith("c3")]
    assert [l.gemm for l in c3] == [GemmShape(100, 75, 1, 6), GemmShape(100, 100, 1, 9),
                                    GemmShape(100, 150, 1, 1)]
    assert sum(l.weights for l in c3) == 1500   # 60 connected input maps × 25
    c5 = next(l for l in table.layers if l.name == "c5")
    assert c5.in_shape == (16, 5, 5) and c5.out_shape == (120, 1, 1)


def test_resnet50_blocks():
    table = get_model("resnet50")
    adds = [l for l in table.layers if l.kind == "add"]
    assert len(adds) == 16
    assert len(table.compute_layers()) == 1 + 16 * 3 + 4 + 1
    assert adds[-1].out_shape == (2048, 7, 7)
    res3a = next(l for l in table.layers if l.name == "res3a_branch2a")
    assert res3a.stride == (2, 2) and res3a.out_shape == (128, 28, 28)
    assert all(l.macs == 0 and l.weights == 0 for l in table.layers
               if l.kind not in ("conv", "fc"))


def test_efficientnet_b4_depthwise():
    table = get_model("efficientnet-b4")
    assert table.input_shape == (3, 380, 380)
    depthwise = [l for l in table.layers if l.name.endswith("_depthwise")]
    assert len(depthwise) == 32
    for layer in depthwise:
        assert layer.groups == layer.in_channels == layer.out_channels
        g = layer.gemm
        assert (g.n, g.groups) == (1, layer.in_channels)
        assert g.k == layer.kernel[0] * layer.kernel[1]
    assert next(l for l in table.layers if l.name == "stem").out_shape == (48, 190, 190)
    assert next(l for l in table.layers if l.name == "head").out_shape == (1792, 12, 12)


def test_gemms_and_batch():
    table = get_model("vgg16")
    gemms = table.gemms()
    assert len(gemms) == 16
    assert sum(g.macs for _, g in gemms) == table.macs
    assert gemms[0] == ("conv1_1", GemmShape(224 * 224, 27, 64, 1))
    batched = table.gemms(batch=4)
    assert sum(g.macs for _, g in batched) == 4 * table.macs
    assert batched[-1][1] == GemmShape(4, 4096, 1000, 1)
    with pytest.raises(ValueError, match=r"^batch must be a positive integer, not 0$"):
        table.gemms(batch=0)


def test_dilation_stride_padding():
    b = ModelBuilder("t", (8, 17, 17))
    out = b.conv("c", 4, 3, stride=2, padding=2, dilation=2, groups=4)
    assert out == (4, 9, 9)   # (17 + 4 - 4 - 1) // 2 + 1
    layer = b.build().layers[0]
    assert layer.gemm == GemmShape(81, 2 * 9, 1, 4)
    assert layer.macs == 81 * 18 * 4 and layer.weights == 72 and layer.biases == 4


def test_json_round_trip(tmp_path):
    table = get_model("resnet50")
    path = tmp_path / "resnet50.json"
    path.write_text(json.dumps(table.to_dict()))
    loaded = load_model(str(path))
    assert loaded == table
    assert loaded.summary() == table.summary()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^model must be one of lenet5, .* not 'resnet51'$"):
        get_model("resnet51")
    with pytest.raises(ValueError, match=r"^model must be one of .* or a JSON file, not "):
        load_model(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"^model file .* is not valid JSON"):
        load_model(str(bad))
    with pytest.raises(ValueError, match=r"^a model table needs the key 'layers'$"):
        ModelTable.from_dict({"name": "x", "input_shape": [1, 2, 2]})
    with pytest.raises(ValueError, match=r"^kind must be one of conv, fc, .* not 'lstm'$"):
        Layer("x", "lstm", (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match=r"^groups must divide in_channels 6 and "
                                         r"out_channels 4, not 4$"):
        Layer("x", "conv", (6, 4, 4), (4, 4, 4), groups=4)
    with pytest.raises(ValueError, match=r"^out_shape of conv layer 'x' must be "
                                         r"\(4, 2, 2\), not \(4, 4, 4\)$"):
        Layer("x", "conv", (4, 4, 4), (4, 4, 4), kernel=3)
    with pytest.raises(ValueError, match=r"^stride must hold integers of at least 1, not 0$"):
        ModelBuilder("t", (1, 8, 8)).conv("c", 1, 3, stride=0)
    with pytest.raises(ValueError, match=r"^kernel \(9, 9\) with dilation \(1, 1\) does not "
                                         r"fit the padded input \(8, 8\)"):
        ModelBuilder("t", (1, 8, 8)).conv("c", 1, 9)
    with pytest.raises(ValueError, match=r"^input_shape must be a \(channels, height, width\) "
                                         r"triple, not \(8, 8\)$"):
        ModelBuilder("t", (8, 8))
    with pytest.raises(ValueError, match=r"^activation must be one of .* not 'gelu'$"):
        ModelBuilder("t", (1, 8, 8)).fc("f", 3, activation="gelu")
    b = ModelBuilder("t", (1, 8, 8))
    b.conv("c", 2, 3)
    with pytest.raises(ValueError, match=r"^layer name 'c' is used twice in t$"):
        b.conv("c", 2, 3)
    with pytest.raises(ValueError, match=r"^add needs equal shapes, not \(2, 6, 6\) and "
                                         r"\(1, 8, 8\)$"):
        b.elementwise("a", "add", (2, 6, 6), (1, 8, 8))
