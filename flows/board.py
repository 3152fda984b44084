"""A bitstream for a real board: the NPU with an on-chip host memory and a self-test.

The board top (:class:`BoardTop`) cannot bring the NPU's AXI ports out to pins, so it
wraps the NPU in :func:`NpuSelfTest`: the NPU's AXI4 manager port is served by an
on-chip block RAM (:class:`~npugen.hw.axi_ram.AxiRam`) preloaded with a GEMM program and
its data from the golden compiler (:func:`board_program`: a random ``M×K×N`` INT8 GEMM,
``numpy`` generator seeded with ``seed``), and a sequencer drives the register interface
(AXI4-Lite) as a host would: READ_BASE, READ_LIMIT, WRITE_BASE, WRITE_LIMIT, PROG_ADDR,
CTRL.START, then it polls STATUS until DONE or ERROR.  It then reads the whole memory
back through a second port, folds it into a 32-bit signature (:func:`memory_signature`)
and compares it with the signature of the memory the golden NPU model leaves after the
same program (:func:`expected_signature`, computed at build time and baked in as a
constant): the outputs must be right and nothing else may have changed.

What the ULX3S top exposes:

=================  ======================================================================
``clk25``          the 25 MHz board oscillator clocks the whole design (``sync`` domain)
``button_fire 0``  (B1) starts the self-test again once a run is over; it also starts
                   once after configuration
``led 0``          pass: the last run's memory signature matched
``led 1``          fail: the last run finished with a different signature
``led 2``          the NPU reported an error (STATUS.ERROR)
``led 3``          a run is in progress
``led 4-7``        bits 0-3 of the signature of the last run (all runs give the same)
=================  ======================================================================

:func:`build_board` produces ``<name>.bit`` (and ``.svf``) with the same tools and
completion checks as :mod:`npugen.flows.synth`; the platform files (RTLIL, LPF pin
constraints) come from ``amaranth-boards``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from npugen.golden.config import NPUConfig

__all__ = ["BOARDS", "DEFAULT_GEMM", "DATA_SEED", "board_program", "memory_depth",
           "image_words", "memory_signature", "expected_signature", "NpuSelfTest",
           "BoardTop", "board_platform", "board_plan", "build_board"]

#: board name → {variant: (amaranth-boards platform class name, target name)}
BOARDS = {
    "ulx3s": {
        "85f": ("ULX3S_85F_Platform", "ecp5-85f"),
        "25f": ("ULX3S_25F_Platform", "ecp5-25f"),
    },
}

#: ``(M, K, N)`` of the self-test GEMM unless chosen otherwise.
DEFAULT_GEMM = (8, 16, 8)
#: Seed of the generator of the self-test data unless chosen otherwise.
DATA_SEED = 1
_MASK32 = 0xFFFFFFFF


def board_program(config: NPUConfig, *, gemm=DEFAULT_GEMM, seed: int = DATA_SEED):
    """The self-test program: a random INT8 GEMM ``gemm = (M, K, N)`` compiled at address 0."""
    import numpy as np

    from npugen.golden.workloads import gemm_program

    NPUConfig.check(config)
    if not isinstance(gemm, (tuple, list)) or len(gemm) != 3:
        raise ValueError(f"gemm must be (M, K, N), not {gemm!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    m, k, n = gemm
    return gemm_program(config, np.random.default_rng(seed), m=m, k=k, n=n, base=0)


def memory_depth(program, data_width: int) -> int:
    """Words of the board memory: the image rounded up to a power of two (at least 2)."""
    words = -(-(program.base + program.size) // (data_width // 8))
    return max(2, 1 << (words - 1).bit_length())


def image_words(data: bytes, data_width: int, depth: int) -> list[int]:
    """``data`` (from byte address 0) as ``depth`` little-endian words of ``data_width``."""
    step = data_width // 8
    data = bytes(data).ljust(depth * step, b"\0")
    return [int.from_bytes(data[i * step:(i + 1) * step], "little") for i in range(depth)]


def memory_signature(words, data_width: int) -> int:
    """Fold memory words into 32 bits: ``s = rotl(s, 1) ^ (XOR of the word's 32-bit parts)``."""
    signature = 0
    for word in words:
        fold = 0
        for i in range(data_width // 32):
            fold ^= (word >> (32 * i)) & _MASK32
        signature = (((signature << 1) | (signature >> 31)) & _MASK32) ^ fold
    return signature


def _image(program):
    """The memory image of ``program`` from byte address 0 (board programs start there)."""
    return bytes(program.memory().read(0, program.base + program.size))


def expected_signature(config: NPUConfig, program) -> int:
    """The signature of the memory the golden NPU model leaves after ``program``."""
    result, memory = program.run()
    if result.status != "done":
        raise ValueError(f"the self-test program does not complete on the golden model: "
                         f"{result}")
    depth = memory_depth(program, config.axi_data_bits)
    data = bytes(memory.read(program.base, program.size))
    return memory_signature(image_words(data, config.axi_data_bits, depth),
                            config.axi_data_bits)


def NpuSelfTest(config: NPUConfig, *, gemm=DEFAULT_GEMM, seed: int = DATA_SEED,
                expected: int | None = None):
    """The NPU, its preloaded memory and the host sequencer (see the module documentation).

    Ports: ``start`` (a pulse starts a run when none is in progress), ``running``,
    ``done``, ``passed``, ``failed``, ``npu_error`` (STATUS.ERROR of the run) and
    ``result_signature``.  ``expected`` overrides the predicted signature (tests use it
    to check the comparison).
    """
    from amaranth.hdl import Cat, Module, Signal, Value
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from npugen.golden.regmap import register_map
    from npugen.hw.axi_ram import AxiRam
    from npugen.hw.npu import NPU

    program = board_program(config, gemm=gemm, seed=seed)
    width = config.axi_data_bits
    depth = memory_depth(program, width)
    init = image_words(_image(program), width, depth)
    predicted = expected_signature(config, program) if expected is None else expected
    rmap = register_map(config)
    writes = [(rmap["READ_BASE"].offset, program.read_window[0]),
              (rmap["READ_LIMIT"].offset, program.read_window[1]),
              (rmap["WRITE_BASE"].offset, program.write_window[0]),
              (rmap["WRITE_LIMIT"].offset, program.write_window[1]),
              (rmap["PROG_ADDR"].offset, program.prog_addr),
              (rmap["CTRL"].offset, 1 << rmap["CTRL"].field("START").lsb)]
    status = rmap["STATUS"]
    done_bit, error_bit = status.field("DONE").lsb, status.field("ERROR").lsb

    class _NpuSelfTest(wiring.Component):
        def __init__(self):
            self.program = program
            self.depth = depth
            self.expected = predicted
            super().__init__({
                "start": In(1), "running": Out(1), "done": Out(1), "passed": Out(1),
                "failed": Out(1), "npu_error": Out(1), "result_signature": Out(32),
            })

        def elaborate(self, platform):
            m = Module()
            m.submodules.npu = npu = NPU(config)
            m.submodules.ram = ram = AxiRam(data_width=width, depth=depth, init=init)
            wiring.connect(m, npu.m_axi, ram.bus)
            host = npu.s_axil

            step = Signal(range(len(writes)))
            aw_done, w_done = Signal(), Signal()
            word = Signal(range(depth))
            signature = self.result_signature
            m.d.comb += host.wstrb.eq(0b1111)
            with m.Switch(step):
                for i, (offset, value) in enumerate(writes):
                    with m.Case(i):
                        m.d.comb += [host.awaddr.eq(offset), host.wdata.eq(value)]
            m.d.comb += [host.araddr.eq(status.offset), ram.scan_addr.eq(word)]
            parts = [Value.cast(ram.scan_data)[32 * i:32 * (i + 1)] for i in range(width // 32)]
            fold = parts[0]
            for part in parts[1:]:
                fold = fold ^ part
            next_signature = Cat(signature[31], signature[:31]) ^ fold

            with m.FSM(name="host"):
                with m.State("IDLE"):
                    with m.If(self.start):
                        m.d.sync += [step.eq(0), aw_done.eq(0), w_done.eq(0), word.eq(0),
                                     signature.eq(0), self.running.eq(1), self.done.eq(0),
                                     self.passed.eq(0), self.failed.eq(0),
                                     self.npu_error.eq(0)]
                        m.next = "WRITE"
                with m.State("WRITE"):
                    m.d.comb += [host.awvalid.eq(~aw_done), host.wvalid.eq(~w_done)]
                    aw_ok = aw_done | host.awready
                    w_ok = w_done | host.wready
                    m.d.sync += [aw_done.eq(aw_ok), w_done.eq(w_ok)]
                    with m.If(aw_ok & w_ok):
                        m.next = "RESPONSE"
                with m.State("RESPONSE"):
                    m.d.comb += host.bready.eq(1)
                    with m.If(host.bvalid):
                        m.d.sync += [aw_done.eq(0), w_done.eq(0), step.eq(step + 1)]
                        m.next = "WRITE"
                        with m.If(step == len(writes) - 1):
                            m.next = "POLL"
                with m.State("POLL"):
                    m.d.comb += host.arvalid.eq(1)
                    with m.If(host.arready):
                        m.next = "STATUS"
                with m.State("STATUS"):
                    m.d.comb += host.rready.eq(1)
                    with m.If(host.rvalid):
                        m.next = "POLL"
                        with m.If(host.rdata[done_bit] | host.rdata[error_bit]):
                            m.d.sync += self.npu_error.eq(host.rdata[error_bit])
                            m.next = "SCAN_ADDR"
                with m.State("SCAN_ADDR"):
                    m.next = "SCAN_DATA"
                with m.State("SCAN_DATA"):
                    m.d.sync += [signature.eq(next_signature), word.eq(word + 1)]
                    m.next = "SCAN_ADDR"
                    with m.If(word == depth - 1):
                        m.d.sync += [self.running.eq(0), self.done.eq(1),
                                     self.passed.eq(next_signature == self.expected),
                                     self.failed.eq(next_signature != self.expected)]
                        m.next = "IDLE"
            return m

    return _NpuSelfTest()


def BoardTop(config: NPUConfig, *, gemm=DEFAULT_GEMM, seed: int = DATA_SEED):
    """The ULX3S top: :func:`NpuSelfTest` on ``clk25``, started after configuration and by
    ``button_fire 0``."""
    from amaranth.hdl import Cat, Elaboratable, Module, Signal
    from amaranth.lib import io

    class _BoardTop(Elaboratable):
        def __init__(self):
            self.selftest = NpuSelfTest(config, gemm=gemm, seed=seed)

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
                leds[2].o.eq(bist.npu_error),
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


def board_plan(config: NPUConfig, *, board="ulx3s", variant="85f", gemm=DEFAULT_GEMM,
               seed=DATA_SEED, name="npu_board"):
    """``(build plan, target name, top)``: the platform files, nothing run yet."""
    platform, target = board_platform(board, variant)
    top = BoardTop(config, gemm=gemm, seed=seed)
    plan = platform.build(top, name=name, do_build=False)
    return plan, target, top


def build_board(config: NPUConfig, outdir, *, board="ulx3s", variant="85f",
                gemm=DEFAULT_GEMM, data_seed=DATA_SEED, seed=1, name="npu_board",
                timeout=None, log=None) -> dict:
    """Synthesize, place, route and pack the board top; returns a JSON-able record."""
    from npugen.flows.synth import (SynthError, area_from_cells, find_tools, get_target,
                                    run_nextpnr, run_yosys, _run)

    say = log or (lambda _line: None)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    plan, target_name, top = board_plan(config, board=board, variant=variant, gemm=gemm,
                                        seed=data_seed, name=name)
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
        "gemm": list(gemm), "data_seed": data_seed, "memory_words": top.selftest.depth,
        "expected_signature": f"0x{top.selftest.expected:08x}",
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
