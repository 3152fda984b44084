"""The NPU configuration: one frozen, validated object that every consumer reads.

The RTL generator, the golden model, the GEMM driver, the cycle model and the CLI all
take an :class:`NPUConfig`.  It lives in ``npugen.golden`` because the golden model and
the compiler must import it without Amaranth.  Every invalid value raises
``ValueError``/``TypeError`` naming the parameter and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .precision import MODES, k_per_rows

__all__ = ["NPUConfig", "PRESETS", "PRECISION_MODES", "DATAFLOWS", "ConfigError"]

#: Precision modes known to the project; ``modes`` selects which ones are built.
PRECISION_MODES = MODES
#: Dataflows of the systolic array.
DATAFLOWS = ("weight_stationary",)


class ConfigError(ValueError):
    """A configuration file or override could not be turned into an :class:`NPUConfig`."""


def _check_int(name, value, lo, hi, *, power_of_two=False):
    what = "a power of two" if power_of_two else "an integer"
    message = f"{name} must be {what} in {lo}..{hi}, not {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(message)
    if not lo <= value <= hi or (power_of_two and value & (value - 1)):
        raise ValueError(message)


@dataclass(frozen=True)
class NPUConfig:
    """One design point of the NPU.

    Parameters
    ----------
    rows:
        Systolic array rows ``R``: the K (reduction) extent of one weight tile.
    cols:
        Systolic array columns ``C``: the N (output channel) extent of one tile.
    dataflow:
        ``"weight_stationary"``: a weight tile stays in the PEs while activation rows
        stream through; weights for the next tile are preloaded into shadow registers.
    lane_bits:
        Width of one operand lane in bits (8: one int8 activation/weight per lane).
    acc_bits:
        Accumulator width; sums wrap modulo ``2**acc_bits`` (two's complement).
    acc_depth:
        Rows of the accumulator buffer: the largest M of one output tile.
    out_fifo_depth:
        Depth of the result FIFO that absorbs output back-pressure; rows are issued
        into the array only when a result slot is guaranteed.
    modes:
        Precision modes built into the array (a subset of :data:`PRECISION_MODES`).
    spmm_lanes:
        Lanes ``P`` of the zero-skipping sparse engine: weight non-zeros processed per
        cycle, each against ``rows`` activations (peak ``spmm_lanes × rows`` MACs per
        cycle; ``spmm_lanes = cols`` matches the array's peak).
    sparse_2_4:
        Build 2:4 structured weight sparsity into the systolic array (int8 jobs with
        the tile command's ``sparse`` flag cover ``2·rows`` of K per tile).  A pair of
        PE rows shares a group of 4 K elements, so ``rows`` must be even.
    axi_data_bits:
        Data width of the NPU's AXI4 master (DMA to host memory): 32, 64, 128 or 256.
    act_sp_depth, wgt_sp_depth, out_sp_depth, param_sp_depth:
        Words of the activation, weight, output and parameter scratchpads (see
        ``docs/ISA.md``: an activation word is one array row of int8 lanes, a weight
        word one row of ``cols`` int8 lanes, an output or parameter word ``cols`` int32
        lanes).
    """

    rows: int = 8
    cols: int = 8
    dataflow: str = "weight_stationary"
    lane_bits: int = 8
    acc_bits: int = 32
    acc_depth: int = 512
    out_fifo_depth: int = 64
    modes: tuple[str, ...] = field(default=("int8", "int4", "binary"))
    spmm_lanes: int = 8
    sparse_2_4: bool = False
    axi_data_bits: int = 64
    act_sp_depth: int = 4096
    wgt_sp_depth: int = 2048
    out_sp_depth: int = 2048
    param_sp_depth: int = 128

    def __post_init__(self):
        _check_int("rows", self.rows, 2, 64)
        _check_int("cols", self.cols, 2, 64)
        if not isinstance(self.dataflow, str):
            raise TypeError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not {self.dataflow!r}")
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not {self.dataflow!r}")
        if isinstance(self.lane_bits, bool) or not isinstance(self.lane_bits, int):
            raise TypeError(f"lane_bits must be the integer 8, not {self.lane_bits!r}")
        if self.lane_bits != 8:
            raise ValueError(f"lane_bits must be the integer 8, not {self.lane_bits!r}")
        _check_int("acc_bits", self.acc_bits, 18, 32)
        _check_int("acc_depth", self.acc_depth, 16, 65536, power_of_two=True)
        _check_int("out_fifo_depth", self.out_fifo_depth, 4, 1024, power_of_two=True)
        _check_int("spmm_lanes", self.spmm_lanes, 1, 64)
        if not isinstance(self.sparse_2_4, bool):
            raise TypeError(f"sparse_2_4 must be a boolean, not {self.sparse_2_4!r}")
        if self.sparse_2_4 and self.rows % 2:
            raise ValueError(f"sparse_2_4 needs an even number of rows (a pair of rows "
                             f"shares a group of 4 K elements), not rows={self.rows}")
        _check_int("axi_data_bits", self.axi_data_bits, 32, 256, power_of_two=True)
        _check_int("act_sp_depth", self.act_sp_depth, 64, 65536, power_of_two=True)
        _check_int("wgt_sp_depth", self.wgt_sp_depth, 64, 65536, power_of_two=True)
        _check_int("out_sp_depth", self.out_sp_depth, 64, 65536, power_of_two=True)
        _check_int("param_sp_depth", self.param_sp_depth, 16, 65536, power_of_two=True)
        modes = self.modes
        if isinstance(modes, str) or not isinstance(modes, (tuple, list)):
            raise TypeError(f"modes must be a list of mode names, not {modes!r}")
        for mode in modes:
            if not isinstance(mode, str):
                raise TypeError(
                    f"modes must contain only {', '.join(PRECISION_MODES)}, not {mode!r}")
            if mode not in PRECISION_MODES:
                raise ValueError(
                    f"modes must contain only {', '.join(PRECISION_MODES)}, not {mode!r}")
        if len(set(modes)) != len(modes):
            raise ValueError(f"modes must not repeat a mode, not {list(modes)!r}")
        if "int8" not in modes:
            raise ValueError(f"modes must include 'int8', not {list(modes)!r}")
        if "bf16" in modes and self.rows % 2:
            raise ValueError(f"modes with 'bf16' need an even number of rows (a BF16 value "
                             f"takes two lanes), not rows={self.rows}")
        if "bf16" in modes and (self.lane_bits, self.acc_bits) != (8, 32):
            raise ValueError(f"modes with 'bf16' need lane_bits=8 and acc_bits=32 (FP32 sums), "
                             f"not lane_bits={self.lane_bits} and acc_bits={self.acc_bits}")
        # Canonical order so equal designs compare and hash equal.
        object.__setattr__(self, "modes", tuple(m for m in PRECISION_MODES if m in modes))

    # -- derived figures ------------------------------------------------------------

    @property
    def pes(self) -> int:
        """Number of processing elements."""
        return self.rows * self.cols

    def peak_macs_per_cycle(self, mode: str = "int8") -> int:
        """Multiply-accumulates per cycle of the whole array in ``mode``."""
        if mode not in self.modes:
            raise ValueError(f"mode must be one of the built modes {list(self.modes)}, not {mode!r}")
        return self.cols * k_per_rows(self.rows, mode)

    @property
    def acc_buffer_bytes(self) -> int:
        """Size of the accumulator buffer in bytes (``acc_depth`` × ``cols`` × acc)."""
        return self.acc_depth * self.cols * self.acc_bits // 8

    @property
    def weight_registers_bytes(self) -> int:
        """Bytes of weight storage in the PEs (active + shadow bank)."""
        return 2 * self.pes * self.lane_bits // 8

    @property
    def acc_row_bits(self) -> int:
        """Bits of the row counter that addresses the accumulator buffer."""
        return max(1, math.ceil(math.log2(self.acc_depth + 1)))

    def derived(self) -> dict:
        """Figures derived from the parameters, for ``npugen info`` and the manifest."""
        return {
            "pes": self.pes,
            "peak_macs_per_cycle": {m: self.peak_macs_per_cycle(m) for m in self.modes},
            "acc_buffer_bytes": self.acc_buffer_bytes,
            "weight_registers_bytes": self.weight_registers_bytes,
            "max_tile_m": self.acc_depth,
            "tile_k": self.rows,
            "tile_n": self.cols,
        }

    # -- serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict:
        """The parameters as plain JSON/TOML-compatible values."""
        d = dataclasses.asdict(self)
        d["modes"] = list(self.modes)
        return d

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "configuration") -> "NPUConfig":
        """Build a configuration from a table; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of parameters, not {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
        data = dict(data)
        if isinstance(data.get("modes"), list):
            data["modes"] = tuple(data["modes"])
        return cls(**data)

    def to_toml(self) -> str:
        """The configuration as a TOML document with one ``[npu]`` table."""
        return tomli_w.dumps({"npu": self.to_dict()})

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> "NPUConfig":
        """Parse a TOML document; ``source`` names it in error messages."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        table = doc.get("npu", None)
        if table is None:
            raise ConfigError(f"{source}: missing [npu] table")
        extra = sorted(set(doc) - {"npu"})
        if extra:
            raise ConfigError(
                f"{source}: unknown top-level key {extra[0]!r} (parameters belong in the [npu] table)")
        return cls.from_dict(table, source=source)

    def save(self, path) -> None:
        """Write the configuration to ``path`` as TOML."""
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "NPUConfig":
        """Read a configuration written by :meth:`save` (or by hand)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read configuration: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: cannot read configuration: not UTF-8 text") from None
        return cls.from_toml(text, source=str(path))

    @classmethod
    def check(cls, config) -> "NPUConfig":
        """``config`` itself if it is an :class:`NPUConfig`; a ``TypeError`` otherwise."""
        if not isinstance(config, cls):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        return config

    @classmethod
    def preset(cls, name: str) -> "NPUConfig":
        """The named preset from :data:`PRESETS`."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {name!r}") from None

    def replace(self, **changes) -> "NPUConfig":
        """A validated copy with some parameters changed."""
        return dataclasses.replace(self, **changes)

    def config_hash(self) -> str:
        """A short stable hash of the parameters (build caches are keyed on it)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


PRESETS: dict[str, NPUConfig] = {
    "tiny": NPUConfig(rows=2, cols=2, acc_depth=64, out_fifo_depth=32, spmm_lanes=2,
                      sparse_2_4=True, axi_data_bits=32, act_sp_depth=2048,
                      wgt_sp_depth=512, out_sp_depth=512, param_sp_depth=64),
    "default": NPUConfig(rows=8, cols=8, acc_depth=512, out_fifo_depth=64, sparse_2_4=True),
    "large": NPUConfig(rows=32, cols=32, acc_depth=1024, out_fifo_depth=128, spmm_lanes=32,
                       axi_data_bits=256, act_sp_depth=4096, wgt_sp_depth=2048,
                       out_sp_depth=2048, param_sp_depth=128),
}
