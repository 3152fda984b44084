"""Program-level cycle model of the NPU: cycles from START to DONE of an instruction list.

:func:`estimate` replays what the controller and the units of ``hw/`` do with a program
(docs/ISA.md, "Execution and dependencies"), one instruction at a time, with event
times instead of a cycle loop:

* **Fetch.**  Instructions are read over the AXI read channel, 32 bytes each, in bursts
  of whole instructions (at most 16 beats, within a 4 KB page and the read window); the
  fetch keeps at most :attr:`Timing.fetch_depth` instructions requested or buffered, and
  keeps prefetching past END until END reaches the issue stage (which flushes it; the
  beats already requested are drained before DONE).
* **Read channel.**  Host memory answers read bursts in the order of their AR
  handshakes, one beat per cycle, :attr:`Timing.read_latency` after the AR; a burst's
  beats leave the channel only as its consumer takes them, and the memory holds two
  bursts waiting behind the one it serves.  Instruction fetch and LOADs share it.
* **Decode and issue.**  An instruction is in the issue stage ``decode`` cycles after
  its last beat (five decode registers hold the instructions behind it), issues one cycle
  later at the earliest, and the stage takes the next instruction two cycles after an
  issue; its unit takes it :attr:`Timing.dispatch` cycle after the issue (the command's
  register slice).  It issues when its unit has a free slot (one LOAD, STORE and VECTOR, two
  MATMULs in flight) and no instruction in flight in *another* unit (and no VECTOR in
  flight, for a VECTOR) overlaps its scratchpad ranges (read-after-write,
  write-after-read, write-after-write; a MATMUL's reads end at its ``reads_done``, its
  OUT write at ``done``).  FENCE waits for everything in flight; END too, then DONE.
  A LOAD's bursts are placed on the read channel once the next instruction has issued
  (or its ``done`` is needed first), so that the fetch requests that issue allows come
  first, as on the bus.
* **LOAD / STORE.**  Each word of the instruction is a byte segment (a lane of a
  gather is one, a pad word none), planned one per cycle into INCR bursts of at most
  :attr:`Timing.burst_beats` beats and :attr:`Timing.burst_segments` segments that
  never cross 4 KB; a burst is requested when it is closed.  A LOAD writes one piece
  (a beat's part of a segment) or one pad word per cycle; a STORE sends a burst's beats
  once it is closed, at most one word a cycle (the memory pauses a cycle after
  :attr:`Timing.write_single_run` single-beat bursts), and ends with the last write
  response.
* **MATMUL** follows the GEMM core exactly (:mod:`npugen.golden.perf_model`): the first
  activation row enters the core ``rows + 4`` cycles after the instruction is accepted
  (its first weight tile shifts in first), K tiles follow each other every
  ``max(m_rows, 2·rows + 1)`` cycles, also across consecutive MATMULs, the last tile
  starts :attr:`Timing.matmul_quant` cycles after the acceptance and
  :attr:`Timing.quant_reload` after the previous MATMUL's last tile at the earliest (its
  requantization beat), and ``done``
  follows the last activation row by the core's ``result_latency``: alone, a MATMUL
  takes ``gemm_cycles + 3`` from acceptance to ``done``.
* **VECTOR** takes :func:`npugen.golden.vector.vector_cycles`.

The figures that only the RTL can tell (latencies of the pipelines, the memory's
latency) are the fields of :class:`Timing`, measured on the simulated NPU; the
per-kernel agreement is in ``tests/test_npu_perf.py``.  Host memory is assumed to answer
without pauses (the testbench's ``pattern="none"``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields

from .config import NPUConfig
from .isa import INSTRUCTION_BYTES, End, Fence, Load, LoadTarget, Matmul, Store, Vector
from .npu_model import instruction_ranges
from .perf_model import result_latency
from .vector import vector_cycles

__all__ = ["Timing", "TIMING", "InstructionTiming", "PerfEstimate", "estimate",
           "estimate_program", "UNITS"]

#: The four units, in the order of the ``*_BUSY`` registers.
UNITS = ("load", "compute", "vector", "store")

_PAGE = 4096
_INF = float("inf")


@dataclass(frozen=True)
class Timing:
    """Cycle figures of the NPU's pipelines, measured on the simulated RTL.

    All are cycles.  Changing one (for another memory, say) gives another
    :class:`Timing`; :data:`TIMING` holds the measured values.
    """
    #: START written → the first instruction fetch's AR handshake.
    fetch_first_ar: int = 7
    #: AR handshake → first R beat of the burst (host memory latency).
    read_latency: int = 2
    #: Read bursts the memory holds waiting behind the one it serves.
    read_queue: int = 2
    #: Instructions the fetch keeps requested or buffered.
    fetch_depth: int = 8
    #: An instruction's last R beat → in the issue stage (X).
    decode: int = 7
    #: Instructions the decode stages hold behind X.
    decode_slots: int = 5
    #: An issue → the next instruction in X.
    issue_gap: int = 2
    #: An issue → its unit takes the command (the register slice between them).
    dispatch: int = 1
    #: A unit's ``done`` → the next instruction of that unit may issue.
    slot_delay: int = 1
    #: A hazard's range released (``done``/``reads_done``) → the waiting instruction issues.
    hazard_delay: int = 2
    #: LOAD accepted → its first word planned.
    load_setup: int = 4
    #: A LOAD piece planned → consumed at the earliest (the descriptor FIFO's latency).
    load_desc: int = 3
    #: STORE accepted → its first word planned.
    store_setup: int = 3
    #: Beats and byte segments of one burst at most.
    burst_beats: int = 16
    burst_segments: int = 16
    #: LOAD: last piece (or pad word) taken → ``done`` (it is written two cycles later).
    load_tail: int = 3
    #: STORE accepted → its first W beat at the earliest.
    store_first_w: int = 7
    #: Last W beat of a burst → its write response.
    write_response: int = 2
    #: STORE: last write response → ``done``.
    store_tail: int = 1
    #: Single-beat write bursts the memory takes back to back before a pause cycle.
    write_single_run: int = 5
    #: MATMUL accepted → first activation row in the idle core, beyond ``rows``.
    matmul_first_row: int = 4
    #: MATMUL accepted → its last tile may start at the earliest (its requantization
    #: beat read from PARAM, offered, and checked by the core).
    matmul_quant: int = 7
    #: The previous MATMUL's last tile started → this one's last tile may start (its
    #: requantization beat is read once the previous one is taken).
    quant_reload: int = 6
    #: MATMUL ``reads_done`` this many cycles before its last activation row.
    reads_done_lead: int = 1
    #: DONE: END in X → finish; last ``done`` → finish; last fetch beat → finish.
    end_after_x: int = 6
    end_after_done: int = 4
    end_after_fetch: int = 4
    #: The finish cycle minus the CYCLES register (cycles counted from START).
    cycles_offset: int = 2

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative integer, not {value!r}")
        for name in ("fetch_depth", "burst_beats", "burst_segments", "read_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")


#: The figures measured on the simulated NPU (``tests/test_npu_perf.py`` checks them).
TIMING = Timing()


@dataclass(frozen=True)
class InstructionTiming:
    """When one instruction was issued and completed (cycles from START)."""
    index: int
    unit: str          # load, compute, vector, store, fence, end
    issue: int
    done: int


@dataclass
class PerfEstimate:
    """The estimate of one program: ``cycles`` as the CYCLES register would read."""
    cycles: int
    instructions: int
    busy: dict                      # unit → cycles from accept to done (summed)
    fetch_beats: int
    load_beats: int
    timeline: list = field(default_factory=list, repr=False)   # InstructionTiming


# -- the read channel --------------------------------------------------------------------


class _ReadBus:
    """Read bursts served in AR order, one beat per cycle, beats taken by the consumer."""

    def __init__(self, timing):
        self.t = timing
        self.free = 0            # first cycle the next burst may deliver a beat
        self.starts = []         # service start of each burst
        self.last_ar = -1

    def handshake(self, t):
        """The AR handshake cycle of a burst requested in cycle ``t``."""
        h = max(t, self.last_ar + 1)
        q = self.t.read_queue
        if len(self.starts) >= q:
            h = max(h, self.starts[-q] - self.t.read_latency)
        return h

    def start(self, h):
        """Service start (first beat) of the burst handshaken in cycle ``h``."""
        s = max(h + self.t.read_latency, self.free)
        self.starts.append(s)
        if len(self.starts) > 64:
            del self.starts[:32]
        self.last_ar = h
        return s


# -- LOAD and STORE: words, segments, bursts ------------------------------------------------


def _load_items(ins):
    """The planned items of a LOAD in order: ``None`` for a pad word, else a list of
    byte segments ``(start, length)`` (several for a gather)."""
    lane = 4 if ins.target == LoadTarget.PARAM else 1
    lanes, stride = ins.lanes, ins.lane_stride
    contiguous = stride == lane or lanes == 1
    broadcast = stride == 0 and lanes != 1
    extent = (lanes - 1) * stride + lane
    items = []
    for o in range(ins.outer_count):
        o_in = ins.outer_lo <= o < ins.outer_hi
        row = ins.addr + o * ins.outer_stride
        for i in range(ins.inner_count):
            if not (o_in and ins.inner_lo <= i < ins.inner_hi):
                items.append(None)
                continue
            a = row + i * ins.inner_stride
            if broadcast:
                items.append(((a, lane),))
            elif contiguous:
                items.append(((a, extent),))
            else:
                items.append(tuple((a + j * stride, lane) for j in range(lanes)))
    return items


def _store_items(ins):
    """The segments of a STORE's words in order (lanes are contiguous in host memory)."""
    size = ins.lanes * ins.elem_bytes
    return [((ins.addr + o * ins.outer_stride + i * ins.inner_stride, size),)
            for o in range(ins.outer_count) for i in range(ins.inner_count)]


def _plan_bursts(items, t0, nbytes, timing):
    """Burst planning: each segment and each pad marker takes a planning cycle from ``t0``.

    Returns ``(bursts, pieces)``: ``bursts`` as ``[close_cycle, beats, segments]`` in
    request order; ``pieces`` in consumer order as ``(planned, burst)``: ``burst`` is the
    index of the burst whose next beat the piece takes, ``-1`` for a piece that reuses
    the beat of the previous segment (two segments meeting inside a beat) and ``-2`` for
    a pad word.
    """
    max_beats, max_segs = timing.burst_beats, timing.burst_segments
    page_beats = _PAGE // nbytes
    bursts = []
    pieces = []
    t = t0
    is_open = False
    last = limit = nseg = cur = 0

    def open_at(frm, b1):
        nonlocal is_open, last, limit, nseg, cur, t
        while True:
            lim = frm + min(max_beats, page_beats - frm % page_beats) - 1
            end = min(b1, lim)
            bursts.append([None, end - frm + 1, 1])
            cur = len(bursts) - 1
            pieces.extend([(t, cur)] * (end - frm + 1))
            is_open, last, limit, nseg = True, end, lim, 1
            if end == b1:
                return
            bursts[cur][0] = t            # a long segment: one more cycle per burst
            t += 1
            frm = end + 1

    for item in items:
        if item is None:
            if is_open:
                bursts[cur][0] = t        # a cycle that adds nothing closes the burst
                is_open = False
            pieces.append((t, -2))
            t += 1
            continue
        for start, length in item:
            b0, b1 = start // nbytes, (start + length - 1) // nbytes
            shared = is_open and b0 == last
            if shared:
                pieces.append((t, -1))
            if shared and b1 == b0:                           # covered by the open burst
                nseg += 1
                bursts[cur][2] += 1
            elif is_open and b0 in (last, last + 1) and b1 <= limit and nseg < max_segs:
                new = b1 - last
                pieces.extend([(t, cur)] * new)
                bursts[cur][1] += new
                bursts[cur][2] += 1
                last, nseg = b1, nseg + 1
            else:
                if is_open:
                    bursts[cur][0] = t    # closed in the cycle the next one opens
                frm = b0 + 1 if shared else b0
                lim = frm + min(max_beats, page_beats - frm % page_beats) - 1
                if b1 <= lim:             # the segment opens one burst
                    cur = len(bursts)
                    bursts.append([None, b1 - frm + 1, 1])
                    if b1 == frm:
                        pieces.append((t, cur))
                    else:
                        pieces.extend([(t, cur)] * (b1 - frm + 1))
                    is_open, last, limit, nseg = True, b1, lim, 1
                else:
                    open_at(frm, b1)
            t += 1
    if is_open:
        bursts[cur][0] = t
    return bursts, pieces


# -- the model -------------------------------------------------------------------------------


def _ranges(config, ins):
    """``(reads, writes)`` as lists of ``(space, start, end)``; WIDX folds into WGT."""
    r = instruction_ranges(config, ins)

    def fold(items):
        return [("WGT" if s == "WIDX" else s, a, b) for s, a, b in items if b > a]
    return fold(r["reads"]), fold(r["writes"])


def _overlap(xs, ys):
    for s, a, b in xs:
        for s2, a2, b2 in ys:
            if s == s2 and a < b2 and a2 < b:
                return True
    return False


class _Machine:
    """The state of one estimate: fetch, decode, read channel, units (see the module)."""

    def __init__(self, config, instructions, timing, fetch_window, prog_addr):
        self.c = config
        self.t = timing
        self.ins = instructions
        self.n = len(instructions)
        self.nbytes = config.axi_data_bits // 8
        self.per_instr = max(1, INSTRUCTION_BYTES // self.nbytes)
        self.per_burst = max(1, timing.burst_beats // self.per_instr)
        self.bus = _ReadBus(timing)
        self.prog_addr = prog_addr
        # instructions the fetch may read (the program and what follows it in the window)
        self.window = fetch_window
        self.avail = []           # cycle an instruction may enter decode
        self.acc = []             # cycle it entered decode
        self.x_in = []            # cycle it entered the issue stage
        self.fetch_next = 0
        self.fetch_ar = 0
        self.fetch_last_beat = 0
        self.flush = _INF         # fetch flushed from this cycle (END in X)
        self.fetch_beats = 0
        self.load_beats = 0
        self._wait = (None, None)   # (state, next fetch request) of the last look

    # -- fetch ------------------------------------------------------------------------

    def _space_time(self, j):
        """Earliest cycle the fetch may request instruction ``j`` (buffer space)."""
        k = j - self.t.fetch_depth
        if k < 0:
            return self.t.fetch_first_ar - 1
        while len(self.acc) <= k:                 # decode entries known by now
            m = len(self.acc)
            if m >= len(self.avail) or m - self.t.decode_slots >= len(self.x_in):
                return None
            self.accept(m)
        return self.acc[k] + 1

    def fetch_until(self, horizon, index=None):
        """Issue the fetch bursts requested up to cycle ``horizon`` (as far as known).

        A burst is requested once the previous one's AR was taken and the buffer has
        room; its AR handshake follows a cycle later at the earliest.
        """
        while True:
            j = self.fetch_next
            if self.window is not None and j >= self.window:
                return
            if index is not None and j > index:
                return
            key = (j, len(self.acc), len(self.x_in), len(self.avail))
            if self._wait[0] == key:              # nothing changed since the last look
                t = self._wait[1]
            else:
                t = self._space_time(j)
                if t is not None:
                    t = max(t, self.fetch_ar)
                self._wait = ((j, len(self.acc), len(self.x_in), len(self.avail)), t)
            if t is None or t > horizon or t >= self.flush:
                return
            addr = self.prog_addr + j * INSTRUCTION_BYTES
            count = min(self.per_burst, (_PAGE - addr % _PAGE) // INSTRUCTION_BYTES)
            if self.window is not None:
                count = min(count, self.window - j)
            for m in range(1, count):          # buffer space at t for j + m
                st = self._space_time(j + m)
                if st is None or st > t:
                    count = m
                    break
            h = self.bus.handshake(t + 1)
            s = self.bus.start(h)
            beats = count * self.per_instr
            for m in range(count):
                self.avail.append(s + (m + 1) * self.per_instr)
            self.bus.free = s + beats
            self.fetch_last_beat = s + beats - 1
            self.fetch_beats += beats
            self.fetch_ar = h
            self.fetch_next = j + count

    def available(self, i):
        while len(self.avail) <= i:
            before = self.fetch_next
            self.fetch_until(_INF, i)
            if self.fetch_next == before:
                raise RuntimeError("instruction fetch stalled")   # pragma: no cover
        return self.avail[i]

    def accept(self, i):
        """Cycle instruction ``i`` enters decode (``x_in`` known up to ``i − slots``)."""
        while len(self.acc) <= i:
            k = len(self.acc)
            a = self.available(k)
            if len(self.acc) > k:                 # computed while fetching
                continue
            if k:
                a = max(a, self.acc[k - 1] + 1)
            s = k - self.t.decode_slots
            if s >= 0:
                a = max(a, self.x_in[s] - 1)
            self.acc.append(a)
        return self.acc[i]


    def enter_x(self, i, prev_issue):
        """Instruction ``i`` enters the issue stage (the previous one issued at
        ``prev_issue``); END there flushes the fetch."""
        if i >= self.n:
            return
        x = self.accept(i) + self.t.decode - 1
        if prev_issue is not None:
            x = max(x, prev_issue + self.t.issue_gap)
        self.x_in.append(x)
        if isinstance(self.ins[i], End):
            self.flush = x + 1

    # -- LOAD ----------------------------------------------------------------------------

    def run_load(self, ins, u):
        t = self.t
        bursts, pieces = _plan_bursts(_load_items(ins), u + t.load_setup,
                                      self.nbytes, t)
        bus = self.bus
        lat, queue = t.read_latency, t.read_queue
        consumer = u + t.load_setup
        served = 0
        start = taken = k = 0
        cur = -1
        ar = u                                    # the AR register: one request at a time
        fetch_wait = -1                           # no fetch request before this cycle
        for planned, b in pieces:
            c = max(consumer + 1, planned + t.load_desc)
            if b >= 0:
                if b != cur:                      # the first beat of the next burst
                    while served <= b:
                        r = bursts[served][0] + 1
                        if ar > r:
                            r = ar
                        if fetch_wait is not None and r - 1 >= fetch_wait:
                            before = self.fetch_next
                            self.fetch_until(r - 1)       # earlier fetch requests go first
                            wait = self._wait[1]
                            if self.fetch_next == before:
                                fetch_wait = wait         # None: blocked for this LOAD
                        h = r if r > bus.last_ar else bus.last_ar + 1
                        if len(bus.starts) >= queue and bus.starts[-queue] - lat > h:
                            h = bus.starts[-queue] - lat
                        ar = h
                        start = bus.start(h)
                        served += 1
                    cur, k = b, 0
                    if start > c:
                        c = start
                else:
                    if start + k > c:
                        c = start + k
                    if taken + 1 > c:
                        c = taken + 1
                taken = c
                k += 1
                if k == bursts[b][1]:
                    bus.free = c + 1
            consumer = c
        self.load_beats += sum(b[1] for b in bursts)
        return consumer + t.load_tail

    # -- STORE ---------------------------------------------------------------------------

    def run_store(self, ins, u):
        t = self.t
        bursts, _ = _plan_bursts(_store_items(ins), u + t.store_setup, self.nbytes, t)
        aw = u
        w_free = u + t.store_first_w    # the W channel takes the next burst's beats
        b_last = u
        run = 0                 # single-beat bursts whose W beats followed back to back
        for close, beats, segments in bursts:
            aw = max(close + 1, aw + 1)
            begin = max(aw, w_free)
            if beats == 1 and begin == w_free:
                run += 1
                if run > t.write_single_run:      # the memory takes a pause
                    begin += 1
                    run = 1
            else:
                run = 1 if beats == 1 else 0
            # beats go out at most one word a cycle; the response follows the last beat
            w_free = begin + max(beats, segments)
            b_last = begin + max(beats, segments - 1, 1) - 1 + t.write_response
        return b_last + t.store_tail

    # -- MATMUL ---------------------------------------------------------------------------

    def run_matmul(self, ins, u):
        c, t = self.c, self.t
        period = 2 * c.rows + 1
        first = u + c.rows + t.matmul_first_row
        quant = u + t.matmul_quant
        if self.core_next is not None:
            first = max(first, self.core_next)
            quant = max(quant, self.quant_next)
        tiles = (ins.k_tiles - 1) * max(ins.m_rows, period)
        last_tile = max(first + tiles, quant)
        last_row = last_tile + ins.m_rows - 1
        self.core_next = last_tile + max(ins.m_rows, period)
        self.quant_next = last_tile + t.quant_reload
        done = last_row + result_latency(c)      # the core's result → OUT, done pulse
        return last_row - t.reads_done_lead, done

    # -- the program ------------------------------------------------------------------------

    def run(self, keep_timeline):
        c, t = self.c, self.t
        self.core_next = self.quant_next = None
        busy = dict.fromkeys(UNITS, 0)
        # in flight per unit: (reads, writes, reads released, done)
        last = {"load": None, "store": None, "vector": None}
        matmuls = []               # the two most recent MATMULs
        slot_free = {"load": 0, "store": 0, "vector": 0}
        unit_end = dict.fromkeys(UNITS, 0)
        state = {"last_done": 0}
        timeline = {}
        finish = None
        # A LOAD's bursts are served once the next instruction has issued (or when its
        # done is needed first): the fetch requests that issue allows may come first.
        pending = []

        def complete(unit, i, issue, done, rel, reads, writes):
            record = (reads, writes, rel, done)
            if unit == "compute":
                matmuls.append(record)
                del matmuls[:-2]
            else:
                last[unit] = record
                slot_free[unit] = done + t.slot_delay
            busy[unit] += done - max(issue, unit_end[unit])
            unit_end[unit] = done
            state["last_done"] = max(state["last_done"], done)
            if keep_timeline:
                timeline[i] = InstructionTiming(i, unit, issue, done)

        def resolve():
            while pending:
                i, ins, issue, reads, writes = pending.pop()
                done = self.run_load(ins, issue + t.dispatch)
                complete("load", i, issue, done, done, reads, writes)

        self.enter_x(0, None)
        for i, ins in enumerate(self.ins):
            x = self.x_in[i]
            cand = x + 1
            if isinstance(ins, End):
                resolve()
                self.fetch_until(x)
                finish = max(x + t.end_after_x, state["last_done"] + t.end_after_done,
                             self.fetch_last_beat + t.end_after_fetch)
                if keep_timeline:
                    timeline[i] = InstructionTiming(i, "end", x, finish)
                break
            if isinstance(ins, Fence):
                resolve()
                issue = max(cand, state["last_done"] + 1)
                self.enter_x(i + 1, issue)
                if keep_timeline:
                    timeline[i] = InstructionTiming(i, "fence", issue, issue)
                continue
            if isinstance(ins, Load):
                unit = "load"
            elif isinstance(ins, Store):
                unit = "store"
            elif isinstance(ins, Vector):
                unit = "vector"
            elif isinstance(ins, Matmul):
                unit = "compute"
            else:
                raise TypeError(f"instructions must be Load, Store, Matmul, Vector, Fence "
                                f"or End records, not {ins!r}")
            reads, writes = _ranges(c, ins)
            if pending and (unit == "load" or _overlap(reads, pending[0][4]) or
                            _overlap(writes, pending[0][4])):
                resolve()
            issue = cand
            if unit == "compute":
                if len(matmuls) >= 2:
                    issue = max(issue, matmuls[-2][3] + t.slot_delay)
            else:
                issue = max(issue, slot_free[unit])
            # hazards against the other units' instructions in flight (the controller
            # also compares a VECTOR with the VECTOR in flight)
            others = [v for k, v in last.items()
                      if (k != unit or unit == "vector") and v is not None]
            if unit != "compute":
                others += matmuls
            for o_reads, o_writes, o_rel, o_done in others:
                if _overlap(reads, o_writes) or _overlap(writes, o_writes):
                    issue = max(issue, o_done + t.hazard_delay)
                if _overlap(writes, o_reads):
                    issue = max(issue, o_rel + t.hazard_delay)
            self.enter_x(i + 1, issue)
            resolve()
            if unit == "load":
                pending.append((i, ins, issue, reads, writes))
                continue
            if unit == "store":
                done = rel = self.run_store(ins, issue + t.dispatch)
            elif unit == "vector":
                done = rel = issue + t.dispatch + vector_cycles(c, ins.op, count=ins.count,
                                                   n_words=ins.n_words, n_valid=ins.n_valid)
            else:
                rel, done = self.run_matmul(ins, issue + t.dispatch)
            complete(unit, i, issue, done, rel, reads, writes)
        if finish is None:
            raise ValueError("instructions must end with an End instruction")
        return PerfEstimate(cycles=finish - t.cycles_offset, instructions=len(timeline),
                            busy=busy, fetch_beats=self.fetch_beats,
                            load_beats=self.load_beats,
                            timeline=[timeline[k] for k in sorted(timeline)])


def estimate(config, instructions, *, fetch_window=None, prog_addr: int = 0,
             timing: Timing = TIMING, timeline: bool = False) -> PerfEstimate:
    """Estimate the cycles from START to DONE of ``instructions`` on ``config``.

    ``instructions`` are :mod:`npugen.golden.isa` records ending with ``End`` (what
    follows END is not executed).  ``fetch_window`` is the number of instruction slots
    the fetch may read from the program start (the read window's end; ``None``: no
    limit, the fetch prefetches past END until it is flushed).  ``prog_addr`` places the
    program for the 4 KB page rule of the fetch bursts.  ``timeline`` keeps each
    instruction's issue and done cycles.
    """
    config = NPUConfig.check(config)
    if not isinstance(timing, Timing):
        raise TypeError(f"timing must be a Timing, not {timing!r}")
    instructions = list(instructions)
    if not instructions:
        raise ValueError("instructions must not be empty")
    if fetch_window is not None:
        if isinstance(fetch_window, bool) or not isinstance(fetch_window, numbers.Integral) \
                or fetch_window < 1:
            raise ValueError(f"fetch_window must be a positive integer or None, "
                             f"not {fetch_window!r}")
        fetch_window = int(fetch_window)
    if isinstance(prog_addr, bool) or not isinstance(prog_addr, numbers.Integral) or \
            prog_addr < 0 or prog_addr % INSTRUCTION_BYTES:
        raise ValueError(f"prog_addr must be a non-negative multiple of {INSTRUCTION_BYTES}, "
                         f"not {prog_addr!r}")
    machine = _Machine(config, instructions, timing, fetch_window, int(prog_addr))
    return machine.run(timeline)


def estimate_program(program, *, timing: Timing = TIMING, timeline: bool = False) -> PerfEstimate:
    """:func:`estimate` of a compiled or planned program (its read window bounds the fetch)."""
    for name in ("config", "instructions", "prog_addr", "read_window"):
        if not hasattr(program, name):
            raise TypeError(f"program must be a CompiledProgram or ProgramPlan, not {program!r}")
    lo, hi = program.read_window
    window = max(0, (hi - program.prog_addr) // INSTRUCTION_BYTES) if lo <= program.prog_addr \
        else 0
    return estimate(program.config, program.instructions, fetch_window=max(1, window),
                    prog_addr=program.prog_addr, timing=timing, timeline=timeline)


# -- networks: layers planned from their shapes ---------------------------------------------

#: Programs up to this much work (instructions plus words moved by LOAD and STORE) are
#: estimated whole; larger layers are estimated on two smaller instances of the same
#: layer (fewer output rows or GEMM rows; fewer groups or output channels when those
#: dominate, keeping the same scratchpad residency of weights and parameters) and
#: extrapolated linearly in that dimension: the program repeats the same blocks, so its
#: cycles grow linearly once past the first blocks.
EXACT_WORK = 120_000

_MODES = ("int8", "int4", "binary")


@dataclass(frozen=True)
class LayerEstimate:
    """The estimate of one compute layer (``conv`` or ``fc``) of a network."""
    name: str
    kind: str
    gemm: tuple                 # (m, k, n, groups) of the layer for the batch
    macs: int
    weights: int
    cycles: int
    ideal_cycles: int
    lowering: str               # conv2d, gemm (im2col for a conv), k-split
    method: str                 # exact or extrapolated
    instructions: int           # of the largest program estimated for the layer

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "gemm": list(self.gemm),
                "macs": self.macs, "weights": self.weights, "cycles": self.cycles,
                "ideal_cycles": self.ideal_cycles,
                "utilization": round(self.utilization, 6), "lowering": self.lowering,
                "method": self.method, "instructions": self.instructions}


@dataclass(frozen=True)
class ModelEstimate:
    """A network's estimate: its compute layers and the totals for one batch."""
    model: str
    config: NPUConfig
    mode: str
    sparsity: object
    batch: int
    clock_mhz: float
    layers: tuple
    host_layers: tuple          # names of the layers without MACs (pooling, add, mul)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    @property
    def ideal_cycles(self) -> int:
        return sum(layer.ideal_cycles for layer in self.layers)

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    @property
    def fps(self) -> float:
        """Images per second at ``clock_mhz`` (a batch takes ``cycles``)."""
        return self.clock_mhz * 1e6 * self.batch / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict:
        return {
            "model": self.model, "config_hash": self.config.config_hash(),
            "rows": self.config.rows, "cols": self.config.cols,
            "axi_data_bits": self.config.axi_data_bits, "mode": self.mode,
            "sparsity": self.sparsity or "dense", "batch": self.batch,
            "clock_mhz": self.clock_mhz, "macs": self.macs, "weights": self.weights,
            "cycles": self.cycles, "ideal_cycles": self.ideal_cycles,
            "utilization": round(self.utilization, 6), "fps": self.fps,
            "layers": [layer.to_dict() for layer in self.layers],
            "host_layers": list(self.host_layers),
            **self._reference(),
        }

    def _reference(self) -> dict:
        """``reference_macs``: the MACs of the convention of the network's reference
        figure (:data:`~npugen.golden.model_zoo.REFERENCE_EXCLUDES`), when it differs."""
        from .model_zoo import REFERENCE_EXCLUDES
        suffix = REFERENCE_EXCLUDES.get(self.model)
        if suffix is None:
            return {}
        return {"reference_macs": sum(layer.macs for layer in self.layers
                                      if not layer.name.endswith(suffix)),
                "reference_excludes": f"*{suffix}"}


def _ideal(config, macs, mode, sparsity):
    peak = config.peak_macs_per_cycle(mode) * (2 if sparsity else 1)
    return math.ceil(macs / peak)


def _linear(small, large, size_small, size_large, size):
    """Cycles at ``size`` on the line through two instances."""
    if size_large == size_small:
        return large
    slope = (large - small) / (size_large - size_small)
    return round(large + (size - size_large) * slope)


def _cut_points(blocks):
    """Sizes covering the first 3 and 5 blocks (past the short first blocks)."""
    sizes, total = [], 0
    for i, b in enumerate(blocks[:5]):
        total += b
        if i + 1 in (3, 5):
            sizes.append(total)
    return sizes


def _work(plan):
    """Instructions plus the words the LOADs and STOREs of ``plan`` move."""
    words = sum(ins.inner_count * ins.outer_count for ins in plan.instructions
                if isinstance(ins, (Load, Store)))
    return len(plan.instructions) + words


def _same_residency(config, per_unit, units, k_tiles):
    """The fewest units (groups or N tiles, each with ``per_unit`` weight tiles of
    ``k_tiles`` K tiles) that keep the weight and parameter scratchpads resident or
    ringed as with ``units``."""
    tiles = units * per_unit
    least = 2
    wgt_fit = config.wgt_sp_depth // (k_tiles * config.rows)
    par_fit = config.param_sp_depth // 3
    for fit in (wgt_fit, par_fit):
        if tiles > fit:
            least = max(least, fit // per_unit + 1)
    return least


def _kpt(config, mode, sparsity):
    return config.rows * {"int8": 1, "int4": 2, "binary": 8}[mode] * (2 if sparsity else 1)


def _gemm_fits(config, k, mode, sparsity):
    """Whether the compiler lowers a GEMM with this K in one program (a weight tile and
    an activation row fit their scratchpads)."""
    k_tiles = -(-k // _kpt(config, mode, sparsity))
    return k_tiles * config.rows <= config.wgt_sp_depth and k_tiles <= config.act_sp_depth \
        and k_tiles <= 0xFFFF


def _conv_fits(config, layer):
    """Whether ``compile_conv2d`` lowers the conv layer (K tiles are taps × channel chunks)."""
    kh, kw = layer.kernel
    k_tiles = kh * kw * -(-(layer.in_channels // layer.groups) // config.rows)
    return k_tiles * config.rows <= config.wgt_sp_depth and k_tiles <= config.act_sp_depth \
        and layer.out_channels <= 0xFFFF


class _LayerPlanner:
    """Plans and estimates the programs of layers, caching identical ones.

    Each method returns ``(cycles, method, instructions)``: ``instructions`` of the
    largest program estimated.
    """

    def __init__(self, config, mode, sparsity, timing):
        self.c = config
        self.mode = mode
        self.sparsity = sparsity
        self.timing = timing
        self.cache = {}

    def cycles(self, plan):
        return estimate_program(plan, timing=self.timing).cycles, "exact", len(plan.instructions)

    def gemm(self, m, k, n, raw=False):
        from .compiler import _block_limit, _ramped, plan_gemm
        key = ("gemm", m, k, n, raw)
        if key in self.cache:
            return self.cache[key]
        c = self.c
        k_tiles = -(-k // _kpt(c, self.mode, self.sparsity))
        n_tiles = -(-n // c.cols)
        m_limit = _block_limit(c, k_tiles, f"K={k}")
        blocks = _ramped(m, m_limit, min(m_limit, 2 * c.rows + 1))
        rough = m * k_tiles + len(blocks) * n_tiles * (6 + k_tiles * c.rows) + m * n_tiles
        plan = None
        if rough <= 4 * EXACT_WORK:
            plan = plan_gemm(c, m, k, n, mode=self.mode, sparsity=self.sparsity, raw=raw)
            rough = _work(plan)
        cut = _cut_points(blocks)
        if rough <= EXACT_WORK:
            result = self.cycles(plan)
        elif len(cut) == 2 and cut[1] < m:
            (c1, _, i1), (c2, _, i2) = self.gemm(cut[0], k, n, raw), self.gemm(cut[1], k, n, raw)
            result = (_linear(c1, c2, cut[0], cut[1], m), "extrapolated", max(i1, i2))
        else:
            t1 = _same_residency(c, 1, n_tiles, k_tiles)
            if t1 + 2 >= n_tiles:
                plan = plan or plan_gemm(c, m, k, n, mode=self.mode, sparsity=self.sparsity,
                                         raw=raw)
                result = self.cycles(plan)
            else:
                n1, n2 = t1 * c.cols, (t1 + 2) * c.cols
                (c1, _, i1), (c2, _, i2) = self.gemm(m, k, n1, raw), self.gemm(m, k, n2, raw)
                result = (_linear(c1, c2, n1, n2, n), "extrapolated", max(i1, i2))
        self.cache[key] = result
        return result

    def conv(self, batch, h, w, cin, cout, kernel, stride, padding, dilation, groups):
        from .compiler import _block_limit, _conv_blocks, plan_conv2d
        from .conv import ConvGeometry
        key = ("conv", batch, h, w, cin, cout, kernel, stride, padding, dilation, groups)
        if key in self.cache:
            return self.cache[key]
        c = self.c
        kh, kw = kernel
        geom = ConvGeometry((batch, h, w, cin), (kh, kw, cin // groups, cout), stride=stride,
                            padding=padding, dilation=dilation, groups=groups)
        cg, og = cin // groups, cout // groups
        k_tiles = kh * kw * -(-cg // c.rows)
        ntg = -(-og // c.cols)
        blocks = _conv_blocks(geom, _block_limit(c, k_tiles, "conv"), c.rows)
        pixels = sum(p1 - p0 for p0, p1 in blocks)
        rough = groups * (pixels * (k_tiles + ntg) + len(blocks) * ntg * (6 + k_tiles * c.rows))
        plan = None
        if rough <= 4 * EXACT_WORK:
            plan = plan_conv2d(c, (batch, h, w, cin), (kh, kw, cg, cout), stride=stride,
                               padding=padding, dilation=dilation, groups=groups)
            rough = _work(plan)
        sizes = [p1 - p0 for p0, p1 in blocks]
        if geom.w_out < max(sizes):               # blocks of several whole output rows
            cut = [math.ceil(x / geom.w_out) for x in _cut_points(sizes)]
        else:                                     # a row or pieces of a row per block
            cut = [2, 3]
        rows_total = geom.h_out
        sh, dh = geom.stride[0], geom.dilation[0]
        top, bottom = geom.padding[0], geom.padding[1]
        heights = [(r - 1) * sh + (kh - 1) * dh + 1 - top - bottom for r in cut]
        if rough <= EXACT_WORK:
            result = self.cycles(plan)
        elif batch == 1 and len(cut) == 2 and cut[1] < rows_total and min(heights) >= 1:
            (c1, _, i1), (c2, _, i2) = (
                self.conv(batch, hh, w, cin, cout, kernel, stride, padding, dilation, groups)
                for hh in heights)
            result = (_linear(c1, c2, cut[0], cut[1], rows_total), "extrapolated", max(i1, i2))
        else:
            g1 = _same_residency(c, ntg, groups, k_tiles)
            # The instances keep the pixels of a LOAD more than a beat apart (each word
            # its own burst), as in the layer; closer pixels share or extend bursts.
            reach = 2 * c.axi_data_bits // 8
            g1 = max(g1, -(-reach // cg))
            if cin < reach or g1 + 2 >= groups:
                plan = plan or plan_conv2d(c, (batch, h, w, cin), (kh, kw, cg, cout),
                                           stride=stride, padding=padding, dilation=dilation,
                                           groups=groups)
                result = self.cycles(plan)
            else:
                (c1, _, i1), (c2, _, i2) = (
                    self.conv(batch, h, w, g * cg, g * og, kernel, stride, padding, dilation, g)
                    for g in (g1, g1 + 2))
                result = (_linear(c1, c2, g1, g1 + 2, groups), "extrapolated", max(i1, i2))
        self.cache[key] = result
        return result


def estimate_layer(config, layer, *, mode: str = "int8", sparsity=None, batch: int = 1,
                   timing: Timing = TIMING, _planner=None) -> LayerEstimate:
    """Estimate one ``conv`` or ``fc`` layer (:class:`~npugen.golden.model_zoo.Layer`).

    The layer is planned as the compiler lowers it: an int8 dense conv whose K tiles
    (taps × channel chunks) fit the weight scratchpad with ``compile_conv2d``'s program
    (im2col by LOAD, ``lowering = "conv2d"``); an fc layer, a conv in another mode or
    with 2:4 weights (which the conv compiler does not lower), or a conv whose taps do
    not fit, as the GEMM of its im2col, one program per group (``"gemm"``).  A layer
    whose weight tile does not fit even so (``k_tiles·rows > wgt_sp_depth``) has no
    single-program lowering: it is estimated as the fewest K chunks that fit, each a
    GEMM program with int32 (raw) outputs (``"k-split"``; the accumulation of the
    chunks is not counted).  Large layers are extrapolated (:data:`EXACT_WORK`).
    """
    config = NPUConfig.check(config)
    planner = _planner or _LayerPlanner(config, mode, sparsity, timing)
    gemm = layer.gemm
    if gemm is None:
        raise ValueError(f"layer must be a conv or fc layer, not {layer.kind!r} ({layer.name!r})")
    m, k, n, groups = gemm.m * batch, gemm.k, gemm.n, gemm.groups
    macs = layer.macs * batch
    ideal = _ideal(config, macs, mode, sparsity)
    if layer.kind == "conv" and mode == "int8" and not sparsity and _conv_fits(config, layer):
        cin, h, w = layer.in_shape
        cycles, method, count = planner.conv(batch, h, w, cin, layer.out_channels,
                                             layer.kernel, layer.stride, layer.padding,
                                             layer.dilation, groups)
        lowering = "conv2d"
    elif _gemm_fits(config, k, mode, sparsity):
        c, method, count = planner.gemm(m, k, n)
        cycles = c * groups
        lowering = "gemm"
    else:
        kpt = _kpt(config, mode, sparsity)
        max_tiles = min(config.wgt_sp_depth // config.rows, config.act_sp_depth)
        chunks = -(-k // (max_tiles * kpt))
        sizes = [max_tiles * kpt] * (chunks - 1) + [k - (chunks - 1) * max_tiles * kpt]
        cycles, count, method = 0, 0, "exact"
        for size in sizes:
            c, how, cnt = planner.gemm(m, size, n, raw=True)
            cycles += c * groups
            count = max(count, cnt)
            method = "extrapolated" if how != "exact" else method
        lowering = "k-split"
    return LayerEstimate(layer.name, layer.kind, (m, k, n, groups), macs,
                         layer.weights, cycles, ideal, lowering, method, count)


def estimate_model(config, table, *, mode: str = "int8", sparsity=None, batch: int = 1,
                   clock_mhz: float = 100.0, timing: Timing = TIMING,
                   progress=None) -> ModelEstimate:
    """Estimate every compute layer of ``table`` (a
    :class:`~npugen.golden.model_zoo.ModelTable`) for one batch; layers without MACs
    (pooling, residual additions, channel scaling) run on the host and are listed apart.
    ``progress`` is called with each layer's name before it is estimated."""
    from .model_zoo import ModelTable
    from .precision import check_sparsity

    config = NPUConfig.check(config)
    if not isinstance(table, ModelTable):
        raise TypeError(f"table must be a ModelTable, not {table!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
    if mode not in config.modes:
        raise ValueError(f"mode must be one of the built modes {list(config.modes)}, "
                         f"not {mode!r}")
    check_sparsity(sparsity, mode)
    if sparsity is not None and not config.sparse_2_4:
        raise ValueError(f"sparsity {sparsity!r} needs a configuration with sparse_2_4")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be a positive integer, not {batch!r}")
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, numbers.Real) or \
            not math.isfinite(clock_mhz) or clock_mhz <= 0:
        raise ValueError(f"clock_mhz must be a positive number, not {clock_mhz!r}")
    planner = _LayerPlanner(config, mode, sparsity, timing)
    layers = []
    for layer in table.compute_layers():
        if progress is not None:
            progress(layer.name)
        layers.append(estimate_layer(config, layer, mode=mode, sparsity=sparsity,
                                     batch=int(batch), timing=timing, _planner=planner))
    host = tuple(layer.name for layer in table.layers if layer.gemm is None)
    return ModelEstimate(table.name, config, mode, sparsity, int(batch), float(clock_mhz),
                         tuple(layers), host)
