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
           "reset_dut", "score_results", "run_and_score", "timeout_for"]

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


async def reset_dut(dut) -> None:
    """Hold ``dut.rst`` for 3 cycles of ``dut.clk``; return at the first rising edge after
    it is released."""
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class StreamTB:
    """Clock, reset, a source per input stream and a sink on ``result``.

    ``inputs`` maps each input stream's port name to ``(payload layout, program key)``:
    :meth:`enqueue` sends ``program[key]`` on that stream, in the order of ``inputs``.
    """

    def __init__(self, dut, inputs: dict, *, seed: int, idle: float, backpressure: float):
        self.dut = dut
        self.layouts = {name: layout for name, (layout, _) in inputs.items()}
        self.program_keys = {name: key for name, (_, key) in inputs.items()}
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
        await reset_dut(self.dut)

    def enqueue(self, program: dict) -> None:
        """Queue every stream's beats of one program."""
        for name, key in self.program_keys.items():
            self.send(name, program[key])

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


async def run_and_score(tb: StreamTB, job: dict, *, lanes: int, drain_cycles: int,
                        margin: int, error_name=str) -> None:
    """Run every program of ``job`` back to back, score the result rows, write the record.

    Fails when a row differs, extra rows appear, or the design ends in error or busy.
    """
    dut = tb.dut
    dut._log.info("seed=%d idle=%.2f backpressure=%.2f programs=%d", job["seed"], job["idle"],
                  job["backpressure"], len(job["programs"]))
    await tb.reset()
    expected = [row for program in job["programs"] for row in program["result_rows"]]
    start = now_cycles()
    for program in job["programs"]:
        tb.enqueue(program)
    keys = (*tb.program_keys.values(), "result_rows")
    record = await score_results(tb, expected, lanes=lanes, start=start,
                                 drain_cycles=drain_cycles,
                                 timeout_cycles=timeout_for(job, keys, margin=margin))
    write_result(record)
    assert not record["mismatches"], \
        f"{record['mismatches']} of {len(expected)} result rows differ (seed={job['seed']})"
    assert record["extra_rows"] == 0, f"{record['extra_rows']} unexpected result rows"
    assert record["error"] == 0, f"the design reported error {error_name(record['error'])}"
    assert record["busy"] == 0, "the design is still busy after its last result"


def timeout_for(job: dict, beat_keys, *, margin: int) -> int:
    """A generous cycle bound: every beat of ``beat_keys``, slowed by the pause rates."""
    beats = sum(len(p[key]) for p in job["programs"] for key in beat_keys)
    slack = 1.0 / max(0.05, (1 - job["idle"]) * (1 - job["backpressure"]))
    return int(beats * slack * 4) + margin
