"""Floating-point multiplier: parameters, latency and valid, exhaustive tiny formats
(Amaranth simulator), and BF16 / FP16 / TF32 / FP32 regressions on Verilator.

Verilator runs stream every special pair, the TestFloat-style pattern crossing and
random pairs through 32 lanes per configuration, against ml_dtypes (BF16, ``ieee``),
NumPy (FP16, FP32, ``ieee``) and the exact reference (every format, both policies).
Seeds are printed.
"""

import random
import re
import time

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Fragment, Module, Signal
from amaranth.sim import Simulator

from cycle_sim import run_operand_pairs
from npugen.golden.floating import (BFLOAT16, FLOAT16, FLOAT32, TENSORFLOAT32, FloatFormat,
                                    bf16_mul, bf16_product_fp32, fp32_to_bits, mul_array,
                                    random_operands, special_values)
from npugen.hw.float_format import float_struct
from npugen.hw.fp_multiplier import (DEFAULT_LATENCY, MAX_LATENCY, FloatMultiplier, lut_product,
                                     operands_layout)
from npugen.sim.fp_sim import Bank, FloatLanes, operand_pairs, run_lanes

#: A 6-bit format (3 exponent, 2 fraction bits): every pair can be simulated.
TINY = FloatFormat(3, 2, "e3m2")


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"fmt": "bf16"}, TypeError, "fmt must be a FloatFormat, not 'bf16'"),
    ({"latency": -1}, ValueError, "latency must be an integer in 0..8, not -1"),
    ({"latency": 9}, ValueError, "latency must be an integer in 0..8, not 9"),
    ({"latency": 2.0}, ValueError, "latency must be an integer in 0..8, not 2.0"),
    ({"latency": True}, ValueError, "latency must be an integer in 0..8, not True"),
    ({"subnormals": "daz"}, ValueError, "subnormals must be one of 'ieee', 'ftz', not 'daz'"),
    ({"multiplier": "booth"}, ValueError, "multiplier must be one of 'dsp', 'lut', not 'booth'"),
])
def test_rejects(kwargs, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        FloatMultiplier(**kwargs)


def test_defaults_and_signature():
    dut = FloatMultiplier()
    assert (dut.fmt, dut.latency, dut.subnormals, dut.multiplier) == \
        (BFLOAT16, DEFAULT_LATENCY, "ieee", "dsp")
    assert (DEFAULT_LATENCY, MAX_LATENCY) == (7, 8)
    assert dut.signature.members["operands"].signature.always_ready
    assert dut.operands.payload.shape() == operands_layout(BFLOAT16)
    assert dut.result.payload.shape() is float_struct(BFLOAT16)
    Fragment.get(dut, None)
    dut = FloatMultiplier(FLOAT32, latency=0, subnormals="ftz", multiplier="lut")
    assert (dut.fmt, dut.latency, dut.subnormals, dut.multiplier) == (FLOAT32, 0, "ftz", "lut")
    Fragment.get(dut, None)


# -- Amaranth simulator ------------------------------------------------------------------------


def simulate(dut, pairs, valid):
    """Drive one pair per cycle with the given valid flags; return per-cycle (valid, result)."""
    return run_operand_pairs(dut, pairs, valid)


@pytest.mark.parametrize("latency", range(MAX_LATENCY + 1))
def test_latency_and_valid(latency):
    seed = 0xF0 + latency
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = FloatMultiplier(BFLOAT16, latency=latency)
    assert dut.latency == latency
    a, b = random_operands(BFLOAT16, 150, np.random.default_rng(seed))
    pairs = list(zip(a.tolist(), b.tolist()))
    valid = [int(rng.random() < 0.7) for _ in pairs]
    trace = simulate(dut, pairs, valid)
    want = mul_array(BFLOAT16, a, b)
    # valid comes out exactly `latency` cycles later, with the product of that pair.
    assert [v for v, _ in trace] == [0] * latency + valid + [0] * (len(trace) - latency - len(valid))
    for t, (v, y) in enumerate(trace[latency:latency + len(pairs)]):
        if v:
            assert y == want[t], (t, hex(pairs[t][0]), hex(pairs[t][1]))


@pytest.mark.parametrize("subnormals", ["ieee", "ftz"])
@pytest.mark.parametrize("multiplier", ["dsp", "lut"])
def test_tiny_format_exhaustive(multiplier, subnormals):
    """Every pair of a 6-bit format, both policies and both multiplier kinds."""
    codes = list(range(1 << TINY.width))
    pairs = [(x, y) for x in codes for y in codes]
    dut = FloatMultiplier(TINY, latency=2, subnormals=subnormals, multiplier=multiplier)
    trace = simulate(dut, pairs, [1] * len(pairs))
    got = [y for _, y in trace[2:2 + len(pairs)]]
    want = mul_array(TINY, [p[0] for p in pairs], [p[1] for p in pairs], subnormals)
    bad = [i for i in range(len(pairs)) if got[i] != want[i]]
    assert not bad, [(hex(pairs[i][0]), hex(pairs[i][1]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("fmt", [FLOAT16, TENSORFLOAT32, FLOAT32], ids=str)
def test_formats_lut_sim(fmt):
    """The LUT product at the wide formats (the Verilator runs cover it at BF16 and FP16)."""
    seed = 0x1A7 + fmt.width
    print(f"seed={seed}")
    specials = special_values(fmt)
    a, b = random_operands(fmt, 300, np.random.default_rng(seed))
    pairs = [(x, y) for x in specials for y in specials] + list(zip(a.tolist(), b.tolist()))
    for subnormals in ("ieee", "ftz"):
        dut = FloatMultiplier(fmt, latency=1, subnormals=subnormals, multiplier="lut")
        trace = simulate(dut, pairs, [1] * len(pairs))
        want = mul_array(fmt, [p[0] for p in pairs], [p[1] for p in pairs], subnormals)
        assert [y for _, y in trace[1:1 + len(pairs)]] == want.tolist()


@pytest.mark.parametrize("wa, wb", [(1, 1), (3, 5), (6, 6), (8, 3)])
def test_lut_product_exhaustive(wa, wb):
    a, b, y = Signal(wa), Signal(wb), Signal(wa + wb)
    m = Module()
    m.d.comb += y.eq(lut_product(m, a, b))

    async def testbench(ctx):
        for x in range(1 << wa):
            for z in range(1 << wb):
                ctx.set(a, x)
                ctx.set(b, z)
                assert ctx.get(y) == x * z, (x, z)

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("multiplier, count", [("dsp", 1), ("lut", 0)])
def test_lut_variant_has_no_multiplication_cell(multiplier, count):
    """yosys maps every ``$mul`` cell to DSPs (synth_ecp5 has no per-cell opt-out), so the
    LUT variant must not contain one."""
    top = FloatLanes("mul", BFLOAT16, 1, (Bank("x", "ieee", multiplier, 4),))
    text = rtlil.convert(top, name="t", emit_src=False)
    assert len(re.findall(r"^\s*cell \$mul ", text, re.MULTILINE)) == count


# -- Verilator ----------------------------------------------------------------------------------


def check(run, expected, a, b):
    for name, got in run.outputs.items():
        bad = np.nonzero(got != expected[name])[0]
        assert len(bad) == 0, f"bank {name}: {len(bad)} mismatches, first " + ", ".join(
            f"{int(a[i]):#x}*{int(b[i]):#x}={int(got[i]):#x} (want {int(expected[name][i]):#x})"
            for i in bad[:5]) + f"; work dir {run.work_dir}"


@pytest.mark.parametrize("subnormals", ["ieee", "ftz"])
def test_bf16_verilator(subnormals, tmp_path):
    seed = {"ieee": 0xBF16_0001, "ftz": 0xBF16_0002}[subnormals]
    print(f"seed={seed}")
    start = time.monotonic()
    a, b, counts = operand_pairs(BFLOAT16, "mul", seed=seed, random_pairs=1 << 20)
    assert counts["pattern"] >= 46_464 and counts["random"] >= 1_000_000
    # ieee: ml_dtypes; ftz: the exact reference (ml_dtypes has no flush-to-zero).
    want = bf16_mul(a, b, subnormals).astype(np.uint64)
    banks = (Bank(f"{subnormals}_dsp", subnormals, "dsp", 4),
             Bank(f"{subnormals}_lut", subnormals, "lut", 3))
    expected = {bank.name: want for bank in banks}
    run = run_lanes("mul", BFLOAT16, banks, a, b, expected, seed=seed, lanes=32, work_dir=tmp_path)
    check(run, expected, a, b)
    print(f"pairs {counts}, {run.cycles} cycles, {time.monotonic() - start:.1f} s")


def _numpy_mul(fmt, a, b):
    dtype, utype = (np.float16, np.uint16) if fmt == FLOAT16 else (np.float32, np.uint32)
    with np.errstate(all="ignore"):
        r = a.astype(utype).view(dtype) * b.astype(utype).view(dtype)
    bits = r.view(utype).astype(np.uint64)
    bits[np.isnan(r)] = fmt.quiet_nan
    return bits


@pytest.mark.slow
@pytest.mark.parametrize("fmt, banks", [
    (FLOAT16, (Bank("ieee_dsp", "ieee", "dsp", 4), Bank("ftz_lut", "ftz", "lut", 2))),
    (TENSORFLOAT32, (Bank("ieee_lut", "ieee", "lut", 4), Bank("ftz_dsp", "ftz", "dsp", 3))),
    (FLOAT32, (Bank("ieee_dsp", "ieee", "dsp", 4), Bank("ftz_dsp", "ftz", "dsp", 1))),
], ids=lambda v: str(v) if isinstance(v, FloatFormat) else "-".join(b.name for b in v))
def test_formats_verilator(fmt, banks, tmp_path):
    seed = 0xF0_0000 + fmt.width
    print(f"seed={seed}")
    start = time.monotonic()
    a, b, counts = operand_pairs(fmt, "mul", seed=seed, random_pairs=100_000)
    exact = {p: mul_array(fmt, a, b, p).astype(np.uint64) for p in ("ieee", "ftz")}
    if fmt in (FLOAT16, FLOAT32):
        assert np.array_equal(exact["ieee"], _numpy_mul(fmt, a, b))
    expected = {bank.name: exact[bank.subnormals] for bank in banks}
    run = run_lanes("mul", fmt, banks, a, b, expected, seed=seed, lanes=32, work_dir=tmp_path)
    check(run, expected, a, b)
    print(f"pairs {counts}, {run.cycles} cycles, {time.monotonic() - start:.1f} s")


# -- BF16 operands, FP32 product ---------------------------------------------------------------


def test_operand_format_rejects():
    message = ("operand_fmt must be None or a format with fmt's exponent and at most its "
               "fraction bits, not ")
    for fmt, operand_fmt in ((FLOAT32, FLOAT16), (BFLOAT16, FLOAT32), (FLOAT32, "bf16")):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            FloatMultiplier(fmt, operand_fmt=operand_fmt)


@pytest.mark.parametrize("latency, multiplier, subnormals",
                         [(0, "dsp", "ieee"), (3, "lut", "ieee"), (7, "dsp", "ftz"),
                          (MAX_LATENCY, "lut", "ftz")])
def test_bf16_operands_fp32_product(latency, multiplier, subnormals):
    """bf16 × bf16 → fp32 (the BF16 MAC's product): every special pair and random pairs
    against NumPy float32 (``ieee``) and the exact reference on the widened operands."""
    seed = 0xB16F32 + latency
    print(f"seed={seed}")
    dut = FloatMultiplier(FLOAT32, operand_fmt=BFLOAT16, latency=latency,
                          multiplier=multiplier, subnormals=subnormals)
    assert dut.operands.payload.shape() == operands_layout(BFLOAT16)
    specials = special_values(BFLOAT16)
    ra, rb = random_operands(BFLOAT16, 2000, np.random.default_rng(seed))
    a = np.array([x for x in specials for _ in specials] + list(ra), dtype=np.uint16)
    b = np.array([y for _ in specials for y in specials] + list(rb), dtype=np.uint16)
    if subnormals == "ieee":
        expect = fp32_to_bits(bf16_product_fp32(a, b))
    else:
        expect = mul_array(FLOAT32, a.astype(np.uint64) << 16, b.astype(np.uint64) << 16, "ftz")
    trace = simulate(dut, list(zip(map(int, a), map(int, b))), [1] * len(a))
    got = [value for valid, value in trace if valid]
    assert got == [int(x) for x in expect]
