"""Whole digits networks as one NPU program: golden lowering, the simulated NPU, the CLI.

The RTL tests run several programs back to back on one Verilator model of the tiny
preset: the CNN in int8 on 20 test images (predictions identical to the golden network,
accuracy within 1 point of float), the MLP in int8, and every other variant on a few
images; the analytic cycle model must be within 5 % of each program's RTL cycles.  The
bf16 networks run on a second model, the tiny preset with bf16 built (FP32 logits
bit-identical to the golden BF16 network).
"""

import json
import os

import numpy as np
import pytest

from npugen.golden import digits
from npugen.golden.config import NPUConfig
from npugen.golden.network import compile_network, layer_cycles
from npugen.golden.npu_perf import estimate_program

pytest.importorskip("sklearn", reason="the digits images ship with scikit-learn "
                                      "(pip install 'npugen[models]')")

TINY = NPUConfig.preset("tiny")
TINY_BF16 = TINY.replace(modes=TINY.modes + ("bf16",))
SEED = int(os.environ.get("NPUGEN_SEED", "20261122"))
VARIANTS = ("int8", "int8-2:4-finetuned", "int4", "binary")


@pytest.fixture(scope="module")
def split():
    return digits.load_digits_split()


_QNETS = {}


def qnet(kind, variant, split):
    if (kind, variant) not in _QNETS:
        options = dict(digits.VARIANTS[variant])
        net = digits.load_network(kind, sparse=options.pop("network", None) == "2:4")
        _QNETS[kind, variant] = (digits.quantize_network(
            net, split[0][:digits.CALIBRATION_SIZE], **options), options.get("sparsity"))
    return _QNETS[kind, variant]


def program(config, kind, variant, split, images, first=0):
    if variant == "bf16":
        b = digits.bf16_network(digits.load_network(kind), config.rows)
        x = split[2][first:first + images]
        return compile_network(config, b, b.input_bits(x), base=0x1000)
    q, sparsity = qnet(kind, variant, split)
    x = split[2][first:first + images]
    codes = q.input_quant.quantize(digits._input(kind, x))
    return compile_network(config, q, codes, sparsity=sparsity, base=0x1000)


# -- golden: the program on the instruction-level model ----------------------------------


@pytest.mark.parametrize("kind", digits.KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_program_equals_golden_network(kind, variant, preset, split):
    config = NPUConfig.preset(preset)
    prog = program(config, kind, variant, split, 7, first=11)
    result, memory = prog.run()
    assert result.status == "done"
    logits = prog.extract(memory)["logits"]
    q, _ = qnet(kind, variant, split)
    np.testing.assert_array_equal(logits, q.forward(split[2][11:18]))
    assert prog.expected["logits"].shape == (7, 10)
    # one START: a single END, one FENCE between layers
    names = [type(i).__name__ for i in prog.instructions]
    assert names.count("End") == 1 and names[-1] == "End"
    assert names.count("Fence") == len(q.layers) - 1
    layers = prog.info["layers"]
    assert [layer["name"] for layer in layers] == [s.name for s in q.specs]
    assert [layer["mode"] for layer in layers] == [layer.mode for layer in q.layers]
    assert sum(layer["macs"] for layer in layers) == prog.macs
    # int4/binary keep the first and last layers int8; 2:4 leaves conv1 (1 channel) dense
    if variant in ("int4", "binary"):
        assert layers[0]["mode"] == layers[-1]["mode"] == "int8"
        assert {layer["mode"] for layer in layers[1:-1]} == {variant}
    if variant == "int8-2:4-finetuned":
        assert [layer["sparse"] for layer in layers] == \
            ([False, True, True, True] if kind == "cnn" else [True, True, True])


@pytest.mark.parametrize("kind", digits.KINDS)
@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_bf16_program_equals_golden_network(kind, preset, split):
    """bf16: FP32 logits of the instruction-level model bit-identical to the golden
    BF16 network (large: partial N tiles stored row by row)."""
    config = NPUConfig.preset(preset)
    config = config.replace(modes=config.modes + ("bf16",))
    prog = program(config, kind, "bf16", split, 5, first=11)
    result, memory = prog.run()
    assert result.status == "done"
    logits = prog.extract(memory)["logits"]
    b = digits.bf16_network(digits.load_network(kind), config.rows)
    x = split[2][11:16]
    np.testing.assert_array_equal(logits.view(np.uint32), b.forward_bits(b.input_bits(x)))
    assert logits.dtype == np.int32 and logits.shape == (5, 10)
    np.testing.assert_array_equal(np.argmax(logits.view(np.float32), axis=1), b.predict(x))
    names = [type(i).__name__ for i in prog.instructions]
    assert names.count("End") == 1 and names.count("Fence") == len(b.specs) - 1
    layers = prog.info["layers"]
    assert [layer["mode"] for layer in layers] == ["bf16"] * len(b.specs)
    from npugen.golden.isa import VectorOp
    ops = {int(i.op) for i in prog.instructions if type(i).__name__ == "Vector"}
    assert ops == ({VectorOp.MAX, VectorOp.TO_BF16_RELU} if kind == "cnn"
                   else {VectorOp.TO_BF16_RELU})
    # every MATMUL: bf16, raw, the bias tile last with one element
    for m in (i for i in prog.instructions if type(i).__name__ == "Matmul"):
        assert (m.mode, m.raw, m.k_valid_last) == (3, 1, 1)
    est = estimate_program(prog)
    assert est.cycles > 0


def test_bf16_compile_errors(split):
    b = digits.bf16_network(digits.load_network("cnn"), TINY.rows)
    bits = b.input_bits(split[2][:2])
    with pytest.raises(ValueError, match=r"^the network needs mode 'bf16', which the "
                                         r"configuration does not build"):
        compile_network(TINY, b, bits)
    with pytest.raises(ValueError, match=r"^the network's summation order is that of rows=2, "
                                         r"the configuration has rows=8$"):
        compile_network(NPUConfig.preset("default").replace(
            modes=("int8", "bf16")), b, bits)
    with pytest.raises(ValueError, match=r"^codes must be uint16 BF16 encodings of shape "
                                         r"\(n, 8, 8, 1\)"):
        compile_network(TINY_BF16, b, bits.astype(np.int16))
    with pytest.raises(ValueError, match=r"^sparsity must be None for a bf16 network, "
                                         r"not '2:4'$"):
        compile_network(TINY_BF16, b, bits, sparsity="2:4")


def test_layer_cycles_add_up(split):
    prog = program(TINY, "cnn", "int8", split, 3)
    est = estimate_program(prog, timeline=True)
    layers = layer_cycles(prog, est)
    assert sum(layer["cycles"] for layer in layers) == est.cycles
    assert all(0 < layer["utilization"] <= 1 for layer in layers)


def test_pooling_and_packing_instructions(split):
    names = {}
    for variant in ("int8", "int4", "binary"):
        prog = program(TINY, "cnn", variant, split, 2)
        names[variant] = {int(i.op) for i in prog.instructions if type(i).__name__ == "Vector"}
    from npugen.golden.isa import VectorOp
    assert names["int8"] == {VectorOp.MAX}
    assert names["int4"] == {VectorOp.MAX, VectorOp.PACK_INT4}
    assert names["binary"] == {VectorOp.MAX, VectorOp.PACK_BINARY}


def test_compile_network_errors(split):
    q, _ = qnet("cnn", "int8", split)
    codes = q.input_quant.quantize(digits._input("cnn", split[2][:2]))
    with pytest.raises(TypeError, match=r"^qnet must be a QuantizedNetwork or BF16Network, "
                                        r"not str$"):
        compile_network(TINY, "cnn", codes)
    with pytest.raises(ValueError, match=r"^sparsity must be None or '2:4', not '1:4'$"):
        compile_network(TINY, q, codes, sparsity="1:4")
    with pytest.raises(ValueError, match=r"^codes must be int8 of shape \(n, 8, 8, 1\)"):
        compile_network(TINY, q, codes.reshape(2, 64))
    with pytest.raises(ValueError, match=r"^sparsity '2:4' needs a configuration"):
        compile_network(TINY.replace(sparse_2_4=False), q, codes, sparsity="2:4")
    q4, _ = qnet("cnn", "int4", split)
    with pytest.raises(ValueError, match=r"^the network needs mode 'int4'"):
        compile_network(TINY.replace(modes=("int8",)), q4, codes)


# -- the simulated NPU ----------------------------------------------------------------------


def _check_rtl(cases, config=TINY):
    from npugen.sim.npu_sim import run_kernels

    seed = SEED
    print(f"seed={seed}")
    programs = [program(config, kind, variant, split_data(), n) for kind, variant, n in cases]
    results = run_kernels(config, programs, seed=seed)
    records = {}
    for (kind, variant, n), result in zip(cases, results):
        prog = result.program
        assert result.record.done, (kind, variant, result.record)
        assert result.model_status == "done"
        assert result.stray_writes == 0
        np.testing.assert_array_equal(result.outputs["logits"], prog.expected["logits"],
                                      err_msg=f"{kind} {variant}")
        np.testing.assert_array_equal(result.model_outputs["logits"], prog.expected["logits"])
        assert result.record.instret == len(prog.instructions)
        est = estimate_program(prog)
        error = (est.cycles - result.record.cycles) / result.record.cycles
        print(f"{kind} {variant} {n} images: RTL {result.record.cycles} cycles, "
              f"model {est.cycles} ({100 * error:+.2f} %)")
        assert abs(error) <= 0.05, (kind, variant, result.record.cycles, est.cycles)
        records[kind, variant] = result
    return records


_SPLIT = []


def split_data():
    if not _SPLIT:
        _SPLIT.append(digits.load_digits_split())
    return _SPLIT[0]


def test_rtl_digits_networks():
    """One Verilator run: CNN int8 on 20 images, MLP int8 on 20, every other variant of
    both networks on 3 images."""
    cases = [("cnn", "int8", 20), ("mlp", "int8", 20)]
    cases += [(kind, variant, 3) for kind in digits.KINDS for variant in VARIANTS[1:]]
    records = _check_rtl(cases)
    x_test, y_test = split_data()[2], split_data()[3]
    cnn = records["cnn", "int8"]
    pred = np.argmax(cnn.outputs["logits"], axis=1)
    q, _ = qnet("cnn", "int8", split_data())
    np.testing.assert_array_equal(pred, q.predict(x_test[:20]))
    # accuracy within 1 point of float on the golden side (full test split)
    report = digits.accuracy_report(["cnn"], ["int8"])["cnn"]
    assert abs(report["int8"] - report["float"]) <= 0.01, report
    assert np.mean(pred == y_test[:20]) >= 0.9


def test_rtl_bf16_networks():
    """The tiny preset with bf16 built: the CNN on 3 images and the MLP on 3, FP32 logits
    bit-identical to the golden BF16 network, the cycle model within 5 %."""
    records = _check_rtl([("cnn", "bf16", 3), ("mlp", "bf16", 3)], TINY_BF16)
    x_test = split_data()[2]
    for kind in digits.KINDS:
        b = digits.bf16_network(digits.load_network(kind), TINY_BF16.rows)
        logits = records[kind, "bf16"].outputs["logits"]
        np.testing.assert_array_equal(np.argmax(logits.view(np.float32), axis=1),
                                      b.predict(x_test[:3]))


@pytest.mark.slow
def test_rtl_bf16_20_images():
    _check_rtl([("cnn", "bf16", 20), ("mlp", "bf16", 20)], TINY_BF16)


@pytest.mark.slow
@pytest.mark.parametrize("kind", digits.KINDS)
def test_rtl_every_variant_40_images(kind):
    _check_rtl([(kind, variant, 40) for variant in VARIANTS])


@pytest.mark.slow
def test_rtl_default_preset():
    """The 8×8 design: the CNN in int8 on 20 images, the other variants on 3."""
    cases = [("cnn", "int8", 20)] + [(kind, variant, 3) for kind in digits.KINDS
                                     for variant in VARIANTS[1:]]
    _check_rtl(cases, NPUConfig.preset("default"))


# -- the command line -----------------------------------------------------------------------


def run_cli(*argv):
    from npugen.flows.cli import main
    return main(list(argv))


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "bf16", "--sparsity", "2:4"],
     r"--sparsity 2:4 needs --dtype int8 \(the 2:4 mode is int8\), not --dtype bf16"),
    (["--dtype", "bf16", "--set", "acc_bits=24"],
     r"--dtype bf16 needs the bf16 mode, which this configuration cannot build: modes "
     r"with 'bf16' need lane_bits=8 and acc_bits=32"),
    (["--dtype", "int4", "--sparsity", "2:4"], r"--sparsity 2:4 needs --dtype int8"),
    (["--sparsity", "1:2"], r"--sparsity must be dense or 2:4, not '1:2'"),
    (["--dtype", "fp8"], r"--dtype must be one of int8, int4, binary, bf16, not 'fp8'"),
    (["--images", "0"], r"--images must be an integer in 1\.\.360, not 0"),
    (["--network", "rnn"], r"--network must be one of mlp, cnn, not 'rnn'"),
])
def test_cli_usage_errors(argv, message, capsys):
    assert run_cli("run-model", "digits", "--preset", "tiny", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("npugen: error: ") and __import__("re").search(message, err), err


def test_cli_unknown_model(capsys):
    assert run_cli("run-model", "mnist", "--preset", "tiny") == 2
    assert "MODEL must be one of digits, not 'mnist'" in capsys.readouterr().err


def test_cli_run_json(tmp_path, capsys):
    path = tmp_path / "run.json"
    assert run_cli("run-model", "digits", "--network", "mlp", "--images", "2", "--preset",
                   "tiny", "--no-accuracy", "--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "predictions identical to the golden model: yes" in out
    record = json.loads(path.read_text())
    assert record["match"] and record["predictions_match"] and record["images"] == 2
    assert record["cycles_per_image"] == record["cycles"] / 2
    assert [layer["name"] for layer in record["layers"]] == ["fc1", "fc2", "fc3"]
    assert abs(record["model_error"]) <= 0.05


def test_cli_mismatch_is_an_error(monkeypatch, tmp_path, capsys):
    """Predictions that differ from the golden model: exit code 1 and a message."""
    import npugen.sim.npu_sim as npu_sim

    def corrupted(config, programs, *, seed, **kwargs):
        results = []
        for prog in programs:
            result, memory = prog.run()
            outputs = prog.extract(memory)
            logits = outputs["logits"].copy()
            logits[0] = 0
            logits[0, (np.argmax(prog.expected["logits"][0]) + 1) % 10] = 127
            record = npu_sim.NPURecord(status=0b010, error=0, error_detail=0, error_pc=0,
                                       cycles=1000, instret=len(prog.instructions),
                                       unit_busy=dict.fromkeys(("load", "compute", "vector",
                                                                "store"), 0),
                                       irq_after_clear=0, before=b"", after=b"")
            results.append(npu_sim.KernelResult(prog, record, {"logits": logits}, outputs,
                                                result.status, 0))
        return results

    monkeypatch.setattr(npu_sim, "run_kernels", corrupted)
    path = tmp_path / "bad.json"
    assert run_cli("run-model", "digits", "--network", "mlp", "--images", "2", "--preset",
                   "tiny", "--no-accuracy", "--json", str(path)) == 1
    captured = capsys.readouterr()
    assert "predictions identical to the golden model: NO" in captured.out
    assert "npugen: error: the NPU's predictions differ from the golden model" in captured.err
    record = json.loads(path.read_text())
    assert not record["match"] and not record["predictions_match"]
