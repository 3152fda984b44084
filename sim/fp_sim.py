"""Run floating-point units on Verilator, many lanes at once, and collect their results.

The host side of :mod:`npugen.sim.tb_fp_units`.  :class:`FloatLanes` is a test wrapper
generated in Amaranth: ``lanes`` copies of a multiplier or adder per *bank* (a
configuration: subnormal policy, multiplier kind, latency), every bank fed from the same
wide operand words ``a`` and ``b`` (lane ``i`` in bits ``[i·stride, i·stride + width)``).
:func:`run_lanes` builds (or reuses) the model, writes the operands and the expected
results of every bank to a job file, runs the cocotb scoreboard and returns what each
bank produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.floating import FloatFormat, pattern_values, random_operands, special_values
from npugen.hw.fp_adder import FloatAdder
from npugen.hw.fp_multiplier import FloatMultiplier

from . import runner

__all__ = ["TOPLEVEL", "Bank", "FloatLanes", "lane_stride", "build_lanes", "run_lanes",
           "pack_words", "unpack_words", "operand_pairs", "lanes_verilog"]

TOPLEVEL = "npu_fp_lanes"
OPS = ("mul", "add")


@dataclass(frozen=True)
class Bank:
    """One configuration of the unit under test, replicated over every lane."""
    name: str
    subnormals: str = "ieee"
    multiplier: str = "dsp"           # ignored by the adder
    latency: int = 4


def lane_stride(fmt: FloatFormat) -> int:
    """Bits per lane in the wide words: the format width rounded up to 8, 16 or 32."""
    for stride in (8, 16, 32, 64):
        if fmt.width <= stride:
            return stride
    raise ValueError(f"{fmt} is wider than 64 bits")


class FloatLanes(wiring.Component):
    """``lanes`` units per bank sharing the operand words; one result word per bank.

    Ports: ``a``, ``b`` (``lanes × stride`` bits), ``valid``; per bank ``<name>_y`` and
    ``<name>_valid`` (the valid of lane 0; all lanes of a bank are identical pipelines).
    """

    def __init__(self, op: str, fmt: FloatFormat, lanes: int, banks: tuple[Bank, ...]):
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {op!r}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if not banks or len({b.name for b in banks}) != len(banks):
            raise ValueError("banks must be a non-empty sequence with distinct names")
        self._op, self._fmt, self._lanes, self._banks = op, fmt, lanes, tuple(banks)
        self._stride = lane_stride(fmt)
        members = {"a": In(lanes * self._stride), "b": In(lanes * self._stride), "valid": In(1)}
        for bank in banks:
            members[f"{bank.name}_y"] = Out(lanes * self._stride)
            members[f"{bank.name}_valid"] = Out(1)
        super().__init__(members)

    def _unit(self, bank):
        if self._op == "mul":
            return FloatMultiplier(self._fmt, latency=bank.latency, subnormals=bank.subnormals,
                                   multiplier=bank.multiplier)
        return FloatAdder(self._fmt, latency=bank.latency, subnormals=bank.subnormals)

    def elaborate(self, platform):
        m = Module()
        width, stride = self._fmt.width, self._stride
        for bank in self._banks:
            y = getattr(self, f"{bank.name}_y")
            for lane in range(self._lanes):
                unit = self._unit(bank)
                m.submodules[f"{bank.name}_{lane}"] = unit
                lo = lane * stride
                m.d.comb += [
                    unit.operands.payload.a.eq(self.a[lo:lo + width]),
                    unit.operands.payload.b.eq(self.b[lo:lo + width]),
                    unit.operands.valid.eq(self.valid),
                    y[lo:lo + width].eq(unit.result.payload),
                ]
                if lane == 0:
                    m.d.comb += getattr(self, f"{bank.name}_valid").eq(unit.result.valid)
        return m


def _describe(op, fmt, lanes, banks):
    return {"op": op, "exp_bits": fmt.exp_bits, "man_bits": fmt.man_bits, "lanes": lanes,
            "banks": [vars(b) for b in banks]}


def _generator_digest() -> str:
    """Digest of everything the wrapper's Verilog depends on besides its configuration."""
    import amaranth

    import npugen.golden.floating
    import npugen.hw.float_format
    import npugen.hw.fp_adder
    import npugen.hw.fp_multiplier
    import npugen.hw.fp_pipeline
    digest = hashlib.sha256(amaranth.__version__.encode())
    for module in (npugen.golden.floating, npugen.hw.float_format, npugen.hw.fp_pipeline,
                   npugen.hw.fp_multiplier, npugen.hw.fp_adder, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def lanes_verilog(op: str, fmt: FloatFormat, banks, *, lanes: int = 64) -> tuple[str, str]:
    """``(key, Verilog text)`` of a :class:`FloatLanes` configuration.

    Generating a wrapper with dozens of units takes seconds, so the text is kept in the
    build cache under the configuration and a digest of the generator sources.
    """
    banks = tuple(banks)
    description = json.dumps(_describe(op, fmt, lanes, banks), sort_keys=True)
    key = f"{op}-{fmt}-{hashlib.sha256(description.encode()).hexdigest()[:12]}"
    cached = runner.cache_root() / "fp-verilog" / f"{key}-{_generator_digest()}.v"
    try:
        return key, cached.read_text()
    except OSError:
        pass
    text = verilog.convert(FloatLanes(op, fmt, lanes, banks), name=TOPLEVEL, emit_src=False)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, cached)
    for stale in cached.parent.glob(f"{key}-*.v"):   # from older generator sources
        if stale != cached:
            stale.unlink(missing_ok=True)
    return key, text


def build_lanes(op: str, fmt: FloatFormat, banks, *, lanes: int = 64) -> Path:
    """Build (or reuse) the Verilator model of a :class:`FloatLanes` configuration."""
    key, text = lanes_verilog(op, fmt, banks, lanes=lanes)
    return runner.build(text, TOPLEVEL, key)


def pack_words(values: np.ndarray, lanes: int, stride: int) -> list[int]:
    """Lane values (a multiple of ``lanes`` long) → one integer per cycle, lane 0 lowest."""
    dtype = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}[stride]
    raw = np.ascontiguousarray(values, dtype=np.uint64).astype(dtype).reshape(-1, lanes).tobytes()
    step = lanes * stride // 8
    return [int.from_bytes(raw[i:i + step], "little") for i in range(0, len(raw), step)]


def unpack_words(words, lanes: int, stride: int) -> np.ndarray:
    """Inverse of :func:`pack_words`."""
    dtype = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}[stride]
    step = lanes * stride // 8
    raw = b"".join(int(w).to_bytes(step, "little") for w in words)
    return np.frombuffer(raw, dtype=dtype).astype(np.uint64)


def operand_pairs(fmt: FloatFormat, op: str, *, seed: int, random_pairs: int):
    """Operand pairs for a regression: every special value against every other, every
    TestFloat-style pattern against every other, then ``random_pairs`` random pairs.

    Returns ``(a, b, counts)`` with the number of pairs of each kind in ``counts``.
    """
    specials = np.array(special_values(fmt), dtype=np.uint64)
    patterns = np.array(pattern_values(fmt), dtype=np.uint64)
    ra, rb = random_operands(fmt, random_pairs, np.random.default_rng(seed), op=op)
    a = np.concatenate([np.repeat(specials, len(specials)), np.repeat(patterns, len(patterns)),
                        ra.astype(np.uint64)])
    b = np.concatenate([np.tile(specials, len(specials)), np.tile(patterns, len(patterns)),
                        rb.astype(np.uint64)])
    counts = {"special": len(specials) ** 2, "pattern": len(patterns) ** 2, "random": random_pairs}
    return a, b, counts


@dataclass
class LaneRun:
    """What one simulation produced: per bank the results, in operand order."""
    outputs: dict[str, np.ndarray]
    cycles: int
    work_dir: Path


def run_lanes(op: str, fmt: FloatFormat, banks, a, b, expected: dict[str, np.ndarray], *,
              seed: int, lanes: int = 64, work_dir: Path | None = None) -> LaneRun:
    """Stream the pairs ``(a[i], b[i])`` through every bank and check the results.

    ``expected`` maps each bank name to its golden results.  The cocotb scoreboard
    fails the run on any mismatch (the first ones are in ``sim.log``); the results are
    returned either way when the simulation got that far, so callers can report them.
    """
    banks = tuple(banks)
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    count = len(a)
    pad = (-count) % lanes
    pad_a = np.concatenate([a, np.zeros(pad, np.uint64)])
    pad_b = np.concatenate([b, np.zeros(pad, np.uint64)])
    build_dir = build_lanes(op, fmt, banks, lanes=lanes)
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="fp-", dir=build_dir))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job, result = work_dir / "job.npz", work_dir / "result.npz"
    arrays = {"a": pad_a, "b": pad_b}
    for bank in banks:
        want = np.asarray(expected[bank.name], dtype=np.uint64)
        # Padding lanes carry (+0, +0): +0 for both operations and both policies.
        arrays[f"expected_{bank.name}"] = np.concatenate([want, np.zeros(pad, np.uint64)])
    meta = {**_describe(op, fmt, lanes, banks), "stride": lane_stride(fmt), "seed": seed,
            "count": count}
    np.savez(job, meta=np.array(json.dumps(meta)), **arrays)
    result.unlink(missing_ok=True)
    failure = None
    try:
        runner.run(build_dir, TOPLEVEL, "npugen.sim.tb_fp_units",
                   env={"NPUGEN_JOB": str(job), "NPUGEN_RESULT": str(result)},
                   seed=seed, test_dir=work_dir)
    except runner.SimulationFailed as e:
        failure = e
    if not result.exists():
        raise failure or runner.SimulationFailed(f"no results in {work_dir}")
    with np.load(result) as data:
        outputs = {bank.name: data[bank.name][:count] for bank in banks}
        cycles = int(data["cycles"])
    run = LaneRun(outputs, cycles, work_dir)
    if failure is not None and all(np.array_equal(outputs[k.name], np.asarray(
            expected[k.name], dtype=np.uint64)) for k in banks):
        raise failure  # the results agree but another check of the testbench failed
    return run
