"""cocotb-side building blocks shared by the stream testbenches.

Amaranth names the ports of a ``lib.stream`` interface ``<name>__payload``,
``<name>__valid`` and ``<name>__ready``; cocotbext-axi's generic stream models drive and
sample them with pause generators for idle cycles and back-pressure.  A
:class:`StreamTB` owns the clock (in the simulator), the reset, one source per input
stream and a sink on the result stream; :func:`score_results` is the scoreboard loop.
"""

import os
import pickle
import random

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotb.utils import get_sim_time
from cocotbext.axi.stream import define_stream

from npugen.golden.config import NPUConfig
from npugen.sim.payload import pack, unpack_lanes

__all__ = ["CLOCK_NS", "StreamTB", "pause_pattern", "now_cycles", "load_job", "write_result",
           "score_results", "timeout_for"]

AmaranthStreamBus, AmaranthStreamTransaction, AmaranthStreamSource, AmaranthStreamSink, _ = \
    define_stream("AmaranthStream", signals=["payload", "valid", "ready"])

CLOCK_NS = 10


def pause_pattern(rng: random.Random, probability: float, length: int = 4096):
    """An endless cycle of pause flags: ``True`` with ``probability`` per cycle."""
    pattern = [rng.random() < probability for _ in range(length)]
    while True:
        yield from pattern


def now_cycles() -> float:
    return get_sim_time("ns") / CLOCK_NS


def load_job():
    """The job (a dict) named by ``NPUGEN_JOB`` and its configuration."""
    with open(os.environ["NPUGEN_JOB"], "rb") as f:
        job = pickle.load(f)
    return job, NPUConfig.from_dict(job["config"])


def write_result(record: dict) -> None:
    with open(os.environ["NPUGEN_RESULT"], "wb") as f:
        pickle.dump(record, f)


class StreamTB:
    """Clock, reset, a source per input stream and a sink on ``result``.

    ``inputs`` maps each input stream's port name to its payload layout.
    """

    def __init__(self, dut, inputs: dict, *, seed: int, idle: float, backpressure: float):
        self.dut = dut
        self.layouts = dict(inputs)
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        bus = lambda name: AmaranthStreamBus.from_prefix(dut, name, bus_separator="__")
        self.sources = {name: AmaranthStreamSource(bus(name), dut.clk, dut.rst)
                        for name in self.layouts}
        self.result = AmaranthStreamSink(bus("result"), dut.clk, dut.rst)
        rng = random.Random(seed)
        if idle > 0:
            for source in self.sources.values():
                source.set_pause_generator(pause_pattern(rng, idle))
        if backpressure > 0:
            self.result.set_pause_generator(pause_pattern(rng, backpressure))

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def send(self, name: str, items) -> None:
        """Queue payloads (nested values, packed with the stream's layout) on ``name``."""
        source, layout = self.sources[name], self.layouts[name]
        for item in items:
            source.send_nowait(AmaranthStreamTransaction(payload=pack(layout, item)))


async def score_results(tb: StreamTB, expected, *, lanes: int, timeout_cycles: int,
                        start: float, drain_cycles: int) -> dict:
    """Receive ``len(expected)`` result rows, compare each, then watch the drain.

    Returns the record of the run: the rows received, the cycles from ``start`` to the
    last row, the count of mismatching rows, rows that came out beyond the expected ones
    during ``drain_cycles``, and the ``error``/``busy`` outputs afterwards.
    """
    dut = tb.dut
    received, mismatches = [], []

    async def collect():
        for index, want in enumerate(expected):
            beat = await tb.result.recv()
            got = unpack_lanes(int(beat.payload), 32, lanes)
            received.append(got)
            if got != list(want):
                mismatches.append(index)
                if len(mismatches) <= 5:
                    dut._log.error("result row %d: got %s, expected %s", index, got, list(want))

    await with_timeout(collect(), timeout_cycles * CLOCK_NS, "ns")
    cycles = now_cycles() - start
    await ClockCycles(dut.clk, drain_cycles)
    return {"rows": received, "cycles": int(round(cycles)), "mismatches": len(mismatches),
            "extra_rows": tb.result.count(), "error": int(dut.error.value),
            "busy": int(dut.busy.value)}


def timeout_for(job: dict, beat_keys, *, margin: int) -> int:
    """A generous cycle bound: every beat of ``beat_keys``, slowed by the pause rates."""
    beats = sum(len(p[key]) for p in job["programs"] for key in beat_keys)
    slack = 1.0 / max(0.05, (1 - job["idle"]) * (1 - job["backpressure"]))
    return int(beats * slack * 4) + margin
