"""Instruction-level model of the NPU: executes a program exactly as ``docs/ISA.md`` says.

The model runs one instruction after the other (the hardware overlaps them, but its
hazard checks make the result that of sequential execution).  The scratchpads are NumPy
arrays owned by :class:`NPUModel` and keep their contents from one run to the next, as
the hardware's do; host memory is a :class:`HostMemory` (a bytearray at a base address).

* :func:`check_instruction` is the controller's static validation (fields, features,
  scratchpad ranges): it returns the error code and detail of a decoded instruction,
  or ``None``.  When an instruction has several static errors, the first of
  ILLEGAL_OPCODE, FEATURE_NOT_BUILT, BAD_FIELD, BAD_SP_ADDRESS is reported.
* :func:`instruction_ranges` gives the scratchpad ranges an instruction reads and
  writes (the table of "Execution and dependencies"), which the controller's hazard
  checks compare.
* MATMUL is the GEMM core's arithmetic on the scratchpad words: int8 (zero-point
  corrected activations), int4 (two nibbles per lane, low first), binary
  (``2·popcount(XNOR) − k_valid`` masked by ``k_valid``), 2:4 compressed weights
  (row ``r`` of a tile selects activation lane ``4·(r // 2) + WIDX``); the sum wraps at
  ``acc_bits``, the bias joins it at that width, then :mod:`npugen.golden.quant`
  requantization (or ``raw``).
* VECTOR is :func:`npugen.golden.vector.vector_op` on the rows of OUT.

Run-time errors: a LOAD or STORE checks its words in order (outer, then inner index);
the first word with a failing lane decides the code: BAD_HOST_ADDRESS when a lane lies
outside the window, else MISALIGNED, else an AXI error (a lane outside the bytes of the
:class:`HostMemory`: the memory answers with an error response).  The words before it
have been written.  A MATMUL's data errors (``CORE``) are checked before anything is
written, in the order BAD_ZERO_POINT, BAD_SPARSE_INDEX (K tiles in order), BAD_SHIFT.
After an error the program stops; scratchpad contents are then unspecified, and the
hardware, which aborts work in flight, may have written less of host memory (never
anything outside the write window).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .config import NPUConfig
from .isa import (INSTRUCTION_BYTES, CoreError, End, Fence, IllegalInstruction, Load,
                  LoadTarget, Matmul, NPUError, Opcode, Store, Vector, VectorOp, decode)
from .bf16_gemm import bf16_gemm, join_bytes
from .precision import MODES, SPARSE_K_FACTOR, k_per_rows
from .quant import _mbqm
from .vector import TO_BF16_OPS, VECTOR_OPS, pack_words, vector_op

__all__ = ["HostMemory", "RunResult", "NPUModel", "ModelLimitError", "check_instruction",
           "instruction_ranges", "act_lanes", "word_lanes", "sp_depth"]

_ADDRESS_LIMIT = 1 << 32


class ModelLimitError(RuntimeError):
    """A run executed more instructions than its ``max_instructions``."""


class HostMemory:
    """Byte-addressed host memory: ``size`` bytes at addresses ``[base, base + size)``.

    ``data`` is the backing ``bytearray``.  Reading or writing an address outside it is
    what an AXI subordinate answers with an error response (AXI_READ_ERROR /
    AXI_WRITE_ERROR in the NPU).
    """

    def __init__(self, base: int, size: int, data=None):
        for name, value in (("base", base), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise TypeError(f"{name} must be a non-negative integer, not {value!r}")
        if base + size > _ADDRESS_LIMIT:
            raise ValueError(f"base + size must not exceed 2**32, not {base + size:#x}")
        self.base = int(base)
        if data is None:
            self.data = bytearray(size)
        else:
            self.data = bytearray(data)
            if len(self.data) != size:
                raise ValueError(f"data must be {size} bytes long, not {len(self.data)}")

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def limit(self) -> int:
        """First address above the memory."""
        return self.base + len(self.data)

    def contains(self, addr: int, length: int = 1) -> bool:
        return self.base <= addr and addr + length <= self.limit

    def _offset(self, addr, length):
        if not self.contains(addr, length):
            raise ValueError(f"addr {addr:#x} (+{length} bytes) is outside the memory "
                             f"[{self.base:#x}, {self.limit:#x})")
        return addr - self.base

    def read(self, addr: int, length: int) -> bytes:
        offset = self._offset(addr, length)
        return bytes(self.data[offset:offset + length])

    def write(self, addr: int, data) -> None:
        data = bytes(data)
        offset = self._offset(addr, len(data))
        self.data[offset:offset + len(data)] = data

    def array(self) -> np.ndarray:
        """The bytes as a uint8 array sharing the memory."""
        return np.frombuffer(self.data, dtype=np.uint8)

    def copy(self) -> "HostMemory":
        return HostMemory(self.base, self.size, self.data)


@dataclass(frozen=True)
class RunResult:
    """Outcome of :meth:`NPUModel.run`.

    ``status`` is ``"done"`` (END reached) or ``"error"``; ``error``/``detail`` are the
    ERROR register fields; ``pc`` is the byte address of the END or of the failing
    instruction; ``retired`` counts completed instructions (FENCE and END included).
    """
    status: str
    error: NPUError
    detail: int
    pc: int
    retired: int

    @property
    def ok(self) -> bool:
        return self.status == "done"


# -- static checks --------------------------------------------------------------------


def act_lanes(config) -> int:
    """int8 lanes of an ACT word: ``rows``, ``2·rows`` with ``sparse_2_4``."""
    return config.rows * (SPARSE_K_FACTOR if config.sparse_2_4 else 1)


def word_lanes(config, target) -> int:
    """Lanes of a word of the LOAD target ``target``."""
    return act_lanes(config) if target == LoadTarget.ACT else config.cols


def sp_depth(config, name) -> int:
    """Words of scratchpad ``name`` (``"ACT"``, ``"WGT"``, ``"WIDX"``, ``"PARAM"``, ``"OUT"``)."""
    return {"ACT": config.act_sp_depth, "WGT": config.wgt_sp_depth,
            "WIDX": config.wgt_sp_depth, "PARAM": config.param_sp_depth,
            "OUT": config.out_sp_depth}[name]


def _k_per_tile(config, mode, sparse):
    return k_per_rows(config.rows, MODES[mode]) * (SPARSE_K_FACTOR if sparse else 1)


def _vector_d_words(instr):
    return pack_words(instr.op, instr.n_words)


_TWO_OPERANDS = (VectorOp.ADD, VectorOp.SUB, VectorOp.MAX)


def instruction_ranges(config, instr) -> dict:
    """``{"reads": [...], "writes": [...]}``: ``(scratchpad, first, end)`` word ranges.

    The table of docs/ISA.md, for an instruction that passed :func:`check_instruction`.
    """
    reads, writes = [], []
    if isinstance(instr, Load):
        name = LoadTarget(instr.target).name
        writes.append((name, instr.sp_addr, instr.sp_addr + instr.outer_count * instr.inner_count))
    elif isinstance(instr, Store):
        reads.append(("OUT", instr.sp_addr, instr.sp_addr + instr.outer_count * instr.inner_count))
    elif isinstance(instr, Matmul):
        reads.append(("ACT", instr.act_addr, instr.act_addr + instr.k_tiles * instr.m_rows))
        wgt_end = instr.wgt_addr + instr.k_tiles * config.rows
        reads.append(("WGT", instr.wgt_addr, wgt_end))
        if config.sparse_2_4:
            reads.append(("WIDX", instr.wgt_addr, wgt_end))
        reads.append(("PARAM", instr.param_addr, instr.param_addr + 3))
        writes.append(("OUT", instr.out_addr, instr.out_addr + instr.m_rows))
    elif isinstance(instr, Vector):
        span = (instr.count - 1) * instr.src_stride + instr.n_words
        reads.append(("OUT", instr.src, instr.src + span))
        if instr.op in _TWO_OPERANDS:
            reads.append(("OUT", instr.src_b, instr.src_b + span))
        writes.append(("OUT", instr.dst,
                       instr.dst + (instr.count - 1) * instr.dst_stride + _vector_d_words(instr)))
    return {"reads": reads, "writes": writes}


def _check_load(config, instr):
    if instr.target >= 4:
        return NPUError.ILLEGAL_OPCODE
    if instr.target == LoadTarget.WIDX and not config.sparse_2_4:
        return NPUError.FEATURE_NOT_BUILT
    if (instr.inner_count == 0 or instr.outer_count == 0 or instr.lanes == 0 or
            instr.lanes > word_lanes(config, instr.target)):
        return NPUError.BAD_FIELD
    end = instr.sp_addr + instr.outer_count * instr.inner_count
    if end > sp_depth(config, LoadTarget(instr.target).name):
        return NPUError.BAD_SP_ADDRESS
    return None


def _check_store(config, instr):
    if (instr.elem_bytes not in (1, 4) or instr.inner_count == 0 or instr.outer_count == 0
            or instr.lanes == 0 or instr.lanes > config.cols):
        return NPUError.BAD_FIELD
    if instr.sp_addr + instr.outer_count * instr.inner_count > config.out_sp_depth:
        return NPUError.BAD_SP_ADDRESS
    return None


def _check_matmul(config, instr):
    if MODES[instr.mode] not in config.modes:
        return NPUError.FEATURE_NOT_BUILT
    if instr.sparse and (instr.mode != 0 or not config.sparse_2_4):
        return NPUError.FEATURE_NOT_BUILT
    if ((MODES[instr.mode] == "bf16" and not instr.raw) or not 1 <= instr.m_rows <= config.acc_depth or instr.k_tiles == 0
            or not 1 <= instr.k_valid_last <= _k_per_tile(config, instr.mode, instr.sparse)
            or instr.out_min > instr.out_max):
        return NPUError.BAD_FIELD
    ranges = instruction_ranges(config, instr)
    for name, _, end in ranges["reads"] + ranges["writes"]:
        if end > sp_depth(config, name):
            return NPUError.BAD_SP_ADDRESS
    return None


def _check_vector(config, instr):
    if instr.op >= len(VECTOR_OPS):
        return NPUError.ILLEGAL_OPCODE
    if instr.op in TO_BF16_OPS and "bf16" not in config.modes:
        return NPUError.FEATURE_NOT_BUILT
    ranges = instruction_ranges(config, instr)
    if (instr.count == 0 or instr.n_words == 0 or
            not 1 <= instr.n_valid <= instr.n_words * config.cols or
            instr.multiplier < 0 or not -31 <= instr.shift <= 30 or instr.lo > instr.hi):
        return NPUError.BAD_FIELD
    (_, d_lo, d_hi), = ranges["writes"]
    for (_, s_lo, s_hi), start in zip(ranges["reads"], (instr.src, instr.src_b)):
        # The BF16 conversions write two words per word read: never in place.
        identical = (start == instr.dst and instr.src_stride == instr.dst_stride
                     and instr.op not in TO_BF16_OPS)
        if identical:
            if instr.count > 1 and instr.src_stride < _vector_d_words(instr):
                return NPUError.BAD_FIELD
        elif s_lo < d_hi and d_lo < s_hi:
            return NPUError.BAD_FIELD
    for _, _, end in ranges["reads"] + ranges["writes"]:
        if end > config.out_sp_depth:
            return NPUError.BAD_SP_ADDRESS
    return None


_CHECKS = {Load: _check_load, Store: _check_store, Matmul: _check_matmul,
           Vector: _check_vector, Fence: lambda config, instr: None,
           End: lambda config, instr: None}


def check_instruction(config, instr):
    """The static error of a decoded instruction as ``(NPUError, detail)``, or ``None``.

    The detail of every static error is the opcode.
    """
    NPUConfig.check(config)
    check = _CHECKS.get(type(instr))
    if check is None:
        raise TypeError(f"instr must be a decoded instruction, not {instr!r}")
    code = check(config, instr)
    return None if code is None else (code, int(instr.opcode))


# -- the model ------------------------------------------------------------------------


def _wrap(values, bits):
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half


def _sext(values, bits):
    values = np.asarray(values, dtype=np.int64) & ((1 << bits) - 1)
    return values - ((values >> (bits - 1)) << bits)


class _Fault(Exception):
    def __init__(self, code, detail):
        self.code, self.detail = code, detail


class NPUModel:
    """The NPU of ``config`` at the instruction level (scratchpads persist across runs)."""

    def __init__(self, config):
        self.config = NPUConfig.check(config)
        self.reset()

    def reset(self) -> None:
        """Clear every scratchpad (as after a hardware reset)."""
        cfg = self.config
        self.sp = {
            "ACT": np.zeros((cfg.act_sp_depth, act_lanes(cfg)), dtype=np.int64),
            "WGT": np.zeros((cfg.wgt_sp_depth, cfg.cols), dtype=np.int64),
            "WIDX": np.zeros((cfg.wgt_sp_depth, cfg.cols), dtype=np.int64),
            "PARAM": np.zeros((cfg.param_sp_depth, cfg.cols), dtype=np.int64),
            "OUT": np.zeros((cfg.out_sp_depth, cfg.cols), dtype=np.int64),
        }
        if not cfg.sparse_2_4:
            del self.sp["WIDX"]

    # -- the program loop ---------------------------------------------------------------

    def run(self, memory: HostMemory, prog_addr: int, *, read_window, write_window,
            max_instructions: int = 1 << 20) -> RunResult:
        """Run the program at ``prog_addr`` until END or the first error.

        ``read_window``/``write_window`` are ``(base, limit)`` pairs (the READ_BASE/
        READ_LIMIT and WRITE_BASE/WRITE_LIMIT registers).  A program that has not ended
        after ``max_instructions`` raises :class:`ModelLimitError`.
        """
        if not isinstance(memory, HostMemory):
            raise TypeError(f"memory must be a HostMemory, not {memory!r}")
        self._read_window = _window("read_window", read_window)
        self._write_window = _window("write_window", write_window)
        prog_addr = _u32("prog_addr", prog_addr)
        if isinstance(max_instructions, bool) or not isinstance(max_instructions, int) \
                or max_instructions < 1:
            raise ValueError(f"max_instructions must be a positive integer, "
                             f"not {max_instructions!r}")
        self._memory = memory
        if prog_addr % INSTRUCTION_BYTES:
            return RunResult("error", NPUError.MISALIGNED, 0, prog_addr, 0)
        pc, retired = prog_addr, 0
        rb, rl = self._read_window
        while True:
            if retired >= max_instructions:
                raise ModelLimitError(f"the program did not end within {max_instructions} "
                                      f"instructions")
            if not (rb <= pc and pc + INSTRUCTION_BYTES <= rl):
                return RunResult("error", NPUError.BAD_HOST_ADDRESS, 0, pc, retired)
            if not memory.contains(pc, INSTRUCTION_BYTES):
                return RunResult("error", NPUError.AXI_READ_ERROR, 0, pc, retired)
            raw = memory.read(pc, INSTRUCTION_BYTES)
            try:
                instr = decode(raw)
            except IllegalInstruction:
                return RunResult("error", NPUError.ILLEGAL_OPCODE, raw[0], pc, retired)
            error = check_instruction(self.config, instr)
            if error is not None:
                return RunResult("error", error[0], error[1], pc, retired)
            try:
                self.execute(instr)
            except _Fault as fault:
                return RunResult("error", fault.code, fault.detail, pc, retired)
            retired += 1
            if isinstance(instr, End):
                return RunResult("done", NPUError.NONE, 0, pc, retired)
            pc += INSTRUCTION_BYTES

    def execute(self, instr) -> None:
        """Execute one instruction that passed :func:`check_instruction`."""
        if isinstance(instr, Load):
            self._load(instr)
        elif isinstance(instr, Store):
            self._store(instr)
        elif isinstance(instr, Matmul):
            self._matmul(instr)
        elif isinstance(instr, Vector):
            self._vector(instr)

    # -- LOAD / STORE -------------------------------------------------------------------

    def _first_bad_word(self, base, elem, window, valid, aligned_to, error_codes):
        """Index of the first word with a failing lane and its code (or None)."""
        lo, hi = window
        outside = (base < lo) | (base + elem > hi)
        misaligned = (base % aligned_to) != 0 if aligned_to > 1 else np.zeros_like(outside)
        unbacked = (base < self._memory.base) | (base + elem > self._memory.limit)
        bad_word = (valid & (outside | misaligned | unbacked)).any(axis=-1)
        flat = np.flatnonzero(bad_word.ravel())
        if not flat.size:
            return None
        w = int(flat[0])
        lanes = valid.reshape(-1, valid.shape[-1])[w]
        for mask, code in zip((outside, misaligned, unbacked), error_codes):
            if (mask.reshape(-1, mask.shape[-1])[w] & lanes).any():
                return w, code
        raise AssertionError("unreachable")

    def _load(self, instr):
        cfg = self.config
        target = LoadTarget(instr.target)
        O, I, L = instr.outer_count, instr.inner_count, instr.lanes
        o = np.arange(O, dtype=np.int64)[:, None, None]
        i = np.arange(I, dtype=np.int64)[None, :, None]
        j = np.arange(L, dtype=np.int64)[None, None, :]
        addr = instr.addr + o * instr.outer_stride + i * instr.inner_stride + j * instr.lane_stride
        inside = ((o >= instr.outer_lo) & (o < instr.outer_hi) &
                  (i >= instr.inner_lo) & (i < instr.inner_hi))
        valid = np.broadcast_to(inside, addr.shape)
        elem = 4 if target == LoadTarget.PARAM else 1
        bad = self._first_bad_word(addr, elem, self._read_window, valid, elem,
                                   (NPUError.BAD_HOST_ADDRESS, NPUError.MISALIGNED,
                                    NPUError.AXI_READ_ERROR))
        words = O * I if bad is None else bad[0]
        lanes = word_lanes(cfg, target)
        pad = instr.pad & 3 if target == LoadTarget.WIDX else instr.pad
        out = np.full((O * I, lanes), pad, dtype=np.int64)
        flat_addr = addr.reshape(O * I, L)[:words]
        flat_valid = valid.reshape(O * I, L)[:words]
        mem = self._memory.array()
        offsets = np.clip(np.where(flat_valid, flat_addr - self._memory.base, 0), 0,
                          max(self._memory.size - elem, 0))
        if elem == 4:
            raw = sum(mem[offsets + b].astype(np.int64) << (8 * b) for b in range(4))
            values = _sext(raw, 32)
        else:
            values = _sext(mem[offsets], 8)
            if target == LoadTarget.WIDX:
                values = values & 3
        block = out[:words]
        block[:, :L] = np.where(flat_valid, values, pad)
        sp = self.sp[target.name]
        sp[instr.sp_addr:instr.sp_addr + words] = block
        if bad is not None:
            raise _Fault(bad[1], int(Opcode.LOAD))

    def _store(self, instr):
        O, I, L, eb = instr.outer_count, instr.inner_count, instr.lanes, instr.elem_bytes
        o = np.arange(O, dtype=np.int64)[:, None, None]
        i = np.arange(I, dtype=np.int64)[None, :, None]
        j = np.arange(L, dtype=np.int64)[None, None, :]
        addr = instr.addr + o * instr.outer_stride + i * instr.inner_stride + j * eb
        valid = np.ones(addr.shape, dtype=bool)
        bad = self._first_bad_word(addr, eb, self._write_window, valid, eb,
                                   (NPUError.BAD_HOST_ADDRESS, NPUError.MISALIGNED,
                                    NPUError.AXI_WRITE_ERROR))
        words = O * I if bad is None else bad[0]
        data = self.sp["OUT"][instr.sp_addr:instr.sp_addr + words, :L] & 0xFFFFFFFF
        flat_addr = addr.reshape(O * I, L)[:words] - self._memory.base
        byte_addr = (flat_addr[..., None] + np.arange(eb)).ravel()
        byte_val = ((data[..., None] >> (8 * np.arange(eb))) & 0xFF).ravel()
        if byte_addr.size:
            # Later bytes win where the instruction writes an address twice.
            rev_addr = byte_addr[::-1]
            uniq, first = np.unique(rev_addr, return_index=True)
            self._memory.array()[uniq] = byte_val[::-1][first].astype(np.uint8)
        if bad is not None:
            raise _Fault(bad[1], int(Opcode.STORE))

    # -- MATMUL -------------------------------------------------------------------------

    def _matmul(self, instr):
        cfg = self.config
        R, C = cfg.rows, cfg.cols
        mode = MODES[instr.mode]
        zp = instr.a_zero_point
        kpt = _k_per_tile(cfg, instr.mode, instr.sparse)
        if mode == "int4" and not -8 <= zp <= 7:
            raise _Fault(NPUError.CORE, int(CoreError.BAD_ZERO_POINT))
        act, wgt = self.sp["ACT"], self.sp["WGT"]
        w_rows = slice(instr.wgt_addr, instr.wgt_addr + instr.k_tiles * R)
        if instr.sparse:
            idx = self.sp["WIDX"][w_rows].reshape(instr.k_tiles, R // 2, 2, C)
            if (idx[:, :, 0, :] >= idx[:, :, 1, :]).any():
                raise _Fault(NPUError.CORE, int(CoreError.BAD_SPARSE_INDEX))
        bias, multiplier, shift = self.sp["PARAM"][instr.param_addr:instr.param_addr + 3]
        if ((shift < -31) | (shift > 30)).any():
            raise _Fault(NPUError.CORE, int(CoreError.BAD_SHIFT))
        if mode == "bf16":
            self._matmul_bf16(instr, bias)
            return

        m = instr.m_rows
        a_words = act[instr.act_addr:instr.act_addr + instr.k_tiles * m]
        a_words = a_words.reshape(instr.k_tiles, m, -1)           # [kt, m, lanes]
        w_words = wgt[w_rows].reshape(instr.k_tiles, R, C)         # [kt, r, c]
        if instr.sparse:
            a_eff = a_words[:, :, :2 * R] - zp                     # [kt, m, 2R]
            w_eff = np.zeros((instr.k_tiles, 2 * R, C), dtype=np.int64)
            group = (np.arange(R) // 2)[None, :, None]
            pos = 4 * group + idx.reshape(instr.k_tiles, R, C)
            kt_ix = np.arange(instr.k_tiles)[:, None, None]
            c_ix = np.arange(C)[None, None, :]
            np.add.at(w_eff, (kt_ix, pos, c_ix), w_words)
        elif mode == "int8":
            a_eff = a_words[:, :, :R] - zp
            w_eff = w_words
        elif mode == "int4":
            a_eff = _nibbles(a_words[:, :, :R]) - zp                  # [kt, m, 2R]
            w_eff = _nibbles(np.swapaxes(w_words, 1, 2)).swapaxes(1, 2)  # [kt, 2R, c]
        else:
            a_eff = _bits(a_words[:, :, :R])                          # ±1, [kt, m, 8R]
            w_eff = _bits(np.swapaxes(w_words, 1, 2)).swapaxes(1, 2)   # [kt, 8R, c]
            k_valid = np.full(instr.k_tiles, kpt)
            k_valid[-1] = instr.k_valid_last
            w_eff = np.where(np.arange(kpt)[None, :, None] < k_valid[:, None, None], w_eff, 0)
        # Exact in float64: |sum| < 255·128·2^23 < 2^53.
        a_all = np.swapaxes(a_eff, 0, 1).reshape(m, -1).astype(np.float64)
        w_all = w_eff.reshape(-1, C).astype(np.float64)
        acc = _wrap(np.rint(a_all @ w_all).astype(np.int64), cfg.acc_bits)
        total = _wrap(acc + bias[None, :], cfg.acc_bits)
        if instr.raw:
            result = total
        else:
            scaled = _mbqm(total, multiplier[None, :], shift[None, :])
            result = np.clip(scaled + instr.out_zero_point, instr.out_min, instr.out_max)
        self.sp["OUT"][instr.out_addr:instr.out_addr + m] = result

    def _matmul_bf16(self, instr, bias):
        """bf16 MATMUL: the fixed-order GEMM of ``golden.bf16_gemm`` on the tiles' real
        elements (K = k_tiles − 1 whole tiles plus ``k_valid_last``), then ``+ bias`` as
        an integer on the FP32 bit patterns (ISA.md)."""
        cfg = self.config
        R, m, kt = cfg.rows, instr.m_rows, instr.k_tiles
        kpt = R // 2
        k = (kt - 1) * kpt + instr.k_valid_last
        a_rows = self.sp["ACT"][instr.act_addr:instr.act_addr + kt * m, :R]
        a_bits = join_bytes(a_rows.reshape(kt, m, R).swapaxes(0, 1).reshape(m, kt * R), 1)
        w_bits = join_bytes(self.sp["WGT"][instr.wgt_addr:instr.wgt_addr + kt * R], 0)
        bits = bf16_gemm(a_bits[:, :k], w_bits[:k], kpt).astype(np.int64)
        result = _wrap(bits + bias[None, :], cfg.acc_bits)
        self.sp["OUT"][instr.out_addr:instr.out_addr + m] = result

    # -- VECTOR -------------------------------------------------------------------------

    def _rows(self, start, stride, count, n_words):
        ix = start + stride * np.arange(count)[:, None] + np.arange(n_words)[None, :]
        return self.sp["OUT"][ix].reshape(count, -1)

    def _vector(self, instr):
        C = self.config.cols
        op = VectorOp(instr.op)
        a = self._rows(instr.src, instr.src_stride, instr.count, instr.n_words)
        b = None
        if op in _TWO_OPERANDS:
            b = self._rows(instr.src_b, instr.src_stride, instr.count, instr.n_words)
        result = np.asarray(vector_op(int(op), a, b, n_valid=instr.n_valid,
                                      multiplier=instr.multiplier, shift=instr.shift,
                                      zero_point=instr.zero_point, lo=instr.lo, hi=instr.hi),
                            dtype=np.int64)
        d_words = _vector_d_words(instr)
        if op == VectorOp.ROWMAX:
            result = np.repeat(result, C, axis=1)
        elif op in (VectorOp.PACK_INT4, VectorOp.PACK_BINARY, VectorOp.TO_BF16,
                    VectorOp.TO_BF16_RELU):
            result = np.pad(result, ((0, 0), (0, d_words * C - result.shape[1])))
        out = self.sp["OUT"]
        for r in range(instr.count):
            start = instr.dst + r * instr.dst_stride
            out[start:start + d_words] = result[r].reshape(d_words, C)


def _nibbles(lanes):
    """int4 values of 8-bit lanes along the last axis: element 2j low, 2j+1 high nibble."""
    raw = np.asarray(lanes, dtype=np.int64) & 0xFF
    nib = np.stack([_sext(raw & 0xF, 4), _sext(raw >> 4, 4)], axis=-1)
    return nib.reshape(raw.shape[:-1] + (-1,))


def _bits(lanes):
    """±1 values of 8-bit lanes along the last axis: element 8j + i is bit i of lane j."""
    raw = np.asarray(lanes, dtype=np.int64) & 0xFF
    bits = (raw[..., None] >> np.arange(8)) & 1
    return (2 * bits - 1).reshape(raw.shape[:-1] + (-1,))


def _u32(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 <= value < _ADDRESS_LIMIT:
        raise ValueError(f"{name} must be a 32-bit address, not {value!r}")
    return int(value)


def _window(name, window):
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"{name} must be a (base, limit) pair, not {window!r}")
    base, limit = window
    for part, value in (("base", base), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
                not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{name} {part} must be a 32-bit value, not {value!r}")
    return int(base), int(limit)
