"""Whole networks as one NPU program: every layer of a quantized digits network, a batch
of images at once.

:func:`compile_network` lowers a :class:`~npugen.golden.digits.QuantizedNetwork` (FC and
3×3 convolution layers, fused ReLU, 2×2 max pooling, int8/int4/binary modes, 2:4 weights)
and a batch of input codes to one :class:`~npugen.golden.compiler.CompiledProgram`: one
START runs every layer, END comes after the last one.  The batch is the GEMM M dimension
(FC: one row per image; convolution: one row per output pixel of every image).

Per layer (``docs/ARCHITECTURE.md``, "Whole networks"):

* Its input lives in host memory: the network input (segment ``x``) or the workspace
  the previous layer wrote (``a<i>``), int8 codes, or packed along the channels / K
  (int4 two per byte, binary eight per byte) when the layer runs in that mode.  Layers
  are separated by a FENCE (a LOAD reading what a STORE wrote needs one, docs/ISA.md).
* MATMULs as the kernel compiler schedules them (activation blocks double-buffered,
  weights resident or in a ring, results in a ring of OUT slots).
* A convolution followed by 2×2 max pooling orders the output pixels of a block by
  pooling phase: rows ``[φ·P, (φ+1)·P)`` of the block hold phase φ = (dy, dx) of its P
  pooled pixels (the im2col LOADs step by 2 pixels), so pooling is two VECTOR MAX over
  whole slots: ``max(φ0|φ1, φ2|φ3)`` over ``2P`` words, then the two halves.
* The output: int8 codes STOREd per N tile; or (next layer int4/binary) each result
  tile packed in place by VECTOR PACK_INT4/PACK_BINARY when a word's lanes make whole
  bytes, else the N tiles regrouped row-major into an OUT region (the last MAX, or a
  CLAMP copy for FC layers), one PACK over the whole block and byte STOREs of the
  packed stream.
* im2col: one LOAD per pooling phase, kernel tap and channel chunk of a run of pixels;
  rows that need no padding window are loaded for all whole images of a block at once.
  The network input (few channels) is stored with a border of zero-point pixels so that
  the taps of one kernel row share a K tile.  Convolutions have stride 1 and padding 1
  (the digits CNN's 3×3 layers).
* Binary convolutions pad each kernel tap's channels to whole K tiles with activation
  bits 0 and weight bits 0 (−1 · −1 = +1 per padding bit counted by the array); the
  constant enters the bias.

A :class:`~npugen.golden.digits.BF16Network` runs every layer in bf16 mode (raw FP32
results): the bias is one extra K tile (activation 1.0 LOADed from the segment ``one``
for every row), pooling is the same two MAXes on the FP32 bit patterns, and a hidden
layer's result tile goes through VECTOR TO_BF16_RELU (TO_BF16 without ReLU) into an OUT
region (two words of byte lanes per row) from which byte STOREs write the BF16 rows;
the logits are STOREd as FP32 (4-byte lanes).  Convolutions take one K tile group per
kernel tap.

``info["layers"]`` gives each layer's instruction range (up to and including its FENCE),
MACs and ideal cycles, for per-layer cycle attribution (:func:`layer_cycles`).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from .binary import pack_bits
from .compiler import (_block_limit, _build, _conv_pieces, _Lowering, _param_load, _ramped, _rows_loads,
                       _schedule, _Step, _store, _tiles, _weight_load, _window, _base, _i32,
                       _U16, CompiledProgram)
from .config import NPUConfig
from .int4 import pack_int4
from .isa import End, Fence, Load, LoadTarget, Store, Vector, VectorOp
from .precision import MODE_CODES, PACK, SPARSE_K_FACTOR
from .sparse_formats import NMMatrix

__all__ = ["compile_network", "layer_cycles", "BITS"]

#: Bits per activation element of each mode.
BITS = {"int8": 8, "int4": 4, "binary": 1, "bf16": 16}
_PACK_OP = {"int4": VectorOp.PACK_INT4, "binary": VectorOp.PACK_BINARY}
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


def _pad_byte(mode, zero_point):
    """The byte a LOAD pads with: the zero point (int4: in both nibbles; binary: bit 0)."""
    if mode == "int8":
        return int(zero_point)
    if mode == "int4":
        nib = int(zero_point) & 0xF
        return np.int8(np.uint8(nib | nib << 4)).item()
    return 0


class _Layer:
    """One compute layer's shapes, fields and host data."""

    def __init__(self, config, index, spec, layer, in_shape, batch, next_mode, sparse):
        self.index, self.spec, self.q = index, spec, layer
        self.mode = layer.mode
        self.sparse = sparse and spec.kind == "fc" or (sparse and spec.kind == "conv"
                                                       and in_shape[-1] >= 4)
        if self.sparse and self.mode != "int8":
            raise ValueError(f"sparsity needs int8 layers, not {self.mode!r} in layer "
                             f"{spec.name}")
        self.next_mode = next_mode              # None: the network output (int8)
        R, C = config.rows, config.cols
        self.cols = C
        self.factor = SPARSE_K_FACTOR if self.sparse else 1
        self.kpt = R * PACK[self.mode] * self.factor
        self.word_bytes = R * self.factor
        w = np.asarray(layer.weights.codes, dtype=np.int64)
        self.n = w.shape[-1]
        self.n_tiles = -(-self.n // C)
        self.in_zp = int(layer.input.zero_point)
        self.pad = _pad_byte(self.mode, self.in_zp)
        bias = np.asarray(layer.bias, dtype=np.int64)
        if spec.kind == "fc":
            self.k = w.shape[0]
            self.k_tiles = -(-self.k // self.kpt)
            self.k_valid_last = self.k - (self.k_tiles - 1) * self.kpt
            w_rows = np.zeros((self.k_tiles * self.kpt, self.n), dtype=np.int64)
            w_rows[:self.k] = w
            self.m = batch
            self.in_bytes = batch * self._row_bytes(self.k)
            self.macs = batch * self.k * self.n
            self.out_shape = (batch, self.n)
        else:
            kh, kw, cin, cout, h, wd = self._conv_shape(spec, w.shape, in_shape, batch)
            if (cin * BITS[self.mode]) % 8:
                raise ValueError(f"layer {spec.name}: {cin} channels do not pack into whole "
                                 f"bytes in {self.mode} mode")
            self.pixel_bytes = cin * BITS[self.mode] // 8
            # The network input with few channels: taps of one kernel row share a K tile
            # (lanes = consecutive pixels of the zero-point-padded input, no windows).
            self.row_taps = (index == 0 and self.mode == "int8" and not self.sparse
                             and 2 * self.pixel_bytes <= self.word_bytes)
            if self.row_taps:
                self.per_tile = self.word_bytes // self.pixel_bytes      # taps per K tile
                self.groups = -(-kw // self.per_tile)
                self.chunks = 1
                self.k_tiles = kh * self.groups
                self.k_valid_last = self.kpt
            else:
                self.chunks = -(-cin // self.kpt)
                self.k_tiles = self.taps * self.chunks
                self.k_valid_last = cin - (self.chunks - 1) * self.kpt
            pad_w = -1 if self.mode == "binary" else 0
            if self.row_taps:
                # tile (ky, group): row j·cin + c = tap kx = group·per_tile + j, channel c
                w_rows = np.zeros((kh, self.groups, self.kpt, cout), dtype=np.int64)
                for kx in range(kw):
                    grp, j = divmod(kx, self.per_tile)
                    w_rows[:, grp, j * cin:(j + 1) * cin, :] = w[:, kx]
            else:
                w_rows = np.full((self.taps, self.chunks * self.kpt, cout), pad_w,
                                 dtype=np.int64)
                w_rows[:, :cin, :] = w.reshape(self.taps, cin, cout)
            w_rows = w_rows.reshape(self.k_tiles * self.kpt, cout)
            if self.mode == "binary":
                # Padding bits counted by the array: act bit 0 (−1) · weight bit 0 (−1).
                counted = (self.k_tiles - 1) * self.kpt + self.k_valid_last
                bias = bias - (counted - self.taps * cin)
            if self.row_taps:      # the input stored with a border of zero-point pixels
                self.in_bytes = batch * (h + 2) * (wd + 2) * self.pixel_bytes
                self.headroom = 0
            else:
                self.in_bytes = batch * h * wd * self.pixel_bytes
                self.headroom = (wd + 1) * self.pixel_bytes      # padding 1 above and left
        self._check_weight_words(config)
        # Weight rows (bytes), tile by tile.
        if self.sparse:
            packed = NMMatrix.from_dense(_pad_cols(w_rows, self.n_tiles * C))
            rows_bytes, idx_rows = packed.values, packed.indices
        else:
            rows_bytes = {"int8": lambda v: v, "int4": lambda v: pack_int4(v, axis=0),
                          "binary": lambda v: pack_bits(np.where(v < 0, -1, 1), axis=0)
                          }[self.mode](w_rows)
            idx_rows = None
        columns = [(nt * C, C) for nt in range(self.n_tiles)]
        self.tile_bytes = self.k_tiles * R * C
        self.w_data = _tiles(_pad_cols(rows_bytes, self.n_tiles * C), columns, C).tobytes()
        self.widx_data = (None if idx_rows is None else
                          _tiles(_pad_cols(idx_rows, self.n_tiles * C), columns, C).tobytes())
        self.params = _i32(np.concatenate([bias, np.asarray(layer.multiplier, np.int64),
                                           np.asarray(layer.shift, np.int64)]))
        out_elems = math.prod(self.out_shape)
        if next_mode is None:
            self.out_bytes = out_elems
        else:
            if (self.out_shape[-1] * BITS[next_mode]) % 8 or (
                    next_mode != "int8" and (C * BITS[next_mode]) % 8 and self.n % C):
                raise ValueError(f"layer {spec.name}: {self.n} output channels do not pack "
                                 f"for {next_mode} on {C} columns")
            self.out_bytes = out_elems * BITS[next_mode] // 8
        self.fields = dict(mode=MODE_CODES[self.mode], sparse=int(self.sparse), raw=0,
                           k_tiles=self.k_tiles, k_valid_last=self.k_valid_last,
                           a_zero_point=0 if self.mode == "binary" else self.in_zp,
                           out_zero_point=int(layer.output.zero_point),
                           out_min=int(layer.out_min), out_max=int(layer.out_max))

    def _conv_shape(self, spec, w_shape, in_shape, batch):
        """Kernel, input and (pooled) output shapes of a conv layer, checked; returns
        ``(kh, kw, cin, cout, h, w)``."""
        kh, kw, cin, cout = w_shape
        _, h, wd, c = in_shape
        if c != cin:
            raise ValueError(f"layer {spec.name}: input has {c} channels, the kernel {cin}")
        self.kh, self.kw, self.cin, self.h, self.w = kh, kw, cin, h, wd
        self.taps = kh * kw
        self.s = 2 if spec.pool else 1
        if h % self.s or wd % self.s:
            raise ValueError(f"layer {spec.name}: pooling needs an even height and width, "
                             f"not {h}×{wd}")
        self.hp, self.wp = h // self.s, wd // self.s
        self.phases = [(dy, dx) for dy in range(self.s) for dx in range(self.s)]
        self.m = batch * h * wd
        self.macs = batch * h * wd * self.taps * cin * cout
        self.out_shape = (batch, self.hp, self.wp, cout)
        return kh, kw, cin, cout, h, wd

    def _check_weight_words(self, config):
        """The layer's weight tiles must fit WGT (and the 16-bit ``k_tiles`` field)."""
        if self.k_tiles * config.rows > config.wgt_sp_depth or self.k_tiles > _U16:
            raise ValueError(f"layer {self.spec.name} needs {self.k_tiles * config.rows} weight "
                             f"words per output tile, more than "
                             f"wgt_sp_depth={config.wgt_sp_depth}")

    def _row_bytes(self, k):
        return -(-k * BITS[self.mode] // 8)

    def input_bytes(self, codes) -> bytes:
        """The host bytes of the network input ``codes`` (this is layer 0)."""
        codes = np.asarray(codes, dtype=np.int8)
        if self.spec.kind == "conv" and self.row_taps:
            codes = np.pad(codes, ((0, 0), (1, 1), (1, 1), (0, 0)),
                           constant_values=self.in_zp)
        return codes.tobytes()

    @property
    def packs(self):
        """The output is packed through an OUT region holding whole rows."""
        return self.next_mode in _PACK_OP and not self.tile_packs

    @property
    def tile_packs(self):
        """The output is packed tile by tile: a result word's lanes make whole bytes."""
        return self.next_mode in _PACK_OP and (self.cols * BITS[self.next_mode]) % 8 == 0


class _BF16Layer(_Layer):
    """One compute layer of a :class:`~npugen.golden.digits.BF16Network` (bf16 mode)."""

    def __init__(self, config, index, spec, w_bits, b_bits, in_shape, batch, last):
        from .bf16_gemm import split_bytes
        from .digits import bf16_conv_operands, bf16_fc_operands
        self.index, self.spec, self.mode = index, spec, "bf16"
        self.sparse, self.factor, self.row_taps = False, 1, False
        self.next_mode = None if last else "bf16"
        R, C = config.rows, config.cols
        self.cols = C
        self.kpt = R // 2
        self.word_bytes = R
        self.in_zp, self.pad = 0, 0
        w_bits = np.asarray(w_bits, np.uint16)
        self.n = w_bits.shape[-1]
        self.n_tiles = -(-self.n // C)
        if spec.kind == "fc":
            self.k = w_bits.shape[0]
            _, w_rows = bf16_fc_operands(np.zeros((1, self.k), np.uint16), w_bits, b_bits,
                                         self.kpt)
            self.m = batch
            self.in_bytes = batch * 2 * self.k
            self.macs = batch * self.k * self.n
            self.out_shape = (batch, self.n)
        else:
            kh, kw, cin, cout, h, wd = self._conv_shape(spec, w_bits.shape, in_shape, batch)
            self.pixel_bytes = 2 * cin
            self.chunks = -(-cin // self.kpt)
            _, w_rows = bf16_conv_operands(np.zeros((1, 1, 1, cin), np.uint16), w_bits,
                                           b_bits, self.kpt)
            self.in_bytes = batch * h * wd * self.pixel_bytes
            self.headroom = (wd + 1) * self.pixel_bytes
        # K tiles: the data tiles, then the bias tile (activation 1.0 in its first element).
        self.k_tiles = len(w_rows) // self.kpt
        self.k_valid_last = 1
        self._check_weight_words(config)
        columns = [(nt * C, C) for nt in range(self.n_tiles)]
        self.tile_bytes = self.k_tiles * R * C
        self.w_data = _tiles(_pad_cols(split_bytes(w_rows, 0), self.n_tiles * C), columns,
                             C).tobytes()
        self.widx_data = None
        self.params = _i32(np.zeros(3 * self.n, dtype=np.int64))
        out_elems = math.prod(self.out_shape)
        self.out_bytes = out_elems * (4 if last else 2)
        self.fields = dict(mode=MODE_CODES["bf16"], sparse=0, raw=1, k_tiles=self.k_tiles,
                           k_valid_last=1, a_zero_point=0, out_zero_point=0, out_min=-128,
                           out_max=127)

    def _row_bytes(self, k):
        return 2 * k

    def input_bytes(self, bits) -> bytes:
        return np.asarray(bits, dtype="<u2").tobytes()


def _pad_cols(matrix, width):
    out = np.zeros((matrix.shape[0], width), dtype=np.int64)
    out[:, :matrix.shape[1]] = matrix
    return out


def _emit_layer(config, L: _Layer, addr, in_name, out_name):
    """The instructions of layer ``L`` (without the closing FENCE)."""
    R, C = config.rows, config.cols
    name = L.spec.name
    x, y = addr[in_name], addr[out_name]
    w_addr, p_addr = addr[f"w{L.index}"], addr[f"p{L.index}"]
    widx_addr = addr.get(f"widx{L.index}")
    # Blocks: FC rows (images); conv pooled pixels in whole pooled rows when they fit.
    limit = _block_limit(config, L.k_tiles, f"layer {name}", out_ring=False)
    if L.spec.kind == "fc":
        limit = min(limit, config.out_sp_depth // 8)
        if L.packs:
            limit = min(limit, max(1, config.out_sp_depth // (4 * L.n_tiles)))
        blocks = []
        m0 = 0
        for mb in _ramped(L.m, limit, min(limit, 2 * R + 1)):
            blocks.append((m0, mb))
            m0 += mb
        units = [mb for _, mb in blocks]
    else:
        per_p = limit // len(L.phases)
        per_p = min(per_p, config.out_sp_depth // (8 * len(L.phases)))
        if L.packs:
            per_p = min(per_p, max(1, config.out_sp_depth // (4 * L.n_tiles)))
        if per_p < 1:
            raise ValueError(f"layer {name} does not fit the scratchpads of this configuration")
        geom = SimpleNamespace(n=L.out_shape[0], h_out=L.hp, w_out=L.wp)
        total = geom.n * L.hp * L.wp
        if L.wp <= per_p:
            rows_per = per_p // L.wp
            blocks, r0 = [], 0
            for count in _ramped(total // L.wp, rows_per,
                                 min(rows_per, -(-(2 * R + 1) // (L.wp * len(L.phases))))):
                blocks.append((r0 * L.wp, count * L.wp))
                r0 += count
        else:
            blocks = [(q, min(per_p, total - q)) for q in range(0, total, per_p)]
        units = [len(L.phases) * p for _, p in blocks]
    max_unit = max(p for _, p in blocks)
    bf16 = L.mode == "bf16"
    converts = bf16 and L.next_mode is not None      # TO_BF16(_RELU) into a region
    region = max_unit * L.n_tiles if L.packs else 2 * max_unit if converts else 0
    out_depth = config.out_sp_depth - 2 * region
    regions = [out_depth, out_depth + region]
    data_tiles = L.k_tiles - 1 if bf16 else L.k_tiles      # bf16: + the bias tile

    def bias_load(base, mb):
        """bf16: the bias K tile's activations, 1.0 in the first element of every row."""
        return Load(target=LoadTarget.ACT, sp_addr=base + data_tiles * mb, addr=addr["one"],
                    inner_count=mb, outer_count=1, inner_stride=0, outer_stride=0,
                    lane_stride=1, lanes=2, pad=0)

    def a_loads_fc(m0, mb):
        a_row = L._row_bytes(L.k)
        return lambda base: _rows_loads(
            LoadTarget.ACT, base, addr=x + m0 * a_row, rows=mb, row_pitch=a_row,
            row_bytes=a_row, word_bytes=L.word_bytes, pad=L.pad, k_tiles=data_tiles,
            pieces=L.n_tiles) + ([bias_load(base, mb)] if bf16 else [])

    def a_loads_conv(q0, p):
        mb = len(L.phases) * p

        def loads(base):
            result = []
            pb = L.pixel_bytes
            pieces = _conv_pieces(geom, q0, q0 + p)
            if L.row_taps:
                wp2 = L.w + 2
                for (nn, py, rows, px, cols) in pieces:
                    offset = (nn * L.hp + py) * L.wp + px - q0
                    for ph, (dy, dx) in enumerate(L.phases):
                        for ky in range(L.kh):
                            for grp in range(L.groups):
                                row = (nn * (L.h + 2) + py * L.s + dy + ky) * wp2
                                pixel = x + (row + px * L.s + dx + grp * L.per_tile) * pb
                                taps = min(L.per_tile, L.kw - grp * L.per_tile)
                                result.append(Load(
                                    target=LoadTarget.ACT,
                                    sp_addr=base + (ky * L.groups + grp) * mb + ph * p + offset,
                                    addr=pixel, inner_count=cols, outer_count=rows,
                                    inner_stride=L.s * pb, outer_stride=L.s * wp2 * pb,
                                    lane_stride=1, lanes=taps * pb, pad=L.pad))
                return result
            # Runs of whole images: where no row of an image needs padding (0 ≤ oy < s),
            # one LOAD covers them all (the rows of consecutive images are evenly spaced).
            runs = []
            for (nn, py, rows, px, cols) in pieces:
                whole = py == 0 and rows == L.hp and px == 0 and cols == L.wp
                if whole and runs and runs[-1][5] and runs[-1][0] + runs[-1][5] == nn:
                    runs[-1][5] += 1
                else:
                    runs.append([nn, py, rows, px, cols, int(whole)])
            for ph, (dy, dx) in enumerate(L.phases):
                for ky in range(L.kh):
                    oy = dy - 1 + ky
                    merged = 0 <= oy < L.s
                    items = runs if merged else [[*piece, 0] for piece in pieces]
                    for nn, py, rows, px, cols, images in items:
                        offset = (nn * L.hp + py) * L.wp + px - q0
                        if merged and images:
                            count = rows * images
                            o_lo, o_hi = 0, count
                        else:
                            count = rows
                            o_lo, o_hi = _window(rows, py, L.s, oy, L.h)
                        for kx in range(L.kw):
                            ox = dx - 1 + kx
                            i_lo, i_hi = _window(cols, px, L.s, ox, L.w)
                            pixel = x + ((nn * L.h + py * L.s + oy) * L.w + px * L.s + ox) * pb
                            for ch in range(L.chunks):
                                kt = (ky * L.kw + kx) * L.chunks + ch
                                result.append(Load(
                                    target=LoadTarget.ACT,
                                    sp_addr=base + kt * mb + ph * p + offset,
                                    addr=pixel + ch * L.word_bytes, inner_count=cols,
                                    outer_count=count, inner_stride=L.s * pb,
                                    outer_stride=L.s * L.w * pb, lane_stride=1,
                                    lanes=min(L.word_bytes, pb - ch * L.word_bytes),
                                    pad=L.pad, inner_lo=i_lo, inner_hi=i_hi, outer_lo=o_lo,
                                    outer_hi=o_hi))
            if bf16:
                result.append(bias_load(base, mb))
            return result
        return loads

    def packed_store(b, q0, rows_elems):
        """PACK of region b (``rows_elems`` elements) and the STOREs of its bytes."""
        words = rows_elems // C
        reg = regions[b % 2]
        prog = [Vector(op=_PACK_OP[L.next_mode], count=1, src=reg, dst=reg, n_words=words,
                       n_valid=rows_elems, src_stride=0, dst_stride=0)]
        nbytes = rows_elems * BITS[L.next_mode] // 8
        dest = y + q0 * L.n * BITS[L.next_mode] // 8
        full, rest = divmod(nbytes, C)
        if full:
            prog.append(Store(elem_bytes=1, sp_addr=reg, addr=dest, inner_count=full,
                              outer_count=1, inner_stride=C, outer_stride=0, lanes=C))
        if rest:
            prog.append(Store(elem_bytes=1, sp_addr=reg + full, addr=dest + full * C,
                              inner_count=1, outer_count=1, inner_stride=0, outer_stride=0,
                              lanes=rest))
        return prog

    def bf16_stores(src, turn, q0, p, n0, lanes):
        """bf16: the FP32 logits (STORE of 4-byte lanes), or TO_BF16(_RELU) of the tile
        into a region (two words per row) and byte STOREs of the BF16 rows."""
        if not converts:
            return [_store(src, addr=y + 4 * (q0 * L.n + n0), rows=p, row_pitch=4 * L.n,
                           lanes=lanes, elem_bytes=4)]
        reg = regions[turn % 2]
        op = VectorOp.TO_BF16_RELU if L.spec.relu else VectorOp.TO_BF16
        prog = [Vector(op=op, count=p, src=src, dst=reg, n_words=1, n_valid=C,
                       src_stride=1, dst_stride=2)]
        dest = y + 2 * (q0 * L.n + n0)
        if lanes == C:
            prog.append(Store(elem_bytes=1, sp_addr=reg, addr=dest, inner_count=2,
                              outer_count=p, inner_stride=C, outer_stride=2 * L.n, lanes=C))
        else:          # a partial tile: its 2·lanes bytes of each row, row by row
            for r in range(p):
                for half in range(2):
                    nbytes = min(C, 2 * lanes - half * C)
                    if nbytes > 0:
                        prog.append(Store(elem_bytes=1, sp_addr=reg + 2 * r + half,
                                          addr=dest + 2 * L.n * r + half * C, inner_count=1,
                                          outer_count=1, inner_stride=0, outer_stride=0,
                                          lanes=nbytes))
        return prog

    steps = []
    for b, (q0, p) in enumerate(blocks):
        mb = units[b]
        a_loads = a_loads_fc(q0, p) if L.spec.kind == "fc" else a_loads_conv(q0, p)
        for nt in range(L.n_tiles):
            n0 = nt * C
            lanes = min(C, L.n - n0)
            last_tile = nt == L.n_tiles - 1

            def w_loads(base, nt=nt):
                loads = [_weight_load(LoadTarget.WGT, base, addr=w_addr + nt * L.tile_bytes,
                                      rows=L.k_tiles * R, valid_rows=L.k_tiles * R,
                                      row_pitch=C, lanes=C)]
                if L.sparse:
                    loads.append(_weight_load(LoadTarget.WIDX, base,
                                              addr=widx_addr + nt * L.tile_bytes,
                                              rows=L.k_tiles * R, valid_rows=L.k_tiles * R,
                                              row_pitch=C, lanes=C))
                return loads

            def stores(base, b=b, q0=q0, p=p, nt=nt, n0=n0, lanes=lanes, last_tile=last_tile):
                prog = []
                src = base
                pooled = L.spec.kind == "conv" and L.s == 2
                if pooled:
                    prog.append(Vector(op=VectorOp.MAX, count=1, src=base, src_b=base + 2 * p,
                                       dst=base, n_words=2 * p, n_valid=1))
                    if L.packs:
                        prog.append(Vector(op=VectorOp.MAX, count=p, src=base,
                                           src_b=base + p, dst=regions[b % 2] + nt,
                                           n_words=1, n_valid=1, src_stride=1,
                                           dst_stride=L.n_tiles))
                    else:
                        prog.append(Vector(op=VectorOp.MAX, count=1, src=base, src_b=base + p,
                                           dst=base, n_words=p, n_valid=1))
                elif L.packs:
                    prog.append(Vector(op=VectorOp.CLAMP, count=p, src=base,
                                       dst=regions[b % 2] + nt, n_words=1, n_valid=1,
                                       src_stride=1, dst_stride=L.n_tiles,
                                       lo=_INT32_MIN, hi=_INT32_MAX))
                if bf16:
                    return prog + bf16_stores(src, b * L.n_tiles + nt, q0, p, n0, lanes)
                if L.tile_packs:
                    bits = BITS[L.next_mode]
                    prog.append(Vector(op=_PACK_OP[L.next_mode], count=p, src=base, dst=base,
                                       n_words=1, n_valid=lanes, src_stride=1, dst_stride=1))
                    prog.append(_store(src, addr=y + (q0 * L.n + n0) * bits // 8, rows=p,
                                       row_pitch=L.n * bits // 8, lanes=lanes * bits // 8,
                                       elem_bytes=1))
                elif not L.packs:
                    prog.append(_store(src, addr=y + q0 * L.n + n0, rows=p, row_pitch=L.n,
                                       lanes=lanes, elem_bytes=1))
                elif last_tile:
                    prog += packed_store(b, q0, p * L.n)
                return prog

            steps.append(_Step(
                a_key=b, a_loads=a_loads, a_words=mb * L.k_tiles,
                w_key=nt, w_loads=w_loads, w_words=L.k_tiles * R,
                p_key=nt, p_loads=(lambda base, n0=n0, lanes=lanes: [_param_load(
                    base, addr=p_addr + 4 * n0, n_total=L.n, lanes=lanes)]),
                matmul=dict(L.fields, m_rows=mb), stores=stores))
    return _schedule(config, steps, out_depth=out_depth)


def compile_network(config, qnet, codes, *, sparsity=None, base: int = 0) -> CompiledProgram:
    """One NPU program running ``qnet`` on the input ``codes`` of a batch of images.

    ``qnet`` is a :class:`~npugen.golden.digits.QuantizedNetwork`; ``codes`` its input
    codes (MLP ``(n, 64)``, CNN ``(n, 8, 8, 1)`` int8, as ``qnet.input_quant`` gives
    them).  ``sparsity="2:4"`` runs the layers with 2:4 weights in the array's sparse
    mode (int8 only; convolutions with fewer than 4 input channels stay dense).  The
    output ``logits`` (``(n, 10)`` int8) is expected to equal ``qnet.forward_codes``.

    ``qnet`` may also be a :class:`~npugen.golden.digits.BF16Network` (every layer in
    bf16 mode; ``codes``: its BF16 input encodings, uint16, as ``qnet.input_bits``
    gives them; ``qnet.rows`` must be ``config.rows``); the output ``logits`` is then
    ``(n, 10)`` FP32 bit patterns (int32), expected to equal ``qnet.forward_bits``.
    """
    from .digits import BF16Network, QuantizedNetwork

    config = NPUConfig.check(config)
    if isinstance(qnet, BF16Network):
        return _compile_bf16(config, qnet, codes, sparsity, base)
    if not isinstance(qnet, QuantizedNetwork):
        raise TypeError(f"qnet must be a QuantizedNetwork or BF16Network, not "
                        f"{type(qnet).__name__}")
    if sparsity not in (None, "2:4"):
        raise ValueError(f"sparsity must be None or '2:4', not {sparsity!r}")
    if sparsity and not config.sparse_2_4:
        raise ValueError("sparsity '2:4' needs a configuration with sparse_2_4")
    base = _base(base)
    codes = np.asarray(codes)
    want = (64,) if qnet.kind == "mlp" else (8, 8, 1)
    if codes.dtype != np.int8 or codes.ndim != 1 + len(want) or codes.shape[1:] != want \
            or len(codes) < 1:
        raise ValueError(f"codes must be int8 of shape (n, {', '.join(map(str, want))}) with "
                         f"n ≥ 1, not {codes.dtype} {codes.shape}")
    for layer in qnet.layers:
        if layer.mode not in config.modes:
            raise ValueError(f"the network needs mode {layer.mode!r}, which the "
                             f"configuration does not build (modes {list(config.modes)})")
    batch = len(codes)
    layers = []
    shape = codes.shape
    for i, (spec, q) in enumerate(zip(qnet.specs, qnet.layers)):
        next_mode = qnet.layers[i + 1].mode if i + 1 < len(qnet.layers) else None
        if spec.kind == "fc":
            shape = (batch, math.prod(shape[1:]))
        L = _Layer(config, i, spec, q, shape, batch, next_mode, sparsity == "2:4")
        layers.append(L)
        shape = L.out_shape
    # Segments: input, parameters, workspaces (layer inputs), output.
    segments = [("x", "input", layers[0].in_bytes, layers[0].__dict__.get("headroom", 0))]
    data = {"x": layers[0].input_bytes(codes)}
    _layer_segments(layers, segments, data)
    expected = {"logits": np.asarray(qnet.forward_codes(codes), dtype=np.int8)}
    return _finish(config, layers, segments, data, base, expected, "int8")


def _compile_bf16(config, bnet, bits, sparsity, base):
    if sparsity is not None:
        raise ValueError(f"sparsity must be None for a bf16 network, not {sparsity!r}")
    if "bf16" not in config.modes:
        raise ValueError(f"the network needs mode 'bf16', which the configuration does not "
                         f"build (modes {list(config.modes)})")
    if bnet.rows != config.rows:
        raise ValueError(f"the network's summation order is that of rows={bnet.rows}, the "
                         f"configuration has rows={config.rows}")
    base = _base(base)
    bits = np.asarray(bits)
    want = (64,) if bnet.kind == "mlp" else (8, 8, 1)
    if bits.dtype != np.uint16 or bits.ndim != 1 + len(want) or bits.shape[1:] != want \
            or len(bits) < 1:
        raise ValueError(f"codes must be uint16 BF16 encodings of shape (n, "
                         f"{', '.join(map(str, want))}) with n ≥ 1, not {bits.dtype} "
                         f"{bits.shape}")
    batch = len(bits)
    layers, shape = [], bits.shape
    last = len(bnet.specs) - 1
    for i, (spec, w, b) in enumerate(zip(bnet.specs, bnet.weights, bnet.biases)):
        if spec.kind == "fc":
            shape = (batch, math.prod(shape[1:]))
        L = _BF16Layer(config, i, spec, w, b, shape, batch, i == last)
        layers.append(L)
        shape = L.out_shape
    segments = [("x", "input", layers[0].in_bytes, layers[0].__dict__.get("headroom", 0)),
                ("one", "parameter", 2, 0)]
    data = {"x": layers[0].input_bytes(bits), "one": np.array([0x3F80], "<u2").tobytes()}
    _layer_segments(layers, segments, data)
    expected = {"logits": np.asarray(bnet.forward_bits(bits)).view(np.int32)}
    return _finish(config, layers, segments, data, base, expected, "int32")


def _layer_segments(layers, segments, data):
    """Append every layer's parameter segments (weights, 2:4 indices, requantization or
    bias words), the workspaces that hold the inputs of layers 1…, and the logits."""
    for L in layers:
        segments.append((f"w{L.index}", "parameter", len(L.w_data), 0))
        data[f"w{L.index}"] = L.w_data
        if getattr(L, "widx_data", None) is not None:
            segments.append((f"widx{L.index}", "parameter", len(L.widx_data), 0))
            data[f"widx{L.index}"] = L.widx_data
        segments.append((f"p{L.index}", "parameter", len(L.params), 0))
        data[f"p{L.index}"] = L.params
    for L in layers[1:]:
        segments.append((f"a{L.index}", "workspace", L.in_bytes,
                         L.__dict__.get("headroom", 0)))
    segments.append(("logits", "output", layers[-1].out_bytes, 0))


def _finish(config, layers, segments, data, base, expected, dtype):
    """The program of the compiled ``layers`` (one FENCE between layers, END)."""
    batch = layers[0].m if layers[0].spec.kind == "fc" else layers[0].out_shape[0]
    ranges = []

    def emit(addr):
        prog = []
        ranges.clear()
        for L in layers:
            first = len(prog)
            in_name = "x" if L.index == 0 else f"a{L.index}"
            out_name = "logits" if L.index == len(layers) - 1 else f"a{L.index + 1}"
            prog += _emit_layer(config, L, addr, in_name, out_name)
            prog.append(Fence() if L.index < len(layers) - 1 else End())
            ranges.append((first, len(prog)))
        return prog

    macs = sum(L.macs for L in layers)
    ideal = {L.index: math.ceil(L.macs / (config.peak_macs_per_cycle(L.mode) * L.factor))
             for L in layers}
    info = {"batch": batch, "layers": []}
    lowering = _Lowering("network", segments, emit, macs, sum(ideal.values()), info)
    program = _build(config, lowering, base, data,
                     {"logits": ((batch, layers[-1].n), dtype)}, expected)
    for L, (first, end) in zip(layers, ranges):
        info["layers"].append({"name": L.spec.name, "kind": L.spec.kind, "mode": L.mode,
                               "sparse": L.sparse, "first": first, "end": end,
                               "macs": L.macs, "ideal_cycles": ideal[L.index]})
    return program


def layer_cycles(program, estimate) -> list:
    """Cycles of each layer of a :func:`compile_network` program from a cycle-model
    ``estimate`` with a timeline (``npu_perf.estimate_program(..., timeline=True)``).

    A layer spans from the completion of the previous layer's FENCE (0 for the first)
    to the completion of its own FENCE (END for the last); the layers' cycles add up to
    the program's.  Returns ``[{"name", "cycles", "ideal_cycles", "utilization", ...}]``.
    """
    done = {t.index: t.done for t in estimate.timeline}
    result, start = [], 0
    layers = program.info["layers"]
    for i, layer in enumerate(layers):
        # the CYCLES register stops with END: the last layer ends at the program's cycles
        end = estimate.cycles if i == len(layers) - 1 else done[layer["end"] - 1]
        cycles = max(1, end - start)
        result.append({**{k: layer[k] for k in ("name", "kind", "mode", "sparse", "macs",
                                                 "ideal_cycles")},
                       "cycles": cycles, "utilization": layer["ideal_cycles"] / cycles})
        start = end
    return result
