# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.pe.ProcessingElement`.

Cycle convention of every testbench here: in cycle ``t`` the inputs are set, the
(registered) outputs are read, then ``await ctx.tick()`` moves to cycle ``t + 1``.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment

from cycle_sim import run_cycles
from npugen.golden.bf16_gemm import random_bf16
from npugen.golden.floating import (BFLOAT16, FLOAT32, bf16_product_fp32, fp32_to_bits,
                                    special_values)
from npugen.golden.precision import MODE_CODES, SPARSE_MODE_CODE
from npugen.hw.pe import ProcessingElement

SEEDS = [0x5EED_0001, 0x5EED_0002, 0x5EED_0003]

INPUTS = ("act_in", "swap_in", "psum_in", "shift", "w_shadow_in")
OUTPUTS = ("act_out", "swap_out", "psum_out", "w_shadow_out")


def wrap(value, bits):
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def idle(**fields):
    """One cycle of inputs; every input not named is 0."""
    cycle = dict.fromkeys(INPUTS, 0)
    cycle.update(fields)
    return cycle


def simulate(dut, cycles, outputs=OUTPUTS):
    """Apply one input dict per cycle; return the outputs read in each cycle."""
    return run_cycles(dut, cycles, lambda ctx: {name: ctx.get(getattr(dut, name))
                                                for name in outputs})


class PEModel:
    """The per-edge equations of the module docstring, registers reset to 0."""

    def __init__(self, act_bits, weight_bits, acc_bits):
        self.acc_bits = acc_bits
        self.act_reg = self.swap_reg = self.w_active = self.product = 0
        self.psum_out = self.w_shadow = 0

    def outputs(self):
        return {"act_out": self.act_reg, "swap_out": self.swap_reg,
                "psum_out": self.psum_out, "w_shadow_out": self.w_shadow}

    def edge(self, i):
        act_reg, swap_reg = i["act_in"], i["swap_in"]
        w_active = self.w_shadow if i["swap_in"] else self.w_active
        product = self.act_reg * self.w_active
        psum_out = wrap(i["psum_in"] + self.product, self.acc_bits)
        w_shadow = i["w_shadow_in"] if i["shift"] else self.w_shadow
        (self.act_reg, self.swap_reg, self.w_active, self.product,
         self.psum_out, self.w_shadow) = (act_reg, swap_reg, w_active, product,
                                          psum_out, w_shadow)


# -- constructor ----------------------------------------------------------------------


def test_defaults_and_properties():
    pe = ProcessingElement()
    assert (pe.act_bits, pe.weight_bits, pe.acc_bits) == (9, 8, 32)
    Fragment.get(pe, None)
    pe = ProcessingElement(act_bits=5, weight_bits=4, acc_bits=18)
    assert (pe.act_bits, pe.weight_bits, pe.acc_bits) == (5, 4, 18)
    assert pe.act_in.shape().width == 5 and pe.act_in.shape().signed
    assert pe.w_shadow_in.shape().width == 4 and pe.w_shadow_out.shape().signed
    assert pe.psum_in.shape().width == 18 and pe.psum_out.shape().signed
    Fragment.get(pe, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"act_bits": 0}, r"^act_bits must be an integer in 2\.\.33, not 0$"),
    ({"act_bits": 1}, r"^act_bits must be an integer in 2\.\.33, not 1$"),
    ({"act_bits": 34}, r"^act_bits must be an integer in 2\.\.33, not 34$"),
    ({"act_bits": True}, r"^act_bits must be an integer in 2\.\.33, not True$"),
    ({"act_bits": 9.0}, r"^act_bits must be an integer in 2\.\.33, not 9\.0$"),
    ({"act_bits": "9"}, r"^act_bits must be an integer in 2\.\.33, not '9'$"),
    ({"weight_bits": 1}, r"^weight_bits must be an integer in 2\.\.32, not 1$"),
    ({"weight_bits": 33}, r"^weight_bits must be an integer in 2\.\.32, not 33$"),
    ({"weight_bits": None}, r"^weight_bits must be an integer in 2\.\.32, not None$"),
    ({"acc_bits": 1}, r"^acc_bits must be an integer in 2\.\.64, not 1$"),
    ({"acc_bits": 65}, r"^acc_bits must be an integer in 2\.\.64, not 65$"),
    ({"acc_bits": False}, r"^acc_bits must be an integer in 2\.\.64, not False$"),
    ({"acc_bits": -32}, r"^acc_bits must be an integer in 2\.\.64, not -32$"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProcessingElement(**kwargs)


def test_parameter_bounds_accepted():
    for kwargs in ({"act_bits": 2}, {"act_bits": 33}, {"weight_bits": 2},
                   {"weight_bits": 32}, {"acc_bits": 2}, {"acc_bits": 64}):
        Fragment.get(ProcessingElement(**kwargs), None)


# -- timing ---------------------------------------------------------------------------


def test_act_and_swap_pass_right_one_cycle_later():
    seed = SEEDS[0]
    print(f"seed={seed}")
    rng = random.Random(seed)
    cycles = [idle(act_in=rng.randint(-256, 255), swap_in=rng.randint(0, 1))
              for _ in range(24)]
    trace = simulate(ProcessingElement(), cycles)
    assert trace[0]["act_out"] == 0 and trace[0]["swap_out"] == 0
    for t in range(1, len(cycles)):
        assert trace[t]["act_out"] == cycles[t - 1]["act_in"], t
        assert trace[t]["swap_out"] == cycles[t - 1]["swap_in"], t


def test_mac_timing():
    # Weight 7 shifted in during cycle 0 and promoted by the swap riding on the
    # activation of cycle 1.  psum_in differs in every cycle so the cycle in which it
    # is sampled is pinned down: an activation entering in cycle s contributes to
    # psum_out in cycle s + 3, added to psum_in of cycle s + 2.
    acts = {1: 5, 2: -3, 4: 100, 5: -256}
    cycles = []
    for t in range(10):
        cycles.append(idle(act_in=acts.get(t, 0), swap_in=int(t == 1),
                           shift=int(t == 0), w_shadow_in=7 if t == 0 else -99,
                           psum_in=1000 * t + 1))
    trace = simulate(ProcessingElement(), cycles)
    assert trace[1]["w_shadow_out"] == 7
    assert [trace[t]["act_out"] for t in range(2, 7)] == [5, -3, 0, 100, -256]
    expected = {t: cycles[t - 1]["psum_in"] + 7 * acts.get(t - 3, 0) for t in range(3, 10)}
    assert {t: trace[t]["psum_out"] for t in range(3, 10)} == expected
    assert trace[4]["psum_out"] == 3001 + 35
    assert trace[5]["psum_out"] == 4001 - 21


def test_shadow_shift_chain():
    seed = SEEDS[1]
    print(f"seed={seed}")
    rng = random.Random(seed)
    cycles = [idle(shift=rng.randint(0, 1), w_shadow_in=rng.randint(-128, 127))
              for _ in range(40)]
    trace = simulate(ProcessingElement(), cycles)
    held = 0
    for t, inputs in enumerate(cycles):
        assert trace[t]["w_shadow_out"] == held, t
        if inputs["shift"]:
            held = inputs["w_shadow_in"]
    # Shifting alone never changes the active weight: no swap, so every product is 0.
    assert all(trace[t]["psum_out"] == 0 for t in range(len(cycles)))


def test_swap_switches_with_the_carrying_activation():
    # cycle 0: shadow <- 11; 1: act 2 + swap (active 11); 2: act 3 without swap while
    # shadow <- -13 (3 still multiplies 11); 3: act 4 + swap promotes -13 while shadow
    # <- 99 in the same cycle; 4: act 5 keeps -13; 5: act 6 + swap promotes 99.
    cycles = [
        idle(shift=1, w_shadow_in=11),
        idle(act_in=2, swap_in=1),
        idle(act_in=3, shift=1, w_shadow_in=-13),
        idle(act_in=4, swap_in=1, shift=1, w_shadow_in=99),
        idle(act_in=5),
        idle(act_in=6, swap_in=1),
    ] + [idle() for _ in range(4)]
    trace = simulate(ProcessingElement(), cycles)
    assert [trace[t]["psum_out"] for t in range(4, 9)] == [22, 33, -52, -65, 594]
    assert trace[4]["w_shadow_out"] == 99


def test_weight_changes_every_cycle():
    # Shift the next weight in the same cycle as the swap that promotes the current
    # one: one fresh weight per activation, back to back.
    weights = [127, -128, -127, 1, 0, -1, 64, -65]
    acts = [-256, 255, 255, -256, 17, -1, 3, -128]
    cycles = [idle(shift=1, w_shadow_in=weights[0])]
    for i, a in enumerate(acts):
        nxt = weights[i + 1] if i + 1 < len(weights) else 0
        cycles.append(idle(act_in=a, swap_in=1, shift=int(i + 1 < len(weights)),
                           w_shadow_in=nxt))
    cycles += [idle() for _ in range(3)]
    trace = simulate(ProcessingElement(), cycles)
    assert [trace[1 + i + 3]["psum_out"] for i in range(len(acts))] == \
        [a * w for a, w in zip(acts, weights)]


@pytest.mark.parametrize("acc_bits", [32, 18])
def test_extremes_and_wrap(acc_bits):
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    cases = []
    for a in (-256, 255):
        for w in (127, -127, -128):
            for p in (0, hi, lo, -1, hi - a * w + 1 if a * w > 0 else lo - a * w - 1):
                cases.append((a, w, wrap(p, acc_bits)))
    cycles = [idle(shift=1, w_shadow_in=cases[0][1])]
    for i, (a, _, p) in enumerate(cases):
        nxt = cases[i + 1][1] if i + 1 < len(cases) else 0
        # psum_in is sampled two cycles after the activation enters.
        cycles.append(idle(act_in=a, swap_in=1, shift=1, w_shadow_in=nxt))
    cycles += [idle() for _ in range(3)]
    for i, (_, _, p) in enumerate(cases):
        cycles[1 + i + 2]["psum_in"] = p
    trace = simulate(ProcessingElement(acc_bits=acc_bits), cycles)
    got = [trace[1 + i + 3]["psum_out"] for i in range(len(cases))]
    expected = [wrap(p + a * w, acc_bits) for a, w, p in cases]
    assert got == expected
    # The cases do wrap, in both directions.
    assert any(p + a * w > hi for a, w, p in cases)
    assert any(p + a * w < lo for a, w, p in cases)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("widths", [(9, 8, 32), (9, 8, 18), (4, 3, 5)],
                         ids=lambda w: "a{}w{}acc{}".format(*w))
def test_random_against_model(seed, widths):
    print(f"seed={seed}")
    rng = random.Random(seed)
    act_bits, weight_bits, acc_bits = widths

    def sample(bits):
        return rng.randint(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)

    cycles = [idle(act_in=sample(act_bits), swap_in=int(rng.random() < 0.3),
                   psum_in=sample(acc_bits), shift=int(rng.random() < 0.5),
                   w_shadow_in=sample(weight_bits))
              for _ in range(150)]
    trace = simulate(ProcessingElement(act_bits=act_bits, weight_bits=weight_bits,
                                       acc_bits=acc_bits), cycles)
    model = PEModel(act_bits, weight_bits, acc_bits)
    for t, inputs in enumerate(cycles):
        assert trace[t] == model.outputs(), f"cycle {t}"
        model.edge(inputs)


# -- precision modes ------------------------------------------------------------------

ALL_MODES = ("int8", "int4", "binary")
CODE = {"int8": 0, "int4": 1, "binary": 2, "int8 2:4": SPARSE_MODE_CODE}
#: Names of the mode codes travelling through a PE (code 4: int8 with 2:4 weights).
CODE_NAMES = {code: name for name, code in CODE.items()}
MODE_INPUTS = INPUTS + ("mode_in",)
MODE_OUTPUTS = OUTPUTS + ("mode_out",)


def sext(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def contribution(mode, act, w):
    """What one activation bus value adds with weight lane ``w`` in ``mode``."""
    if mode == "int8":
        return sext(act, 9) * sext(w, 8)
    if mode == "int8 2:4":
        # The weight lane's bits [8, 10) select one of the 4 activations of the group.
        return sext(act >> (9 * ((w >> 8) & 3)), 9) * sext(w, 8)
    if mode == "int4":
        return sext(act, 5) * sext(w, 4) + sext(act >> 5, 5) * sext(w >> 4, 4)
    agree = ~(act ^ w) & 0xFF & (act >> 8)
    return 2 * bin(agree).count("1")


def int8_bus(value, garbage=0):
    """An int8-mode lane: the 9-bit corrected value, bits 9 and up ignored."""
    return (value & 0x1FF) | (garbage << 9)


def int4_bus(lo, hi, garbage=0):
    """An int4-mode lane: corrected values in bits [0, 5) and [5, 10)."""
    return (lo & 31) | ((hi & 31) << 5) | (garbage << 10)


def binary_bus(signs, valid):
    """A binary-mode lane: sign bits [0, 8), valid mask [8, 16)."""
    return (signs & 0xFF) | ((valid & 0xFF) << 8)


def int4_weight(lo, hi):
    """Weight lane of two int4 values, element 0 in the low nibble (as int8)."""
    return sext((lo & 0xF) | ((hi & 0xF) << 4), 8)


def mode_idle(**fields):
    cycle = dict.fromkeys(MODE_INPUTS, 0)
    cycle.update(fields)
    return cycle


def simulate_modes(dut, cycles):
    return simulate(dut, cycles, MODE_OUTPUTS)


class ModePEModel:
    """Per-edge model of the mode PE: the contribution is registered with its row."""

    def __init__(self, acc_bits):
        self.acc_bits = acc_bits
        self.act_reg = self.mode_reg = self.swap_reg = self.w_active = 0
        self.contrib = self.psum_out = self.w_shadow = 0

    def outputs(self):
        return {"act_out": self.act_reg, "mode_out": self.mode_reg, "swap_out": self.swap_reg,
                "psum_out": self.psum_out, "w_shadow_out": self.w_shadow}

    def edge(self, i):
        w_active = self.w_shadow if i["swap_in"] else self.w_active
        contrib = contribution(CODE_NAMES[self.mode_reg], self.act_reg, self.w_active)
        psum_out = wrap(i["psum_in"] + self.contrib, self.acc_bits)
        w_shadow = i["w_shadow_in"] if i["shift"] else self.w_shadow
        (self.act_reg, self.mode_reg, self.swap_reg, self.w_active, self.contrib,
         self.psum_out, self.w_shadow) = (i["act_in"], i["mode_in"], i["swap_in"], w_active,
                                          contrib, psum_out, w_shadow)


def per_cycle_weights(rows):
    """Cycles applying ``rows`` of (mode, act bus, weight, psum_in) one per cycle.

    Each weight is shifted in the cycle before its activation and promoted by the
    activation's swap; psum_in is placed two cycles after the activation.  The result
    of row i is read in cycle ``i + 4``.
    """
    cycles = [mode_idle(shift=1, w_shadow_in=rows[0][2])]
    for i, (mode, act, _, _) in enumerate(rows):
        nxt = rows[i + 1][2] if i + 1 < len(rows) else 0
        cycles.append(mode_idle(act_in=act, mode_in=CODE[mode], swap_in=1,
                                shift=int(i + 1 < len(rows)), w_shadow_in=nxt))
    cycles += [mode_idle() for _ in range(3)]
    for i, (_, _, _, p) in enumerate(rows):
        cycles[1 + i + 2]["psum_in"] = p
    return cycles


@pytest.mark.parametrize("modes, width", [
    (("int8",), None), (("int8", "int4"), 10), (("int8", "binary"), 16),
    (("binary", "int8", "int4"), 16), (["int4", "int8"], 10),
])
def test_mode_bus_and_properties(modes, width):
    pe = ProcessingElement(modes=modes)
    assert pe.modes == tuple(m for m in ALL_MODES if m in modes)
    shape = pe.act_in.shape()
    if width is None:
        assert shape.width == 9 and shape.signed
    else:
        assert shape.width == width and not shape.signed
    assert pe.act_out.shape() == shape
    assert pe.mode_in.shape().width == 2 and pe.mode_out.shape().width == 2
    Fragment.get(pe, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"modes": "int8"},
     r"^modes must be a tuple of distinct int8, int4, binary, bf16 including 'int8', not 'int8'$"),
    ({"modes": ()}, r"^modes must be a tuple of distinct int8, int4, binary, bf16 including 'int8', not \(\)$"),
    ({"modes": ("int4",)},
     r"^modes must be a tuple of distinct int8, int4, binary, bf16 including 'int8', not \('int4',\)$"),
    ({"modes": ("int4", "binary")}, r"^modes must be a tuple of distinct int8, int4, binary, bf16 including "
                                    r"'int8', not \('int4', 'binary'\)$"),
    ({"modes": ("int8", "fp8")},
     r"^modes must be a tuple of distinct int8, int4, binary, bf16 including 'int8', not \('int8', 'fp8'\)$"),
    ({"modes": ("int8", 4)},
     r"^modes must be a tuple of distinct int8, int4, binary, bf16 including 'int8', not \('int8', 4\)$"),
    ({"modes": ("int8", "int8")}, r"^modes must be a tuple of distinct int8, int4, binary, bf16 "
                                  r"including 'int8', not \('int8', 'int8'\)$"),
    ({"modes": None}, r"^modes must be a tuple of distinct int8, int4, binary, bf16 including "
                      r"'int8', not None$"),
    ({"modes": ("int8", "int4"), "act_bits": 8},
     r"^packed modes need act_bits=9 and weight_bits=8, not 8 and 8$"),
    ({"modes": ("int8", "binary"), "weight_bits": 4},
     r"^packed modes need act_bits=9 and weight_bits=8, not 9 and 4$"),
    ({"modes": ("int8", "int4", "binary"), "act_bits": 17, "weight_bits": 16},
     r"^packed modes need act_bits=9 and weight_bits=8, not 17 and 16$"),
])
def test_bad_modes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProcessingElement(**kwargs)


def test_int8_only_keeps_other_widths():
    pe = ProcessingElement(modes=("int8",), act_bits=17, weight_bits=16)
    assert pe.modes == ("int8",)
    Fragment.get(pe, None)


@pytest.mark.parametrize("acc_bits", [32, 18])
def test_int4_pair_products_extremes(acc_bits):
    # Corrected activations at the ends of [-15, 15], weights at the ends of [-8, 7],
    # with garbage above bit 10 and psum_in near both ends of the accumulator.
    lo_acc, hi_acc = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    values_a = (-15, 15, -1, 0)
    values_w = (-8, 7, -1)
    rows, expect = [], []
    for i, (a_lo, a_hi, w_lo, w_hi) in enumerate(
            (a_lo, a_hi, w_lo, w_hi) for a_lo in values_a for a_hi in values_a
            for w_lo in values_w for w_hi in values_w):
        p = (0, hi_acc, lo_acc, -1, 12345)[i % 5]
        act = int4_bus(a_lo, a_hi, garbage=(i * 37) & 0x3F)
        w = int4_weight(w_lo, w_hi)
        rows.append(("int4", act, w, p))
        expect.append(wrap(p + a_lo * w_lo + a_hi * w_hi, acc_bits))
    pe = ProcessingElement(modes=("int8", "int4", "binary"), acc_bits=acc_bits)
    trace = simulate_modes(pe, per_cycle_weights(rows))
    got = [trace[1 + i + 3]["psum_out"] for i in range(len(rows))]
    assert got == expect
    # The widest sums are reached in both directions.
    sums = [a_lo * w_lo + a_hi * w_hi for a_lo in values_a for a_hi in values_a
            for w_lo in values_w for w_hi in values_w]
    assert max(sums) == 240 and min(sums) == -240


def test_int4_all_weight_bytes():
    # Every weight byte against extreme activation pairs (the cross term a_lo·w_hi
    # must never leak into the wanted sum).
    seed = SEEDS[2]
    print(f"seed={seed}")
    rng = random.Random(seed)
    rows, expect = [], []
    for byte in range(256):
        a_lo, a_hi = rng.choice((-15, 15)), rng.choice((-15, 15, rng.randint(-15, 15)))
        w = sext(byte, 8)
        rows.append(("int4", int4_bus(a_lo, a_hi, rng.randint(0, 63)), w, 0))
        expect.append(a_lo * sext(byte, 4) + a_hi * sext(byte >> 4, 4))
    trace = simulate_modes(ProcessingElement(modes=("int8", "int4")), per_cycle_weights(rows))
    assert [trace[1 + i + 3]["psum_out"] for i in range(len(rows))] == expect


def test_binary_popcount_with_valid_mask():
    seed = SEEDS[0]
    print(f"seed={seed}")
    rng = random.Random(seed)
    rows, expect = [], []
    masks = [0xFF, 0x00, 0x01, 0x80, 0x7F, 0x0F] + [rng.randint(0, 255) for _ in range(60)]
    for i, valid in enumerate(masks):
        signs, w = rng.randint(0, 255), rng.randint(-128, 127)
        p = rng.randint(-(1 << 31), (1 << 31) - 1)
        rows.append(("binary", binary_bus(signs, valid), w, p))
        agree = sum(1 for b in range(8) if valid >> b & 1 and (signs >> b & 1) == (w >> b & 1))
        expect.append(wrap(p + 2 * agree, 32))
    # Exact agreement and exact disagreement on all bits.
    rows.append(("binary", binary_bus(0xA5, 0xFF), sext(0xA5, 8), 0))
    expect.append(16)
    rows.append(("binary", binary_bus(0xA5, 0xFF), sext(0x5A, 8), 0))
    expect.append(0)
    rows.append(("binary", binary_bus(0xA5, 0x00), sext(0xA5, 8), 0))
    expect.append(0)
    trace = simulate_modes(ProcessingElement(modes=("int8", "binary")), per_cycle_weights(rows))
    assert [trace[1 + i + 3]["psum_out"] for i in range(len(rows))] == expect


def test_int8_on_the_packed_bus():
    # Bits [0, 9) carry the signed value; bits above are ignored.
    rows, expect = [], []
    for i, (a, w) in enumerate([(-256, 127), (255, -128), (-256, -128), (255, 127), (1, -1),
                                (0, 99), (-1, -1), (100, -7)]):
        rows.append(("int8", int8_bus(a, garbage=(0x7F, 0x55, 0)[i % 3]), w, 0))
        expect.append(a * w)
    for modes in (("int8", "int4"), ("int8", "binary"), ALL_MODES):
        trace = simulate_modes(ProcessingElement(modes=modes), per_cycle_weights(rows))
        assert [trace[1 + i + 3]["psum_out"] for i in range(len(rows))] == expect, modes


def test_mode_switches_every_cycle():
    # One weight and one bus value read in every mode, back to back.
    w = sext(0x9C, 8)                         # int8 -100; int4 (lo, hi) = (-4, -7)
    act = 0xC3 | (0x0F << 8)                  # bits [0, 16) = 0x0FC3
    int8_value = sext(act, 9)                 # 0x1C3 → -61
    int4_lo, int4_hi = sext(act, 5), sext(act >> 5, 5)   # 3, -2
    agree = ~(0xC3 ^ 0x9C) & 0x0F             # valid low nibble: XNOR = 0xA0 → 0 of 4
    expect_by_mode = {"int8": int8_value * -100, "int4": int4_lo * -4 + int4_hi * -7,
                      "binary": 2 * bin(agree).count("1")}
    assert expect_by_mode == {"int8": 6100, "int4": 2, "binary": 0}
    order = ["int8", "int4", "binary", "binary", "int8", "int4", "int8", "binary", "int4"]
    cycles = [mode_idle(shift=1, w_shadow_in=w), mode_idle(act_in=act, mode_in=0, swap_in=1)]
    for mode in order:
        cycles.append(mode_idle(act_in=act, mode_in=CODE[mode]))
    cycles += [mode_idle() for _ in range(3)]
    trace = simulate_modes(ProcessingElement(modes=ALL_MODES), cycles)
    got = [trace[2 + i + 3]["psum_out"] for i in range(len(order))]
    assert got == [expect_by_mode[mode] for mode in order]
    assert [trace[2 + i + 1]["mode_out"] for i in range(len(order))] == \
        [CODE[mode] for mode in order]
    # A second bus value where the binary contribution is not zero.
    act = 0x3C | (0xFF << 8)
    assert contribution("binary", act, w) == 2 * bin(~(0x3C ^ 0x9C) & 0xFF).count("1") == 12
    cycles = [mode_idle(shift=1, w_shadow_in=w), mode_idle(act_in=act, mode_in=2, swap_in=1)]
    cycles += [mode_idle() for _ in range(3)]
    assert simulate_modes(ProcessingElement(modes=ALL_MODES), cycles)[4]["psum_out"] == 12


def random_bus(rng, mode, width):
    """A random lane value of ``mode`` with random bits up to the bus ``width``."""
    garbage = rng.getrandbits(16)
    if mode == "int8":
        bus = int8_bus(rng.randint(-256, 255), garbage)
    elif mode == "int4":
        ends = (-15, 15)
        lo = rng.choice(ends) if rng.random() < 0.3 else rng.randint(-15, 15)
        hi = rng.choice(ends) if rng.random() < 0.3 else rng.randint(-15, 15)
        bus = int4_bus(lo, hi, garbage)
    else:
        bus = garbage
    return bus & ((1 << width) - 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("modes, acc_bits", [(ALL_MODES, 32), (ALL_MODES, 18),
                                             (("int8", "int4"), 32), (("int8", "binary"), 24)],
                         ids=["all-acc32", "all-acc18", "int4-acc32", "binary-acc24"])
def test_random_modes_against_model(seed, modes, acc_bits):
    print(f"seed={seed}")
    rng = random.Random(seed)
    pe = ProcessingElement(modes=modes, acc_bits=acc_bits)
    width = pe.act_in.shape().width
    cycles = []
    for _ in range(200):
        mode = rng.choice(modes)
        cycles.append(mode_idle(act_in=random_bus(rng, mode, width), mode_in=CODE[mode],
                                swap_in=int(rng.random() < 0.3),
                                psum_in=rng.randint(-(1 << (acc_bits - 1)),
                                                    (1 << (acc_bits - 1)) - 1),
                                shift=int(rng.random() < 0.5),
                                w_shadow_in=rng.randint(-128, 127)))
    trace = simulate_modes(pe, cycles)
    model = ModePEModel(acc_bits)
    for t, inputs in enumerate(cycles):
        assert trace[t] == model.outputs(), f"cycle {t}"
        model.edge(inputs)


# -- 2:4 structured sparsity ------------------------------------------------------------

def sparse_weight(value, index):
    """A 2:4 weight register: the int8 value in bits [0, 8), its group index in [8, 10)."""
    return (value & 0xFF) | (index << 8)


def group_bus(values):
    """A 2:4 lane: the 4 corrected activations of the group, 9 bits each."""
    return sum((v & 0x1FF) << (9 * j) for j, v in enumerate(values))


@pytest.mark.parametrize("modes", [("int8",), ALL_MODES])
def test_sparse_bus_and_weight_widths(modes):
    pe = ProcessingElement(modes=modes, sparse=True)
    assert pe.sparse and pe.act_in.shape().width == 36
    assert pe.w_shadow_in.shape().width == 10 and not pe.w_shadow_in.shape().signed
    assert not ProcessingElement(modes=modes).sparse
    with pytest.raises(ValueError, match=r"^sparse must be a boolean, not 1$"):
        ProcessingElement(sparse=1)


def test_sparse_selects_each_index():
    """Each index picks its activation of the group, with the extremes of both operands."""
    pe = ProcessingElement(modes=("int8",), sparse=True)
    acts = [-256, 255, -1, 7]
    cycles, expect = [], []
    for index in range(4):
        for w in (-127, 127, -128, 1):
            cycles += [idle(shift=1, w_shadow_in=sparse_weight(w, index)),
                       idle(act_in=group_bus(acts), mode_in=CODE["int8 2:4"], swap_in=1)]
            cycles += [idle() for _ in range(3)]
            expect.append(acts[index] * w)
    cycles = [dict(c, mode_in=c.get("mode_in", 0)) for c in cycles]
    trace = simulate_modes(pe, cycles)
    assert [trace[5 * i + 4]["psum_out"] for i in range(len(expect))] == expect


def test_sparse_index_ignored_by_dense_int8():
    pe = ProcessingElement(modes=ALL_MODES, sparse=True)
    cycles = [mode_idle(shift=1, w_shadow_in=sparse_weight(-5, 3)),
              mode_idle(act_in=group_bus([100, 1, 2, 3]), mode_in=CODE["int8"], swap_in=1)]
    cycles += [mode_idle() for _ in range(3)]
    assert simulate_modes(pe, cycles)[4]["psum_out"] == -500


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sparse_and_dense_modes_against_model(seed):
    """2:4 rows interleaved with every dense mode, weights and modes changing each cycle."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    acc_bits = 32
    pe = ProcessingElement(modes=ALL_MODES, sparse=True, acc_bits=acc_bits)
    cycles = []
    for _ in range(200):
        mode = rng.choice(list(CODE))
        bus = rng.getrandbits(36) if mode == "int8 2:4" else random_bus(rng, mode, 36)
        cycles.append(mode_idle(act_in=bus, mode_in=CODE[mode],
                                swap_in=int(rng.random() < 0.3),
                                psum_in=rng.randint(-(1 << 31), (1 << 31) - 1),
                                shift=int(rng.random() < 0.5),
                                w_shadow_in=rng.getrandbits(10)))
    trace = simulate_modes(pe, cycles)
    model = ModePEModel(acc_bits)
    for t, inputs in enumerate(cycles):
        assert trace[t] == model.outputs(), f"cycle {t}"
        model.edge(inputs)


# -- bf16 ---------------------------------------------------------------------------------

BF16_MODES = ("int8", "int4", "binary", "bf16")


def bf16_rows_cycles(rows):
    """Cycles applying ``rows`` of (mode, act bus, weight bits, psum_in), two cycles each.

    The first cycle shifts the weight's low byte into the shadow register; the second
    presents the activation with ``swap`` and the high byte on ``w_shadow_in`` (where the
    PE below would show it).  psum_in is placed two cycles after the activation, the
    result read three cycles after it (cycle ``2·i + 4`` for row i).
    """
    cycles = []
    for mode, act, w, _ in rows:
        cycles.append(mode_idle(shift=1, w_shadow_in=sext(w & 0xFF, 8)))
        cycles.append(mode_idle(act_in=act, mode_in=MODE_CODES[mode], swap_in=1,
                                w_shadow_in=sext(w >> 8, 8)))
    cycles += [mode_idle() for _ in range(4)]
    for i, (_, _, _, p) in enumerate(rows):
        cycles[2 * i + 3]["psum_in"] = p
    return cycles


def test_bf16_mac_against_numpy_float32():
    """psum_out = fp32(psum_in + fp32(a·w)) for every special class and random values; a
    bf16 row whose element is not real passes psum_in on; int8 rows in between."""

    seed = SEEDS[1]
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    specials = special_values(BFLOAT16)
    fp32_specials = special_values(FLOAT32)
    pairs = [(a, w) for a in specials for w in specials[::3]]
    pairs += [tuple(map(int, p)) for p in zip(random_bf16(rng, 300, specials=0.1),
                                               random_bf16(rng, 300, specials=0.1))]
    rows, expect = [], []
    for i, (a, w) in enumerate(pairs):
        psum = int(rng.choice(fp32_specials)) if i % 4 == 0 else \
            int(fp32_to_bits(np.float32(rng.standard_normal() * 2.0 ** rng.integers(-8, 8))))
        real = i % 7 != 3
        rows.append(("bf16", a | (int(real) << 16) | (int(rng.integers(0, 2)) << 17), w,
                     sext(psum, 32)))
        if real:
            with np.errstate(all="ignore"):
                total = np.uint32(psum).view(np.float32) + bf16_product_fp32(
                    np.array([a], np.uint16), np.array([w], np.uint16))[0]
            expect.append(int(fp32_to_bits(np.float32(total))))
        else:
            expect.append(psum)
        if i % 11 == 5:                                          # an int8 row in between
            rows.append(("int8", int8_bus(-77, garbage=0x55), 0x1234, 1000))
            expect.append(1000 + (-77) * sext(0x34, 8))
    trace = simulate_modes(ProcessingElement(modes=BF16_MODES), bf16_rows_cycles(rows))
    got = [trace[2 * i + 4]["psum_out"] & 0xFFFFFFFF for i in range(len(rows))]
    assert got == [e & 0xFFFFFFFF for e in expect]


def test_bf16_bus_width_and_mode_bits():
    pe = ProcessingElement(modes=("int8", "bf16"))
    assert len(pe.act_in) == 17 and len(pe.mode_in) == 3
    assert len(ProcessingElement(modes=("int8", "binary")).mode_in) == 2
    assert len(ProcessingElement(modes=("int8",), sparse=True).mode_in) == 3
