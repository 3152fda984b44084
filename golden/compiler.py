"""The NPU compiler: lowers GEMM, conv2d and attention into NPU programs.

Every ``compile_*`` function validates its arguments (``ValueError``/``TypeError``
naming the parameter and the value) before building anything, and returns a
:class:`CompiledProgram`: the instruction list, a host memory image (segments at fixed
addresses: program, inputs, parameters, workspace, outputs), the read and write windows,
the destination regions (the only bytes the program may write), how to read the outputs
back, the expected outputs from the kernel-level golden functions, ``macs`` and
``ideal_cycles`` (``⌈MACs / (rows·cols·pack)⌉``, twice the K per cycle for 2:4 weights).
:func:`plan_gemm` and :func:`plan_conv2d` give the same instructions and addresses from
the shapes alone (a :class:`ProgramPlan`, for the cycle model ``npu_perf``): the lowering
is a function of shapes and quantization fields, the data only fills the segments.

Lowering (see ``docs/ISA.md`` for the instructions):

* A GEMM ``M×K×N`` becomes MATMULs of ``m_rows × cols`` output tiles with all of K in
  one MATMUL (``k_tiles`` K tiles), so the core streams long runs of tiles.  M is cut
  into blocks whose activations (``m_rows·k_tiles`` ACT words) fit half of ACT; the
  loop is M block → N tile, so a block's activations are loaded once and reused by all
  N tiles.  Packed modes use the packed host layouts (int4 two per byte, binary eight
  per byte, along K); 2:4 weights are stored compressed (values and 2-bit indices,
  padded to whole tiles).
* conv2d is the GEMM of its im2col, done by LOAD's address generation: one K tile is
  one kernel tap and ``rows`` input channels of one group, one activation word one
  output pixel of it; the output pixels of a block are whole output rows (LOAD's outer
  index = output row, inner index = output column, both strided by the conv stride),
  and the LOAD windows replace out-of-image taps by the activation zero point.
  Channels are padded per tap to a multiple of ``rows`` (zero weights).
* attention: per head and block of query rows, ``Q·Kᵀ`` raw into OUT (Kᵀ gathered by
  LOAD's lane stride), VECTOR CLAMP copies that regroup a row's N tiles into
  consecutive words (when ``S_k > cols``), VECTOR SOFTMAX in place, STORE of the int8
  probabilities to a host workspace, FENCE (the controller tracks scratchpad ranges,
  not host memory), LOAD of them as activations, ``P·V`` requantized, STORE.

Scheduling (double buffering): ACT holds two blocks (the next block's LOADs are spread
over the current block's MATMULs), WGT a ring of three weight tiles (or every weight
tile of the job when they all fit, loaded once), PARAM likewise, OUT a ring of up to
four result tiles.  In program order the next MATMUL's weight/parameter LOADs come
before the current MATMUL and each result's STORE after the next MATMUL, so with
in-order dispatch loads, compute and stores overlap.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .attention import AttentionParams, multi_head_attention
from .bf16_gemm import bf16_gemm, split_bytes
from .binary import pack_bits
from .config import NPUConfig
from .conv import ConvGeometry, qconv2d
from .int4 import pack_int4
from .isa import End, Fence, Load, LoadTarget, Matmul, Store, Vector, VectorOp, assemble
from .npu_model import HostMemory, NPUModel
from .precision import MODE_CODES, PACK, SPARSE_K_FACTOR, check_sparsity, k_per_rows
from .sparse_formats import NMMatrix
from .tile_program import GemmJob, ideal_cycles as _gemm_ideal_cycles

__all__ = ["Segment", "OutputSpec", "CompiledProgram", "ProgramPlan", "compile_gemm", "compile_bf16_gemm",
           "compile_conv2d", "compile_attention", "plan_gemm", "plan_conv2d", "ALIGN", "FILL"]

#: Alignment (bytes) of every segment of the memory image.
ALIGN = 64
#: Default byte that output and workspace segments hold before a run.
FILL = 0xA5

_U16 = 0xFFFF
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


# -- the result ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A region of the memory image: ``kind`` is program, input, parameter, workspace or
    output; ``data`` is its content before the run (outputs and workspace: fill bytes)."""
    name: str
    kind: str
    addr: int
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclass(frozen=True)
class OutputSpec:
    """An output tensor: ``shape`` elements of ``dtype`` (``"int8"``/``"int32"``,
    little-endian), row-major and contiguous at ``addr``."""
    name: str
    addr: int
    shape: tuple
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def read(self, memory: HostMemory) -> np.ndarray:
        raw = memory.read(self.addr, self.nbytes)
        dtype = np.dtype(self.dtype).newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).astype(self.dtype).reshape(self.shape)


@dataclass
class CompiledProgram:
    """An NPU program with its memory image, windows and expected outputs.

    To run it: write :meth:`memory` (``base`` .. ``base + size``) into host memory, set
    PROG_ADDR to ``prog_addr`` and the windows to ``read_window``/``write_window``,
    START, wait for DONE, then :meth:`extract` the outputs and compare with
    ``expected``.  Only the bytes of ``destinations`` may change.
    """
    config: NPUConfig
    kind: str
    instructions: list
    prog_addr: int
    base: int
    size: int
    segments: list
    read_window: tuple
    write_window: tuple
    destinations: list
    outputs: dict
    expected: dict
    macs: int
    ideal_cycles: int
    info: dict = field(default_factory=dict)

    @property
    def program(self) -> bytes:
        """The encoded instructions (the program segment's content)."""
        return assemble(self.instructions)

    def memory(self, fill: int = FILL) -> HostMemory:
        """A fresh memory image: every segment, outputs and workspace filled with ``fill``
        (a byte), and zeros between segments."""
        if isinstance(fill, bool) or not isinstance(fill, numbers.Integral) or \
                not 0 <= fill <= 255:
            raise ValueError(f"fill must be a byte value 0..255, not {fill!r}")
        memory = HostMemory(self.base, self.size)
        for seg in self.segments:
            data = seg.data if seg.kind not in ("output", "workspace") else bytes([fill]) * seg.size
            memory.write(seg.addr, data)
        return memory

    def extract(self, memory: HostMemory) -> dict:
        """The output tensors read from ``memory`` after a run."""
        return {name: spec.read(memory) for name, spec in self.outputs.items()}

    def run(self, model: NPUModel | None = None, *, fill: int = FILL):
        """Run on the instruction-level model: ``(RunResult, memory after the run)``."""
        if model is None:
            model = NPUModel(self.config)
        memory = self.memory(fill)
        result = model.run(memory, self.prog_addr, read_window=self.read_window,
                           write_window=self.write_window)
        return result, memory


@dataclass
class ProgramPlan:
    """A kernel's program planned from its shapes alone (no tensor data).

    ``plan_gemm``/``plan_conv2d`` return exactly the instructions and addresses that
    ``compile_gemm``/``compile_conv2d`` give for data of the same shapes and the same
    quantization fields (both run one lowering); ``addresses`` maps each segment name
    (``program``, inputs, parameters, outputs) to its host address.
    """
    config: NPUConfig
    kind: str
    instructions: list
    prog_addr: int
    base: int
    size: int
    addresses: dict
    read_window: tuple
    write_window: tuple
    macs: int
    ideal_cycles: int
    info: dict = field(default_factory=dict)


# -- memory layout ----------------------------------------------------------------------


def _align(value, to=ALIGN):
    return -(-value // to) * to


class _Layout:
    """Places segments in the order program, inputs, parameters, workspace, outputs."""

    ORDER = ("program", "input", "parameter", "workspace", "output")

    def __init__(self, base, program_bytes):
        self.base = base
        self.requests = [("program", "program", program_bytes, 0)]

    def add(self, name, kind, data, *, min_offset=0):
        """``data``: the bytes, or only the size (zero bytes, or addresses only);
        ``min_offset``: the segment must start at least that far above address 0."""
        self.requests.append((name, kind, data if isinstance(data, int) else bytes(data),
                              min_offset))

    def _placed(self):
        cursor = self.base
        placed = []
        for kind in self.ORDER:
            for name, k, data, min_offset in self.requests:
                if k != kind:
                    continue
                addr = _align(max(cursor, min_offset))
                placed.append((name, kind, addr, data))
                size = data if isinstance(data, int) else len(data)
                cursor = addr + size + ALIGN      # a guard gap after every segment
        end = _align(cursor)
        if end > 1 << 32:
            raise ValueError(f"the memory image does not fit 32-bit addresses from base "
                             f"{self.base:#x} ({end - self.base} bytes)")
        return placed, end - self.base

    def addresses(self):
        """``({name: address}, size)`` without building the image."""
        placed, size = self._placed()
        return {name: addr for name, _, addr, _ in placed}, size

    def place(self):
        placed, size = self._placed()
        return [Segment(name, kind, addr, bytes(data) if isinstance(data, int) else data)
                for name, kind, addr, data in placed], size


@dataclass
class _Lowering:
    """A kernel lowered from its shapes: its segments ``(name, kind, bytes, min_offset)``
    and ``emit`` (segment addresses → instructions); the data only fills the segments."""
    kind: str
    segments: list
    emit: object
    macs: int
    ideal_cycles: int
    info: dict


def _emit(lowering, base, data=None):
    """Two passes: count the instructions, place the segments, emit with real addresses.

    ``data`` maps segment names to their bytes (``None``: sizes only, for planning).
    Returns the layout, the addresses, the image size and the instructions.
    """
    names = ["program"] + [name for name, *_ in lowering.segments]
    count = len(lowering.emit(dict.fromkeys(names, 0)))
    layout = _Layout(base, 32 * count)
    for name, kind, size, min_offset in lowering.segments:
        content = size if data is None or name not in data else data[name]
        assert isinstance(content, int) or len(content) == size, name
        layout.add(name, kind, content, min_offset=min_offset)
    addr, size = layout.addresses()
    instructions = lowering.emit(addr)
    assert len(instructions) == count
    return layout, addr, size, instructions


def _plan(config, lowering, base):
    _, addr, size, instructions = _emit(lowering, base)
    ends = {"program": addr["program"] + 32 * len(instructions)}
    ends.update((name, addr[name] + nbytes) for name, _, nbytes, _ in lowering.segments)
    kinds = {name: kind for name, kind, _, _ in lowering.segments}
    read_end = max(end for name, end in ends.items() if kinds.get(name) != "output")
    dests = [(addr[name], ends[name]) for name, kind in kinds.items()
             if kind in ("workspace", "output")]
    write_window = (min(d[0] for d in dests), max(d[1] for d in dests))
    return ProgramPlan(config, lowering.kind, instructions, addr["program"], base, size, addr,
                       (base, read_end), write_window, lowering.macs, lowering.ideal_cycles,
                       lowering.info)


def _build(config, lowering, base, data, outputs, expected):
    """The compiled program of ``lowering`` with the segment contents ``data``."""
    layout, addr, _, instructions = _emit(lowering, base, data)
    segments, size = layout.place()
    segments[0] = Segment("program", "program", addr["program"], assemble(instructions))
    read_end = max(seg.end for seg in segments if seg.kind in ("program", "input", "parameter",
                                                                "workspace"))
    dests = [(seg.addr, seg.end) for seg in segments if seg.kind in ("workspace", "output")]
    write_window = (min(d[0] for d in dests), max(d[1] for d in dests))
    specs = {name: OutputSpec(name, addr[name], shape, dtype)
             for name, (shape, dtype) in outputs.items()}
    return CompiledProgram(config, lowering.kind, instructions, addr["program"], base, size,
                           segments, (base, read_end), write_window, dests, specs, expected,
                           lowering.macs, lowering.ideal_cycles, lowering.info)


# -- scheduling ---------------------------------------------------------------------------


@dataclass
class _Step:
    """One MATMUL and what it needs: its activation block, weight tile, parameters."""
    a_key: object
    a_loads: object           # act base → [Load]
    a_words: int
    w_key: object
    w_loads: object           # wgt base → [Load]
    w_words: int
    p_key: object
    p_loads: object           # param base → [Load]
    matmul: dict              # Matmul fields except the four addresses
    stores: object            # out base → [Store]


class _Slots:
    """Scratchpad placement of keyed tiles: resident (each key once) or a ring."""

    def __init__(self, depth, words, keys, ring_max):
        self.resident = sum(words[k] for k in keys) <= depth
        self.slot = max(words.values())
        self.count = 1 if self.resident else min(ring_max, depth // self.slot)
        self.addr = {}
        self.next_free = 0
        self.holds = {}

    def place(self, step_index, key, words, loads):
        """(address, LOADs to emit) for the tile ``key`` used by step ``step_index``."""
        if self.resident:
            if key in self.addr:
                return self.addr[key], []
            self.addr[key] = self.next_free
            self.next_free += words
            return self.addr[key], loads(self.addr[key])
        slot = step_index % self.count
        base = slot * self.slot
        if self.holds.get(slot) == key:
            return base, []
        self.holds[slot] = key
        return base, loads(base)


def _schedule(config, steps, *, out_depth=None):
    """Instructions of a sequence of MATMUL steps with double buffering, without END.

    The OUT ring of result slots uses words ``[0, out_depth)`` (default: all of OUT)."""
    a_blocks = []
    for s in steps:
        if not a_blocks or a_blocks[-1][0] != s.a_key:
            a_blocks.append((s.a_key, s.a_loads, s.a_words, []))
        a_blocks[-1][3].append(s)
    max_a = max(b[2] for b in a_blocks)
    n_a = 2 if 2 * max_a <= config.act_sp_depth and len(a_blocks) > 1 else 1
    block_of = []
    for i, block in enumerate(a_blocks):
        block_of.extend([i] * len(block[3]))

    w_words = {s.w_key: s.w_words for s in steps}
    p_words = {s.p_key: 3 for s in steps}
    wgt = _Slots(config.wgt_sp_depth, w_words, list(dict.fromkeys(s.w_key for s in steps)), 3)
    par = _Slots(config.param_sp_depth, p_words, list(dict.fromkeys(s.p_key for s in steps)), 3)
    out_slot = max(s.matmul["m_rows"] for s in steps)
    n_out = min(4, (config.out_sp_depth if out_depth is None else out_depth) // out_slot)

    def a_base(i):
        return (i % n_a) * max_a

    prog = list(a_blocks[0][1](a_base(0)))
    w_addr, p_addr = [None] * len(steps), [None] * len(steps)

    def prepare(s):
        w_addr[s], loads = wgt.place(s, steps[s].w_key, steps[s].w_words, steps[s].w_loads)
        p_addr[s], more = par.place(s, steps[s].p_key, 3, steps[s].p_loads)
        return list(loads) + list(more)

    prog += prepare(0)
    # Spread the LOADs of block i + 1 evenly over the steps of block i (double
    # buffering): each part loads while one MATMUL of block i computes.
    pending_a = {}
    for i in range(len(a_blocks) - 1):
        loads = list(a_blocks[i + 1][1](a_base(i + 1)))
        n = len(a_blocks[i][3])
        if n_a == 2:
            cuts = [len(loads) * j // n for j in range(n + 1)]
            pending_a[i] = [loads[cuts[j]:cuts[j + 1]] for j in range(n)]
        else:
            pending_a[i] = [[] for _ in range(n - 1)] + [loads]
    first_step_of = {}
    for s in range(len(steps)):
        first_step_of.setdefault(block_of[s], s)

    early_w = wgt.resident or wgt.count >= 2
    early_p = par.resident or par.count >= 2
    for s, step in enumerate(steps):
        nxt = s + 1 < len(steps)
        if nxt and early_w and early_p:
            prog += prepare(s + 1)
        m = step.matmul
        prog.append(Matmul(act_addr=a_base(block_of[s]), wgt_addr=w_addr[s],
                           out_addr=(s % n_out) * out_slot, param_addr=p_addr[s], **m))
        if nxt and not (early_w and early_p):
            prog += prepare(s + 1)
        i = block_of[s]
        if i in pending_a:
            prog += pending_a[i][s - first_step_of[i]]
        if n_out >= 2:
            if s > 0:
                prog += steps[s - 1].stores(((s - 1) % n_out) * out_slot)
        else:
            prog += step.stores(0)
    if n_out >= 2:
        last = len(steps) - 1
        prog += steps[last].stores((last % n_out) * out_slot)
    return prog


# -- shared lowering helpers ----------------------------------------------------------------


def _rows_loads(target, base, *, addr, rows, row_pitch, row_bytes, word_bytes, pad,
                k_tiles, pieces=1):
    """LOADs of ``rows`` host rows into words ``base + kt·rows + m`` (K tile kt, row m).

    Word (kt, m) holds bytes ``[kt·word_bytes, (kt+1)·word_bytes)`` of row m; bytes past
    ``row_bytes`` are not read (``pad``).  The K tiles are split over about ``pieces``
    LOADs (so that the scheduler can spread them).
    """
    full = min(row_bytes // word_bytes, k_tiles)
    loads = []
    kt = 0
    for count in _balanced(full, min(max(1, pieces), full)) if full else []:
        loads.append(Load(target=target, sp_addr=base + kt * rows, addr=addr + kt * word_bytes,
                          inner_count=rows, outer_count=count, inner_stride=row_pitch,
                          outer_stride=word_bytes, lane_stride=1, lanes=word_bytes, pad=pad))
        kt += count
    if full < k_tiles:
        loads.append(Load(target=target, sp_addr=base + full * rows,
                          addr=addr + full * word_bytes, inner_count=rows, outer_count=1,
                          inner_stride=row_pitch, outer_stride=0, lane_stride=1,
                          lanes=row_bytes - full * word_bytes, pad=pad))
    return loads


def _weight_load(target, base, *, addr, rows, valid_rows, row_pitch, lanes, lane_stride=1):
    """A LOAD of weight rows ``q < rows`` (rows ``≥ valid_rows`` are zero padding)."""
    return Load(target=target, sp_addr=base, addr=addr, inner_count=rows, outer_count=1,
                inner_stride=row_pitch, outer_stride=0, lane_stride=lane_stride, lanes=lanes,
                pad=0, inner_lo=0, inner_hi=min(valid_rows, _U16))


def _param_load(base, *, addr, n_total, lanes):
    """A LOAD of bias, multiplier, shift (three int32 arrays of ``n_total``) into 3 words."""
    return Load(target=LoadTarget.PARAM, sp_addr=base, addr=addr, inner_count=1,
                outer_count=3, inner_stride=0, outer_stride=4 * n_total, lane_stride=4,
                lanes=lanes, pad=0)


def _store(base, *, addr, rows, row_pitch, lanes, elem_bytes):
    return Store(elem_bytes=elem_bytes, sp_addr=base, addr=addr, inner_count=rows,
                 outer_count=1, inner_stride=row_pitch, outer_stride=0, lanes=lanes)


def _balanced(total, parts):
    """``parts`` sizes summing to ``total``, differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _ramped(total, per, least):
    """Block sizes (in units) summing to ``total``, each at most ``per``.

    When more than one block is needed, the first two are smaller (about a third and
    two thirds of ``per``, at least ``least``): the first block's activations are the
    only load the program cannot overlap with compute, and the next block loads while
    the short first one computes.  The rest are balanced.
    """
    if total <= per:
        return [total]
    ramp = []
    for fraction in (1, 2):
        size = min(per, max(least, -(-per * fraction // 3)))
        if sum(ramp) + size >= total - least:
            break
        ramp.append(size)
    rest = total - sum(ramp)
    return ramp + _balanced(rest, -(-rest // per))


def _block_limit(config, k_tiles, what, *, out_ring=True):
    """Largest M block: ACT for two blocks (one if need be), ``acc_depth``, and (with
    ``out_ring``) half of OUT, the ring the results of two blocks alternate in."""
    cap = min(config.acc_depth, _U16)
    if out_ring:
        cap = min(cap, max(1, config.out_sp_depth // 2))
    for buffers in (2, 1):
        per = config.act_sp_depth // (buffers * k_tiles)
        if per >= 1:
            return min(cap, per)
    raise ValueError(f"{what} needs {k_tiles} activation words per row, more than the "
                     f"activation scratchpad holds (act_sp_depth={config.act_sp_depth})")


def _check_weights_fit(config, k_tiles, what):
    if k_tiles * config.rows > config.wgt_sp_depth or k_tiles > _U16:
        raise ValueError(f"{what} needs {k_tiles * config.rows} weight words per output tile, "
                         f"more than the weight scratchpad holds "
                         f"(wgt_sp_depth={config.wgt_sp_depth})")


def _tiles(matrix, columns, width):
    """int8 ``[len(columns), rows, width]``: the column ranges ``(first, count)`` of
    ``matrix``, each zero-padded to ``width`` columns (one contiguous tile each)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    out = np.zeros((len(columns), matrix.shape[0], width), dtype=np.int64)
    for t, (first, count) in enumerate(columns):
        out[t, :, :count] = matrix[:, first:first + count]
    return out.astype(np.int8)


def _i32(values):
    return np.asarray(values, dtype=np.int64).astype("<i4").tobytes()


def _base(base):
    if isinstance(base, bool) or not isinstance(base, numbers.Integral) or \
            not 0 <= base < (1 << 32) or base % ALIGN:
        raise ValueError(f"base must be a {ALIGN}-byte aligned 32-bit address, not {base!r}")
    return int(base)


# -- GEMM -------------------------------------------------------------------------------


def _gemm_lowering(config, M, K, N, *, mode, sparsity, raw, a_zero_point, out_zero_point,
                   out_min, out_max):
    """The GEMM program from its shapes and quantization fields (see :func:`compile_gemm`)."""
    sparse = sparsity is not None
    if mode not in config.modes:
        raise ValueError(f"mode must be one of the built modes {list(config.modes)}, "
                         f"not {mode!r}")
    if sparse and not config.sparse_2_4:
        raise ValueError(f"sparsity {sparsity!r} needs a configuration with sparse_2_4")
    for name, value in (("M", M), ("K", K), ("N", N)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if mode == "bf16" and not raw:
        raise ValueError("mode 'bf16' needs raw=True (its results are FP32)")
    R, C = config.rows, config.cols
    factor = SPARSE_K_FACTOR if sparse else 1
    kpt = k_per_rows(R, mode) * factor
    k_tiles = -(-K // kpt)
    n_tiles = -(-N // C)
    _check_weights_fit(config, k_tiles, f"K={K}")
    m_limit = _block_limit(config, k_tiles, f"K={K}")
    if N > _U16 or M > (1 << 24):
        raise ValueError(f"N must be at most {_U16} and M at most {1 << 24}, not N={N}, M={M}")

    # Bytes of an activation row (packed along K; a BF16 element takes two).
    a_row = 2 * K if mode == "bf16" else -(-K // PACK[mode])
    word_bytes = R * factor
    eb = 4 if raw else 1
    tile_bytes = k_tiles * R * C
    segments = [("a", "input", M * a_row, 0), ("w", "parameter", n_tiles * tile_bytes, 0)]
    if sparse:
        segments.append(("widx", "parameter", n_tiles * tile_bytes, 0))
    segments += [("params", "parameter", 3 * 4 * N, 0), ("y", "output", M * N * eb, 0)]

    blocks = _ramped(M, m_limit, min(m_limit, 2 * R + 1))
    pad = a_zero_point if mode == "int8" else 0
    fields = dict(mode=MODE_CODES[mode], sparse=int(sparse), raw=int(raw), k_tiles=k_tiles,
                  k_valid_last=K - (k_tiles - 1) * kpt,
                  a_zero_point=0 if mode in ("binary", "bf16") else a_zero_point,
                  out_zero_point=out_zero_point, out_min=out_min, out_max=out_max)

    def emit(addr):
        steps = []
        m0 = 0
        for b, mb in enumerate(blocks):
            a_loads = (lambda base, m0=m0, mb=mb: _rows_loads(
                LoadTarget.ACT, base, addr=addr["a"] + m0 * a_row, rows=mb, row_pitch=a_row,
                row_bytes=a_row, word_bytes=word_bytes, pad=pad, k_tiles=k_tiles,
                pieces=n_tiles))
            for nt in range(n_tiles):
                n0 = nt * C
                lanes = min(C, N - n0)

                def w_loads(base, nt=nt):
                    loads = [_weight_load(LoadTarget.WGT, base, addr=addr["w"] + nt * tile_bytes,
                                          rows=k_tiles * R, valid_rows=k_tiles * R, row_pitch=C,
                                          lanes=C)]
                    if sparse:
                        loads.append(_weight_load(
                            LoadTarget.WIDX, base, addr=addr["widx"] + nt * tile_bytes,
                            rows=k_tiles * R, valid_rows=k_tiles * R, row_pitch=C, lanes=C))
                    return loads

                steps.append(_Step(
                    a_key=b, a_loads=a_loads, a_words=mb * k_tiles,
                    w_key=nt, w_loads=w_loads, w_words=k_tiles * R,
                    p_key=nt, p_loads=(lambda base, n0=n0, lanes=lanes: [_param_load(
                        base, addr=addr["params"] + 4 * n0, n_total=N, lanes=lanes)]),
                    matmul=dict(fields, m_rows=mb),
                    stores=(lambda base, m0=m0, mb=mb, n0=n0, lanes=lanes: [_store(
                        base, addr=addr["y"] + (m0 * N + n0) * eb, rows=mb, row_pitch=N * eb,
                        lanes=lanes, elem_bytes=eb)])))
            m0 += mb
        return _schedule(config, steps) + [End()]

    return _Lowering("gemm", segments, emit, M * K * N,
                     _gemm_ideal_cycles(config, M, K, N, mode, sparsity),
                     {"m_blocks": blocks, "k_tiles": k_tiles, "n_tiles": n_tiles})


def compile_gemm(config, job: GemmJob, *, base: int = 0) -> CompiledProgram:
    """The program of one GEMM (a :class:`~npugen.golden.tile_program.GemmJob`).

    Inputs: ``a`` (``M×K`` int8 row-major, or packed along K: int4 ``M×⌈K/2⌉``, binary
    ``M×⌈K/8⌉`` bytes); parameters: ``w``, the weights zero-padded to whole tiles,
    packed along K into weight-row bytes (int4 two per byte, binary eight; 2:4 the
    compressed values, with their 2-bit indices in ``widx``) and stored tile by tile
    (``[n_tiles][k_tiles·rows][cols]``, each tile contiguous), and ``params``
    (``bias``, ``multiplier``, ``shift``: int32 × N each); output ``y``: ``M×N`` int8
    (int32 for ``raw``), row-major.
    """
    config = NPUConfig.check(config)
    if not isinstance(job, GemmJob):
        raise TypeError(f"job must be a GemmJob, not {job!r}")
    base = _base(base)
    mode, sparse = job.mode, job.sparsity is not None
    M, K, N = job.shape
    lowering = _gemm_lowering(config, M, K, N, mode=mode, sparsity=job.sparsity, raw=job.raw,
                              a_zero_point=job.a_zero_point, out_zero_point=job.out_zero_point,
                              out_min=job.out_min, out_max=job.out_max)
    R, C = config.rows, config.cols
    k_tiles, n_tiles = lowering.info["k_tiles"], lowering.info["n_tiles"]
    kpt = R * PACK[mode] * (SPARSE_K_FACTOR if sparse else 1)

    # Host layouts.
    values_a = np.asarray(job.a, dtype=np.int64)
    values_w = np.asarray(job.w, dtype=np.int64)
    if mode == "int8":
        a_bytes = values_a.astype(np.int8)
    elif mode == "int4":
        a_bytes = pack_int4(values_a, axis=1)
    else:
        a_bytes = pack_bits(values_a, axis=1)
    params = np.concatenate([job.bias, job.multiplier, job.shift])
    # Weights padded to whole tiles (zeros; binary padding is masked by k_valid), packed
    # along K into weight-row bytes, and stored tile by tile: N tile nt is the contiguous
    # block [nt][k_tiles·rows][cols].
    w_pad = np.zeros((k_tiles * kpt, n_tiles * C), dtype=np.int64)
    w_pad[:K, :N] = values_w
    if sparse:
        packed = NMMatrix.from_dense(w_pad)
        w_rows_bytes, widx_rows = packed.values, packed.indices
    else:
        w_rows_bytes = {"int8": lambda w: w, "int4": lambda w: pack_int4(w, axis=0),
                        "binary": lambda w: pack_bits(np.where(w < 0, -1, 1), axis=0)}[mode](w_pad)
        widx_rows = None
    columns = [(nt * C, C) for nt in range(n_tiles)]
    data = {"a": a_bytes.tobytes(), "w": _tiles(w_rows_bytes, columns, C).tobytes(),
            "params": _i32(params)}
    if sparse:
        data["widx"] = _tiles(widx_rows, columns, C).tobytes()

    expected = job.reference(config.acc_bits).astype(np.int32 if job.raw else np.int8)
    return _build(config, lowering, base, data,
                  {"y": ((M, N), "int32" if job.raw else "int8")}, {"y": expected})


def compile_bf16_gemm(config, a_bits, w_bits, *, base: int = 0) -> CompiledProgram:
    """The program of a BF16 GEMM with FP32 results (``mode`` bf16).

    ``a_bits`` (M×K) and ``w_bits`` (K×N) are BF16 encodings.  Inputs: ``a``, M rows of
    K little-endian BF16 values; parameters: ``w``, the weights zero-padded to whole
    tiles, weight row j of a tile split over weight rows 2j (low bytes) and 2j+1 (high
    bytes), stored tile by tile like :func:`compile_gemm`'s, and ``params`` (zeros: no
    bias); output ``y``: M×N FP32 encodings (``int32`` bit patterns), in the order of
    :func:`~npugen.golden.bf16_gemm.bf16_gemm`.
    """
    config = NPUConfig.check(config)
    base = _base(base)
    a = np.asarray(a_bits)
    w = np.asarray(w_bits)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"a_bits and w_bits must be M×K and K×N, not {a.shape} and {w.shape}")
    (M, K), N = a.shape, w.shape[1]
    lowering = _gemm_lowering(config, M, K, N, mode="bf16", sparsity=None, raw=True,
                              a_zero_point=0, out_zero_point=0, out_min=-128, out_max=127)
    C = config.cols
    k_tiles, n_tiles = lowering.info["k_tiles"], lowering.info["n_tiles"]
    kpt = k_per_rows(config.rows, "bf16")
    expected = bf16_gemm(a, w, kpt).view(np.int32)       # validates the encodings
    w_pad = np.zeros((k_tiles * kpt, n_tiles * C), dtype=np.uint16)
    w_pad[:K, :N] = w
    columns = [(nt * C, C) for nt in range(n_tiles)]
    data = {"a": a.astype("<u2").tobytes(),
            "w": _tiles(split_bytes(w_pad, 0), columns, C).tobytes(),
            "params": _i32(np.zeros(3 * N, dtype=np.int64))}
    return _build(config, lowering, base, data, {"y": ((M, N), "int32")}, {"y": expected})


def _int8_field(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [-128, 127], not {value!r}")
    if not -128 <= value <= 127:
        raise ValueError(f"{name} must be an integer in [-128, 127], not {value!r}")
    return int(value)


def _quant_fields(x_name, zero_point, out_zero_point, out_min, out_max):
    fields = {x_name: _int8_field(x_name, zero_point),
              "out_zero_point": _int8_field("out_zero_point", out_zero_point),
              "out_min": _int8_field("out_min", out_min),
              "out_max": _int8_field("out_max", out_max)}
    if fields["out_min"] > fields["out_max"]:
        raise ValueError(f"out_min ({out_min}) must not exceed out_max ({out_max})")
    return fields


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def plan_gemm(config, m: int, k: int, n: int, *, mode: str = "int8", sparsity=None,
              raw: bool = False, a_zero_point: int = 0, out_zero_point: int = 0,
              out_min: int = -128, out_max: int = 127, base: int = 0) -> ProgramPlan:
    """The program :func:`compile_gemm` gives for an ``m×k×n`` GEMM, without data.

    Same instructions and addresses as ``compile_gemm`` of a :class:`GemmJob` of these
    shapes, mode, sparsity, ``raw`` and quantization fields.
    """
    config = NPUConfig.check(config)
    m, k, n = (_positive_int(name, v) for name, v in (("m", m), ("k", k), ("n", n)))
    if not isinstance(mode, str) or mode not in MODE_CODES:
        raise ValueError(f"mode must be one of {', '.join(MODE_CODES)}, not {mode!r}")
    check_sparsity(sparsity, mode)
    if not isinstance(raw, bool):
        raise TypeError(f"raw must be a bool, not {raw!r}")
    fields = _quant_fields("a_zero_point", a_zero_point, out_zero_point, out_min, out_max)
    base = _base(base)
    return _plan(config, _gemm_lowering(config, m, k, n, mode=mode, sparsity=sparsity, raw=raw,
                                        **fields), base)


# -- conv2d -------------------------------------------------------------------------------


def _conv_blocks(geom, m_limit, rows):
    """Pixel ranges ``[p0, p1)`` of the output (flattened n, oy, ox): whole output rows
    when a row fits, else pieces of rows."""
    rows_total = geom.n * geom.h_out
    wo = geom.w_out
    if wo <= m_limit:
        per = m_limit // wo
        ranges, r0 = [], 0
        least = min(per, -(-(2 * rows + 1) // wo))      # a block of at least 2·rows + 1 pixels
        for count in _ramped(rows_total, per, least):
            ranges.append((r0 * wo, (r0 + count) * wo))
            r0 += count
        return ranges
    ranges = []
    for r in range(rows_total):
        p = r * wo
        for count in _balanced(wo, -(-wo // m_limit)):
            ranges.append((p, p + count))
            p += count
    return ranges


def _conv_pieces(geom, p0, p1):
    """Rectangles ``(n, oy, rows, ox, cols)`` of output pixels covering ``[p0, p1)`` in order."""
    pieces, p = [], p0
    ho, wo = geom.h_out, geom.w_out
    while p < p1:
        n, rem = divmod(p, ho * wo)
        oy, ox = divmod(rem, wo)
        if ox == 0 and p1 - p >= wo:
            rows = min((p1 - p) // wo, ho - oy)
            pieces.append((n, oy, rows, 0, wo))
            p += rows * wo
        else:
            cols = min(wo - ox, p1 - p)
            pieces.append((n, oy, 1, ox, cols))
            p += cols
    return pieces


def _window(count, start, step, offset, size):
    """Indices ``i < count`` with ``0 ≤ (start + i)·step + offset < size``: ``(lo, hi)``."""
    inside = [i for i in range(count) if 0 <= (start + i) * step + offset < size]
    if not inside:
        return 0, 0
    return inside[0], inside[-1] + 1


def compile_conv2d(config, x, w, *, x_zero_point, bias, multiplier, shift, out_zero_point,
                   out_min=-128, out_max=127, stride=1, padding=0, dilation=1, groups=1,
                   base: int = 0) -> CompiledProgram:
    """The program of :func:`npugen.golden.conv.qconv2d` (int8, NHWC) on ``config``.

    Inputs: ``x`` (``[N, H, W, C_in]`` int8); parameters: ``w``, the weights as
    ``k_tiles·rows`` weight rows (tap, then each group's input channels padded to a
    multiple of ``rows``) stored tile by tile (one ``[k_tiles·rows][cols]`` tile per group
    and N tile of its output channels), and ``params`` (``bias``/``multiplier``/``shift``:
    int32 × C_out); output ``y``: ``[N, H_out, W_out, C_out]`` int8.
    """
    config = NPUConfig.check(config)
    base = _base(base)
    expected = qconv2d(x, w, x_zero_point=x_zero_point, bias=bias, multiplier=multiplier,
                       shift=shift, out_zero_point=out_zero_point, out_min=out_min,
                       out_max=out_max, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, acc_bits=config.acc_bits)
    geom = ConvGeometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    lowering = _conv_lowering(config, geom, x_zero_point=int(x_zero_point),
                              out_zero_point=out_zero_point, out_min=out_min, out_max=out_max)
    R, C = config.rows, config.cols
    cg, og, G = geom.c_in_group, geom.c_out_group, geom.groups
    chunks = -(-cg // R)
    taps = geom.kh * geom.kw
    k_tiles = taps * chunks
    cout = n = geom.c_out

    # Weights: row q = (tap, chunk, lane) of group g's K, column = output channel.
    wk = np.asarray(w, dtype=np.int64).reshape(taps, cg, cout)
    w_mat = np.zeros((taps, chunks * R, cout), dtype=np.int64)
    w_mat[:, :cg, :] = wk
    w_mat = w_mat.reshape(k_tiles * R, cout)
    # One weight tile per (group, N tile of the group's output channels), contiguous.
    tile_cols = [(g * og + n0, min(C, og - n0)) for g in range(G) for n0 in range(0, og, C)]
    params = np.concatenate([np.broadcast_to(np.asarray(v, dtype=np.int64), (n,))
                             for v in (bias, multiplier, shift)])
    data = {"x": np.ascontiguousarray(x).tobytes(), "w": _tiles(w_mat, tile_cols, C).tobytes(),
            "params": _i32(params)}
    return _build(config, lowering, base, data, {"y": (geom.out_shape, "int8")},
                  {"y": expected})


def _conv_lowering(config, geom, *, x_zero_point, out_zero_point, out_min, out_max):
    """The conv2d program from its geometry and quantization fields (see
    :func:`compile_conv2d`)."""
    R, C = config.rows, config.cols
    cg, og, G = geom.c_in_group, geom.c_out_group, geom.groups
    chunks = -(-cg // R)
    taps = geom.kh * geom.kw
    k_tiles = taps * chunks
    what = f"a {geom.kh}×{geom.kw} kernel with {cg} input channels per group"
    _check_weights_fit(config, k_tiles, what)
    m_limit = _block_limit(config, k_tiles, what)
    if geom.c_out > _U16:
        raise ValueError(f"C_out must be at most {_U16}, not {geom.c_out}")
    cout = geom.c_out
    zp = int(x_zero_point)
    tile_cols = [(g * og + n0, min(C, og - n0)) for g in range(G) for n0 in range(0, og, C)]
    tile_of = {first: t for t, (first, _) in enumerate(tile_cols)}
    tile_bytes = k_tiles * R * C
    n = cout
    top, _, left, _ = geom.padding
    sh, sw = geom.stride
    dh, dw = geom.dilation
    row_bytes = geom.w * geom.c_in
    # The LOAD base address of the first output pixel's out-of-image taps may lie below
    # the tensor: keep x high enough that every base address is non-negative.
    headroom = (top * geom.w + left) * geom.c_in
    segments = [("x", "input", geom.n * geom.h * geom.w * geom.c_in, headroom),
                ("w", "parameter", len(tile_cols) * tile_bytes, 0),
                ("params", "parameter", 3 * 4 * n, 0),
                ("y", "output", math.prod(geom.out_shape), 0)]

    blocks = _conv_blocks(geom, m_limit, R)
    fields = dict(mode=MODE_CODES["int8"], sparse=0, raw=0, k_tiles=k_tiles, k_valid_last=R,
                  a_zero_point=zp, out_zero_point=out_zero_point, out_min=out_min,
                  out_max=out_max)

    def a_loads_for(addr, g, p0, p1):
        mb = p1 - p0

        def loads(sp_base):
            result = []
            for (nn, oy, rows, ox, cols) in _conv_pieces(geom, p0, p1):
                offset = (nn * geom.h_out + oy) * geom.w_out + ox - p0
                for ky in range(geom.kh):
                    iy0 = oy * sh - top + ky * dh
                    o_lo, o_hi = _window(rows, oy, sh, -top + ky * dh, geom.h)
                    for kx in range(geom.kw):
                        ix0 = ox * sw - left + kx * dw
                        i_lo, i_hi = _window(cols, ox, sw, -left + kx * dw, geom.w)
                        pixel = addr["x"] + nn * geom.h * row_bytes + iy0 * row_bytes + \
                            ix0 * geom.c_in + g * cg
                        for ch in range(chunks):
                            kt = (ky * geom.kw + kx) * chunks + ch
                            result.append(Load(
                                target=LoadTarget.ACT, sp_addr=sp_base + kt * mb + offset,
                                addr=pixel + ch * R, inner_count=cols, outer_count=rows,
                                inner_stride=sw * geom.c_in, outer_stride=sh * row_bytes,
                                lane_stride=1, lanes=min(R, cg - ch * R), pad=zp,
                                inner_lo=i_lo, inner_hi=i_hi, outer_lo=o_lo, outer_hi=o_hi))
            return result
        return loads

    def emit(addr):
        steps = []
        for g in range(G):
            for b, (p0, p1) in enumerate(blocks):
                mb = p1 - p0
                a_loads = a_loads_for(addr, g, p0, p1)
                for n0 in range(0, og, C):
                    col = g * og + n0
                    lanes = min(C, og - n0)
                    steps.append(_Step(
                        a_key=(g, b), a_loads=a_loads, a_words=mb * k_tiles,
                        w_key=col, w_words=k_tiles * R,
                        w_loads=(lambda base, col=col: [_weight_load(
                            LoadTarget.WGT, base, addr=addr["w"] + tile_of[col] * tile_bytes,
                            rows=k_tiles * R, valid_rows=k_tiles * R, row_pitch=C, lanes=C)]),
                        p_key=col, p_loads=(lambda base, col=col, lanes=lanes: [_param_load(
                            base, addr=addr["params"] + 4 * col, n_total=n, lanes=lanes)]),
                        matmul=dict(fields, m_rows=mb),
                        stores=(lambda base, p0=p0, mb=mb, col=col, lanes=lanes: [_store(
                            base, addr=addr["y"] + p0 * cout + col, rows=mb, row_pitch=cout,
                            lanes=lanes, elem_bytes=1)])))
        return _schedule(config, steps) + [End()]

    return _Lowering("conv2d", segments, emit, geom.macs,
                     math.ceil(geom.macs / config.peak_macs_per_cycle("int8")),
                     {"m_blocks": [p1 - p0 for p0, p1 in blocks], "k_tiles": k_tiles,
                      "geometry": geom})


def plan_conv2d(config, x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1,
                x_zero_point: int = 0, out_zero_point: int = 0, out_min: int = -128,
                out_max: int = 127, base: int = 0) -> ProgramPlan:
    """The program :func:`compile_conv2d` gives for ``x`` of ``x_shape`` (``[N, H, W,
    C_in]``) and ``w`` of ``w_shape`` (``[kh, kw, C_in/groups, C_out]``), without data."""
    config = NPUConfig.check(config)
    for name, shape in (("x_shape", x_shape), ("w_shape", w_shape)):
        if not isinstance(shape, (tuple, list)) or len(shape) != 4:
            raise ValueError(f"{name} must be 4 positive integers, not {shape!r}")
        for v in shape:
            _positive_int(name, v)
    geom = ConvGeometry(tuple(x_shape), tuple(w_shape), stride=stride, padding=padding,
                        dilation=dilation, groups=groups)
    fields = _quant_fields("x_zero_point", x_zero_point, out_zero_point, out_min, out_max)
    base = _base(base)
    return _plan(config, _conv_lowering(config, geom, **fields), base)


# -- attention ------------------------------------------------------------------------------


def compile_attention(config, q, k, v, params: AttentionParams, *, heads: int = 1,
                      base: int = 0) -> CompiledProgram:
    """The program of :func:`npugen.golden.attention.multi_head_attention` on ``config``.

    Inputs: ``q`` ``[S_q, heads·d]``, ``k`` ``[S_k, heads·d]``, ``v`` ``[S_k, heads·d_v]``
    (int8, row-major); parameters: the two requantization parameter sets; workspace:
    the int8 probabilities of every head (``[heads, S_q, n_tiles·cols]``); output ``y``
    ``[S_q, heads·d_v]`` int8.
    """
    config = NPUConfig.check(config)
    base = _base(base)
    expected = multi_head_attention(q, k, v, params, heads=heads, acc_bits=config.acc_bits)
    R, C = config.rows, config.cols
    sq, width = q.shape
    sk, width_v = v.shape
    d, dv = width // heads, width_v // heads
    n_tiles = -(-sk // C)              # score words per row
    kq = -(-d // R)                    # K tiles of Q·Kᵀ
    kv = -(-sk // R)                   # K tiles of P·V
    v_tiles = -(-dv // C)
    if sk > 0xFFFF:
        raise ValueError(f"S_k must be at most {0xFFFF} (the softmax's n_valid), not {sk}")
    if 2 * (kq + kv) * R > config.wgt_sp_depth or max(kq, kv) > _U16:
        raise ValueError(f"attention with d={d} and S_k={sk} needs {2 * (kq + kv) * R} weight "
                         f"words, more than the weight scratchpad holds "
                         f"(wgt_sp_depth={config.wgt_sp_depth})")
    if config.param_sp_depth < 6:
        raise ValueError(f"attention needs 6 parameter words, not param_sp_depth="
                         f"{config.param_sp_depth}")
    half = config.act_sp_depth // 2
    out_words = 2 * n_tiles + 2 if n_tiles > 1 else n_tiles + 2
    mb_limit = min(config.acc_depth, _U16, half // kq, half // kv,
                   config.out_sp_depth // out_words)
    if mb_limit < 1:
        raise ValueError(f"attention with d={d} and S_k={sk} does not fit the scratchpads of "
                         f"this configuration (act_sp_depth={config.act_sp_depth}, "
                         f"out_sp_depth={config.out_sp_depth})")
    blocks = _balanced(sq, -(-sq // mb_limit))
    mb_max = max(blocks)
    sk_pad = n_tiles * C
    # Scratchpad regions.
    act_q, act_p = 0, half
    wgt_k = [0, kq * R]
    wgt_v = [2 * kq * R, 2 * kq * R + kv * R]
    par_raw, par_out = 0, 3
    out_s = 0                                           # raw scores, N tile nt at nt·mb
    out_r = n_tiles * mb_max if n_tiles > 1 else 0      # row-major scores / probabilities
    out_y = [out_r + n_tiles * mb_max, out_r + n_tiles * mb_max + mb_max]
    param_data = np.zeros((2, 3, C), dtype=np.int64)
    param_data[1, 1, :] = params.out_multiplier
    param_data[1, 2, :] = params.out_shift

    data = {"q": np.ascontiguousarray(q).tobytes(), "k": np.ascontiguousarray(k).tobytes(),
            "v": np.ascontiguousarray(v).tobytes(), "params": _i32(param_data.ravel())}
    segments = [(name, "input", len(data[name]), 0) for name in ("q", "k", "v")]
    segments += [("params", "parameter", len(data["params"]), 0),
                 ("p", "workspace", heads * sq * sk_pad, 0), ("y", "output", sq * width_v, 0)]

    def emit(addr):
        prog = [Load(target=LoadTarget.PARAM, sp_addr=par_raw, addr=addr["params"],
                     inner_count=1, outer_count=3, outer_stride=4 * C, lane_stride=4, lanes=C),
                Load(target=LoadTarget.PARAM, sp_addr=par_out, addr=addr["params"] + 12 * C,
                     inner_count=1, outer_count=3, outer_stride=4 * C, lane_stride=4, lanes=C)]
        job = 0
        for h in range(heads):
            m0 = 0
            for mb in blocks:
                # Scores: Q block · Kᵀ, raw, one MATMUL per N tile of keys.
                prog += _rows_loads(LoadTarget.ACT, act_q, addr=addr["q"] + m0 * width + h * d,
                                    rows=mb, row_pitch=width, row_bytes=d, word_bytes=R, pad=0,
                                    k_tiles=kq)
                for nt in range(n_tiles):
                    n0 = nt * C
                    slot = wgt_k[(job + nt) % 2]
                    # Kᵀ: word (kt, r) lane c = k[n0 + c, h·d + kt·R + r] (lanes gathered
                    # across rows of k).
                    prog.append(_weight_load(LoadTarget.WGT, slot,
                                             addr=addr["k"] + n0 * width + h * d,
                                             rows=kq * R, valid_rows=d, row_pitch=1,
                                             lanes=min(C, sk - n0), lane_stride=width))
                    prog.append(Matmul(mode=0, raw=1, m_rows=mb, k_tiles=kq,
                                       k_valid_last=d - (kq - 1) * R, act_addr=act_q,
                                       wgt_addr=slot, out_addr=out_s + nt * mb,
                                       param_addr=par_raw))
                job += n_tiles
                if n_tiles > 1:
                    for nt in range(n_tiles):
                        prog.append(Vector(op=VectorOp.CLAMP, count=mb, src=out_s + nt * mb,
                                           dst=out_r + nt, n_words=1, n_valid=1, src_stride=1,
                                           dst_stride=n_tiles))
                prog.append(Vector(op=VectorOp.SOFTMAX, count=mb, src=out_r, dst=out_r,
                                   n_words=n_tiles, n_valid=sk, src_stride=n_tiles,
                                   dst_stride=n_tiles, multiplier=params.softmax_multiplier,
                                   shift=params.softmax_shift))
                ws = addr["p"] + (h * sq + m0) * sk_pad
                prog.append(Store(elem_bytes=1, sp_addr=out_r, addr=ws, inner_count=n_tiles,
                                  outer_count=mb, inner_stride=C, outer_stride=sk_pad,
                                  lanes=C))
                prog.append(Fence())     # the probabilities go through host memory
                prog += _rows_loads(LoadTarget.ACT, act_p, addr=ws, rows=mb, row_pitch=sk_pad,
                                    row_bytes=sk, word_bytes=R, pad=0, k_tiles=kv)
                for vt in range(v_tiles):
                    n0 = vt * C
                    lanes = min(C, dv - n0)
                    slot = wgt_v[vt % 2]
                    prog.append(_weight_load(LoadTarget.WGT, slot,
                                             addr=addr["v"] + h * dv + n0, rows=kv * R,
                                             valid_rows=sk, row_pitch=width_v, lanes=lanes))
                    y_slot = out_y[vt % 2]
                    prog.append(Matmul(mode=0, m_rows=mb, k_tiles=kv,
                                       k_valid_last=sk - (kv - 1) * R, act_addr=act_p,
                                       wgt_addr=slot, out_addr=y_slot, param_addr=par_out,
                                       out_zero_point=params.out_zero_point,
                                       out_min=params.out_min, out_max=params.out_max))
                    prog.append(_store(y_slot, addr=addr["y"] + m0 * width_v + h * dv + n0,
                                       rows=mb, row_pitch=width_v, lanes=lanes, elem_bytes=1))
                m0 += mb
        return prog + [End()]

    macs = heads * (sq * d * sk + sq * sk * dv)
    lowering = _Lowering("attention", segments, emit, macs,
                         math.ceil(macs / config.peak_macs_per_cycle("int8")),
                         {"m_blocks": blocks, "heads": heads})
    return _build(config, lowering, base, data, {"y": ((sq, width_v), "int8")},
                  {"y": expected})
