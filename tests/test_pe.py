# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.pe.ProcessingElement`.

Cycle convention of every testbench here: in cycle ``t`` the inputs are set, the
(registered) outputs are read, then ``await ctx.tick()`` moves to cycle ``t + 1``.
"""

import random

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

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


def simulate(dut, cycles):
    """Apply one input dict per cycle; return the outputs read in each cycle."""
    trace = []

    async def testbench(ctx):
        for inputs in cycles:
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            trace.append({name: ctx.get(getattr(dut, name)) for name in OUTPUTS})
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return trace


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
