"""A bitstream for a real board: the GEMM core with a built-in self-test on the ULX3S.

The board top (:class:`BoardTop`) cannot bring the core's streams (hundreds of bits) out
to pins, so it wraps the core in :class:`SelfTest`: a sequencer that feeds the core
``jobs`` pseudo-random tile operations (xorshift32 weight and activation rows, ``raw``
requantization, so the results are the exact int32 sums), folds every result row into a
32-bit signature and compares it with the signature the golden arithmetic predicts
(:func:`expected_signature`, computed at build time and baked in as a constant).

What the ULX3S top exposes:

=============  ==========================================================================
``clk25``      the 25 MHz board oscillator clocks the whole design (``sync`` domain)
``button_fire 0``  (B1) restarts the self-test; it also starts once after configuration
``led 0``      pass: the last run's signature matched
``led 1``      fail: the last run finished with a different signature
``led 2``      the core reported an error (``GemmCore.error`` not ``NONE``)
``led 3``      a run is in progress
``led 4-7``    bits 0-3 of the signature of the last run (all runs give the same)
=============  ==========================================================================

:func:`build_board` produces ``<name>.bit`` (and ``.svf``) with the same tools and
completion checks as :mod:`npugen.flows.synth`; the platform files (RTLIL, LPF pin
constraints) come from ``amaranth-boards``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from npugen.golden.config import NPUConfig

__all__ = ["BOARDS", "SelfTest", "BoardTop", "expected_signature", "xorshift32",
           "lane_bytes", "board_platform", "board_plan", "build_board", "ZERO_POINT"]

#: board name → {variant: (amaranth-boards platform class name, target name)}
BOARDS = {
    "ulx3s": {
        "85f": ("ULX3S_85F_Platform", "ecp5-85f"),
        "25f": ("ULX3S_25F_Platform", "ecp5-25f"),
    },
}

#: Activation zero point of the self-test jobs.
ZERO_POINT = 3
#: Initial states of the activation and weight generators.
ACT_SEED = 0x2545F491
WEIGHT_SEED = 0x9E3779B9
_MASK32 = 0xFFFFFFFF


def xorshift32(x: int) -> int:
    """One step of Marsaglia's xorshift32 (13, 17, 5)."""
    x ^= (x << 13) & _MASK32
    x ^= x >> 17
    x ^= (x << 5) & _MASK32
    return x & _MASK32


def lane_bytes(state: int, lanes: int) -> list[int]:
    """The signed int8 lanes a generator state gives: byte ``i % 4``, XOR ``0x5A·(i//4)``."""
    values = []
    for i in range(lanes):
        byte = ((state >> (8 * (i % 4))) ^ (0x5A * (i // 4))) & 0xFF
        values.append(byte - 256 if byte & 0x80 else byte)
    return values


def _m_rows(config: NPUConfig) -> int:
    return min(config.rows, config.acc_depth)


def expected_signature(config: NPUConfig, jobs: int) -> int:
    """The signature :class:`SelfTest` must end with, from plain integer arithmetic."""
    import numpy as np

    R, C, M = config.rows, config.cols, _m_rows(config)
    act, weight, signature = ACT_SEED, WEIGHT_SEED, 0
    for _job in range(jobs):
        w_rows = []
        for _k in range(R):
            weight = xorshift32(weight)
            w_rows.append(lane_bytes(weight, C))
        a_rows = []
        for _m in range(M):
            act = xorshift32(act)
            a_rows.append(lane_bytes(act, R))
        acc = (np.array(a_rows, dtype=np.int64) - ZERO_POINT) @ np.array(w_rows, dtype=np.int64)
        for row in acc:
            fold = 0
            for value in row:
                fold ^= int(value) & _MASK32
            signature = (((signature << 1) | (signature >> 31)) & _MASK32) ^ fold
    return signature


def SelfTest(config: NPUConfig, *, jobs: int = 16, expected: int | None = None):
    """The GEMM core driven by a pseudo-random job sequencer with a result signature.

    Ports: ``start`` (a pulse starts a run), ``running``, ``done``, ``passed``,
    ``failed``, ``error`` (the core's error code) and ``result_signature``.  ``expected``
    overrides the predicted signature (tests use it to check the comparison).
    """
    from amaranth.hdl import Cat, Module, Signal, Value
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from npugen.hw.gemm_core import CoreError, GemmCore

    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 65535:
        raise ValueError(f"jobs must be an integer in 1..65535, not {jobs!r}")
    NPUConfig.check(config)

    class _SelfTest(wiring.Component):
        def __init__(self):
            self._config = config
            self._jobs = jobs
            self._expected = expected_signature(config, jobs) if expected is None else expected
            super().__init__({
                "start": In(1), "running": Out(1), "done": Out(1), "passed": Out(1),
                "failed": Out(1), "error": Out(CoreError), "result_signature": Out(32),
            })

        @property
        def expected(self):
            return self._expected

        @staticmethod
        def _step(m, state):
            x1 = state ^ (state << 13)[:32]
            x2 = x1 ^ (x1 >> 17)
            return x2 ^ (x2 << 5)[:32]

        def elaborate(self, platform):
            m = Module()
            cfg = self._config
            R, C, M = cfg.rows, cfg.cols, _m_rows(cfg)
            m.submodules.core = core = GemmCore(cfg)

            n_cmd = Signal(range(jobs + 1))
            n_quant = Signal(range(jobs + 1))
            n_weight = Signal(range(jobs * R + 1))
            n_act = Signal(range(jobs * M + 1))
            n_result = Signal(range(jobs * M + 1))
            act_state = Signal(32, init=ACT_SEED)
            weight_state = Signal(32, init=WEIGHT_SEED)
            act_next = Signal(32)
            weight_next = Signal(32)
            m.d.comb += [act_next.eq(self._step(m, act_state)),
                         weight_next.eq(self._step(m, weight_state))]
            m.d.comb += self.error.eq(core.error)

            with m.If(self.start):
                m.d.sync += [
                    n_cmd.eq(0), n_quant.eq(0), n_weight.eq(0), n_act.eq(0), n_result.eq(0),
                    act_state.eq(ACT_SEED), weight_state.eq(WEIGHT_SEED),
                    self.result_signature.eq(0), self.running.eq(1), self.done.eq(0),
                    self.passed.eq(0), self.failed.eq(0),
                ]

            go = self.running & ~self.start
            cmd = core.cmd.payload
            m.d.comb += [
                core.cmd.valid.eq(go & (n_cmd < jobs)),
                cmd.m_rows.eq(M), cmd.first.eq(1), cmd.last.eq(1),
                cmd.a_zero_point.eq(ZERO_POINT),
            ]
            if "k_valid" in cmd.shape().members:
                m.d.comb += cmd.k_valid.eq(R)
            quant = core.quant.payload
            m.d.comb += [
                core.quant.valid.eq(go & (n_quant < jobs)),
                quant.raw.eq(1), quant.out_min.eq(-128), quant.out_max.eq(127),
            ]
            m.d.comb += core.weight.valid.eq(go & (n_weight < jobs * R))
            # With 2:4 built the weight row is a value/index struct; dense tiles use values.
            w_lanes = core.weight.payload.value if cfg.sparse_2_4 else core.weight.payload
            for c in range(C):
                byte = (weight_next.word_select(c % 4, 8) ^ ((0x5A * (c // 4)) & 0xFF))
                m.d.comb += w_lanes[c].eq(byte.as_signed())
            m.d.comb += core.act.valid.eq(go & (n_act < jobs * M))
            for r in range(R):
                byte = (act_next.word_select(r % 4, 8) ^ ((0x5A * (r // 4)) & 0xFF))
                m.d.comb += core.act.payload[r].eq(byte.as_signed())
            m.d.comb += core.result.ready.eq(1)

            with m.If(~self.start):
                with m.If(core.cmd.valid & core.cmd.ready):
                    m.d.sync += n_cmd.eq(n_cmd + 1)
                with m.If(core.quant.valid & core.quant.ready):
                    m.d.sync += n_quant.eq(n_quant + 1)
                with m.If(core.weight.valid & core.weight.ready):
                    m.d.sync += [n_weight.eq(n_weight + 1), weight_state.eq(weight_next)]
                with m.If(core.act.valid & core.act.ready):
                    m.d.sync += [n_act.eq(n_act + 1), act_state.eq(act_next)]
                fold = Signal(32)
                lanes = [Value.cast(core.result.payload[c])[:32] for c in range(C)]
                value = lanes[0]
                for lane in lanes[1:]:
                    value = value ^ lane
                m.d.comb += fold.eq(value)
                next_signature = Cat(self.result_signature[31], self.result_signature[:31]) ^ fold
                with m.If(core.result.valid & self.running):
                    m.d.sync += [self.result_signature.eq(next_signature), n_result.eq(n_result + 1)]
                    with m.If(n_result == jobs * M - 1):
                        m.d.sync += [
                            self.running.eq(0), self.done.eq(1),
                            self.passed.eq(next_signature == self._expected),
                            self.failed.eq(next_signature != self._expected),
                        ]
            return m

    return _SelfTest()


def BoardTop(config: NPUConfig, *, jobs: int = 16):
    """The ULX3S top: :func:`SelfTest` on ``clk25``, started by reset or ``button_fire 0``."""
    from amaranth.hdl import Cat, Elaboratable, Module, Signal
    from amaranth.lib import io

    from npugen.hw.gemm_core import CoreError

    class _BoardTop(Elaboratable):
        def __init__(self):
            self.selftest = SelfTest(config, jobs=jobs)

        def elaborate(self, platform):
            m = Module()
            m.submodules.selftest = bist = self.selftest
            leds = []
            for i in range(8):
                m.submodules[f"led_{i}"] = led = io.Buffer("o", platform.request("led", i,
                                                                                  dir="-"))
                leds.append(led)
            m.submodules.button = button = io.Buffer("i", platform.request("button_fire", 0,
                                                                           dir="-"))
            sync_button = Signal(3)
            started = Signal()
            m.d.sync += [sync_button.eq(Cat(button.i, sync_button[:2])), started.eq(1)]
            pressed = sync_button[1] & ~sync_button[2]
            m.d.comb += bist.start.eq(~started | pressed)
            m.d.comb += [
                leds[0].o.eq(bist.passed),
                leds[1].o.eq(bist.failed),
                leds[2].o.eq(bist.error != CoreError.NONE),
                leds[3].o.eq(bist.running),
            ]
            for i in range(4):
                m.d.comb += leds[4 + i].o.eq(bist.result_signature[i] & bist.done)
            return m

    return _BoardTop()


# -- building -------------------------------------------------------------------------------

def board_platform(board: str, variant: str):
    """The amaranth-boards platform and the synthesis target of ``board``/``variant``."""
    if board not in BOARDS:
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {board!r}")
    if variant not in BOARDS[board]:
        raise ValueError(f"variant of {board} must be one of {', '.join(BOARDS[board])}, "
                         f"not {variant!r}")
    class_name, target = BOARDS[board][variant]
    try:
        import importlib
        module = importlib.import_module(f"amaranth_boards.{board}")
    except ImportError as e:
        raise RuntimeError(f"amaranth-boards is needed for board builds "
                           f"(pip install 'npugen[fpga]'): {e}") from None
    return getattr(module, class_name)(), target


def board_plan(config: NPUConfig, *, board="ulx3s", variant="85f", jobs=16,
               name="npu_board"):
    """``(build plan, target name, top)``: the platform files, nothing run yet."""
    platform, target = board_platform(board, variant)
    top = BoardTop(config, jobs=jobs)
    plan = platform.build(top, name=name, do_build=False)
    return plan, target, top


def build_board(config: NPUConfig, outdir, *, board="ulx3s", variant="85f", jobs=16,
                seed=1, name="npu_board", timeout=None, log=None) -> dict:
    """Synthesize, place, route and pack the board top; returns a JSON-able record."""
    from npugen.flows.synth import (SynthError, area_from_cells, find_tools, get_target,
                                    run_nextpnr, run_yosys, _run)

    say = log or (lambda _line: None)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    plan, target_name, top = board_plan(config, board=board, variant=variant, jobs=jobs,
                                        name=name)
    target = get_target(target_name)
    tools = find_tools(target, pnr=True, pack=True)
    for filename in (f"{name}.il", f"{name}.lpf"):
        content = plan.files[filename]
        (outdir / filename).write_bytes(content if isinstance(content, bytes)
                                        else content.encode("utf-8"))
    say(f"{board}-{variant}: {name}.il and {name}.lpf written to {outdir}; running yosys")
    synth = run_yosys(tools["yosys"], target, outdir, [outdir / f"{name}.il"], name,
                      frontend="rtlil", timeout=timeout)
    area = area_from_cells(synth["cells"], target.fam)
    say(f"{board}-{variant}: {area['luts']} LUT4, {area['ffs']} FF, {area['dsps']} DSP, "
        f"{area['brams']} BRAM; running {target.fam.nextpnr}")
    config_file = outdir / f"{name}.config"
    config_file.unlink(missing_ok=True)
    pnr = run_nextpnr(tools[target.fam.nextpnr], target, outdir, synth["netlist"], seed=seed,
                      freq_mhz=25.0, ooc=False, constraints=outdir / f"{name}.lpf",
                      bitstream_cfg=config_file, timeout=timeout)
    bitstream = outdir / f"{name}.bit"
    bitstream.unlink(missing_ok=True)
    pack_log = outdir / "ecppack.log"
    started = time.perf_counter()
    _run([*tools["ecppack"].command, "--input", config_file.name, "--bit", bitstream.name,
          "--svf", f"{name}.svf"], pack_log, timeout=timeout, what="ecppack", cwd=outdir)
    if not bitstream.is_file() or bitstream.stat().st_size == 0:
        raise SynthError(f"ecppack wrote no bitstream {bitstream} (log: {pack_log}.out)")
    record = {
        "board": board, "variant": variant, "target": target.name,
        "config": config.to_dict(), "config_hash": config.config_hash(),
        "self_test_jobs": jobs, "expected_signature": f"0x{top.selftest.expected:08x}",
        **area, "fmax_mhz": pnr["fmax_mhz"], "fmax_by_clock": pnr["fmax_by_clock"],
        "clock_mhz": 25.0, "timing_met": pnr["fmax_mhz"] is not None and pnr["fmax_mhz"] >= 25.0,
        "pnr_utilization": pnr["utilization"], "seed": seed,
        "bitstream": str(bitstream), "bitstream_bytes": bitstream.stat().st_size,
        "tool_versions": {k: t.version for k, t in tools.items()},
        "seconds": {"yosys": round(synth["seconds"], 2), "nextpnr": pnr["seconds"],
                    "ecppack": round(time.perf_counter() - started, 2)},
    }
    (outdir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
