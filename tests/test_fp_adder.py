"""Floating-point adder: parameters, latency and valid, exhaustive tiny format (Amaranth
simulator), and the FP32 regression on Verilator against NumPy float32 (``ieee``) and
the exact reference (``ftz``).  Seeds are printed.
"""

import random
import re
import time

import numpy as np
import pytest
from amaranth.hdl import Fragment

from cycle_sim import run_operand_pairs
from npugen.golden.floating import (BFLOAT16, FLOAT16, FLOAT32, FloatFormat, add_array,
                                    fp32_from_bits, fp32_to_bits, random_operands, special_values)
from npugen.hw.float_format import float_struct
from npugen.hw.fp_adder import DEFAULT_LATENCY, MAX_LATENCY, FloatAdder
from npugen.hw.fp_multiplier import operands_layout
from npugen.sim.fp_sim import Bank, operand_pairs, run_lanes

TINY = FloatFormat(3, 2, "e3m2")


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"fmt": 32}, TypeError, "fmt must be a FloatFormat, not 32"),
    ({"latency": 5}, ValueError, "latency must be an integer in 0..4, not 5"),
    ({"latency": None}, ValueError, "latency must be an integer in 0..4, not None"),
    ({"subnormals": "IEEE"}, ValueError, "subnormals must be one of 'ieee', 'ftz', not 'IEEE'"),
])
def test_rejects(kwargs, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        FloatAdder(**kwargs)


def test_defaults_and_signature():
    dut = FloatAdder()
    assert (dut.fmt, dut.latency, dut.subnormals) == (FLOAT32, DEFAULT_LATENCY, "ieee")
    assert DEFAULT_LATENCY == MAX_LATENCY == 4
    assert dut.operands.payload.shape() == operands_layout(FLOAT32)
    assert dut.result.payload.shape() is float_struct(FLOAT32)
    Fragment.get(dut, None)


def simulate(dut, pairs, valid):
    """Drive one pair per cycle with the given valid flags; return per-cycle (valid, result)."""
    return run_operand_pairs(dut, pairs, valid)


@pytest.mark.parametrize("latency", range(MAX_LATENCY + 1))
def test_latency_and_valid(latency):
    seed = 0xADD0 + latency
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = FloatAdder(FLOAT32, latency=latency)
    a, b = random_operands(FLOAT32, 150, np.random.default_rng(seed), op="add")
    pairs = list(zip(a.tolist(), b.tolist()))
    valid = [int(rng.random() < 0.7) for _ in pairs]
    trace = simulate(dut, pairs, valid)
    want = add_array(FLOAT32, a, b)
    assert [v for v, _ in trace] == [0] * latency + valid + [0] * (len(trace) - latency - len(valid))
    for t, (v, y) in enumerate(trace[latency:latency + len(pairs)]):
        if v:
            assert y == want[t], (t, hex(pairs[t][0]), hex(pairs[t][1]))


@pytest.mark.parametrize("subnormals", ["ieee", "ftz"])
def test_tiny_format_exhaustive(subnormals):
    codes = list(range(1 << TINY.width))
    pairs = [(x, y) for x in codes for y in codes]
    dut = FloatAdder(TINY, latency=3, subnormals=subnormals)
    trace = simulate(dut, pairs, [1] * len(pairs))
    got = [y for _, y in trace[3:3 + len(pairs)]]
    want = add_array(TINY, [p[0] for p in pairs], [p[1] for p in pairs], subnormals)
    bad = [i for i in range(len(pairs)) if got[i] != want[i]]
    assert not bad, [(hex(pairs[i][0]), hex(pairs[i][1]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("fmt", [BFLOAT16, FLOAT16], ids=str)
def test_other_formats_sim(fmt):
    seed = 0xADD16 + fmt.man_bits
    print(f"seed={seed}")
    specials = special_values(fmt)
    a, b = random_operands(fmt, 400, np.random.default_rng(seed), op="add")
    pairs = [(x, y) for x in specials for y in specials] + list(zip(a.tolist(), b.tolist()))
    for subnormals in ("ieee", "ftz"):
        dut = FloatAdder(fmt, latency=2, subnormals=subnormals)
        trace = simulate(dut, pairs, [1] * len(pairs))
        want = add_array(fmt, [p[0] for p in pairs], [p[1] for p in pairs], subnormals)
        assert [y for _, y in trace[2:2 + len(pairs)]] == want.tolist()


@pytest.mark.parametrize("subnormals", [
    "ieee", pytest.param("ftz", marks=pytest.mark.slow)])
def test_fp32_verilator(subnormals, tmp_path):
    seed = {"ieee": 0xF32A_0001, "ftz": 0xF32A_0002}[subnormals]
    print(f"seed={seed}")
    start = time.monotonic()
    a, b, counts = operand_pairs(FLOAT32, "add", seed=seed, random_pairs=1 << 20)
    assert counts["pattern"] >= 46_464 and counts["random"] >= 1_000_000
    if subnormals == "ieee":
        with np.errstate(all="ignore"):
            want = fp32_to_bits(fp32_from_bits(a.astype(np.uint32)) +
                                fp32_from_bits(b.astype(np.uint32))).astype(np.uint64)
    else:
        want = add_array(FLOAT32, a, b, "ftz").astype(np.uint64)
    banks = (Bank(f"{subnormals}_4", subnormals, latency=4), Bank(f"{subnormals}_2", subnormals, latency=2))
    expected = {bank.name: want for bank in banks}
    run = run_lanes("add", FLOAT32, banks, a, b, expected, seed=seed, lanes=32, work_dir=tmp_path)
    for name, got in run.outputs.items():
        bad = np.nonzero(got != want)[0]
        assert len(bad) == 0, f"bank {name}: {len(bad)} mismatches, first " + ", ".join(
            f"{int(a[i]):#x}+{int(b[i]):#x}={int(got[i]):#x} (want {int(want[i]):#x})"
            for i in bad[:5]) + f"; work dir {run.work_dir}"
    print(f"pairs {counts}, {run.cycles} cycles, {time.monotonic() - start:.1f} s")
