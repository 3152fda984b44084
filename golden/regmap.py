"""The NPU's AXI4-Lite register map (``docs/ISA.md``, "Registers"), described once as data.

Every consumer reads this module: the register file (``hw/registers.py``) takes its
offsets, access types, writable bits, reset values and the ID block from here, the
emitters (``flows/regmap.py``) write it as JSON, a C header and Markdown, and the
testbenches address registers by name.  :data:`REGISTERS` is the map without a design
(the ID block's values are build parameters, ``reset=None``); :func:`register_map` gives
the map of one :class:`~npugen.golden.config.NPUConfig` with every value filled in.
:class:`RegisterFileModel` is the executable specification of what a host observes.

Registers are 32 bits at byte offsets that are multiples of 4 (the low two address bits
are ignored).  Access types: ``RO`` (a write answers SLVERR), ``WO`` (reads as 0),
``RW``, ``RW1C`` (reads the bits; writing 1 clears a bit, 0 leaves it).  Writes honour
the byte strobes.  A read of an unmapped offset and a write to an unmapped or read-only
offset answer SLVERR and change nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .config import NPUConfig
from .precision import MODES, MODE_CODES

__all__ = ["ACCESSES", "ADDR_WIDTH", "ID_VALUE", "VERSION_VALUE", "Field", "Register",
           "ErrorCode", "ERRORS", "ERROR_CODES", "REGISTERS", "ID_BLOCK", "UNIT_COUNTERS",
           "RegisterMap", "register_map", "id_values", "RegisterFileModel", "OKAY", "SLVERR"]

#: Access types: read-only, write-only, read/write, read / write 1 to clear.
ACCESSES = ("RO", "WO", "RW", "RW1C")
#: Address bits of the register space (4 KiB).
ADDR_WIDTH = 12
#: Value of the ID register: "NPUG" in ASCII.
ID_VALUE = 0x4E505547
#: Value of the VERSION register: major 1, minor 0 (``[31:16]`` major, ``[15:0]`` minor).
VERSION_VALUE = 0x00010000
#: AXI responses the map speaks of.
OKAY, SLVERR = 0b00, 0b10

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_WORD = (1 << 32) - 1


def _check_name(what, value):
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an upper-case identifier, not {value!r}")
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} must be an upper-case identifier, not {value!r}")


def _check_int(what, value, lo, hi, *, hexadecimal=False):
    bounds = f"{lo:#x}..{hi:#x}" if hexadecimal else f"{lo}..{hi}"
    message = f"{what} must be an integer in {bounds}, not {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(message)
    if not lo <= value <= hi:
        raise ValueError(message)


def _check_text(what, value):
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {value!r}")


@dataclass(frozen=True)
class Field:
    """Bits ``[lsb, lsb + width)`` of a register."""

    name: str
    lsb: int
    width: int
    description: str

    def __post_init__(self):
        _check_name("name", self.name)
        _check_int("lsb", self.lsb, 0, 31)
        _check_int("width", self.width, 1, 32 - self.lsb)
        _check_text("description", self.description)

    @property
    def mask(self) -> int:
        """The field's bits in the register word."""
        return ((1 << self.width) - 1) << self.lsb

    def extract(self, word: int) -> int:
        """The field's value in ``word``."""
        return (word & self.mask) >> self.lsb

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Register:
    """One 32-bit register.

    ``fields`` is empty when the whole word is one value.  ``reset`` is the value after
    reset; ``None`` in :data:`REGISTERS` for the ID block, whose values are build
    parameters (see :func:`register_map`).
    """

    name: str
    offset: int
    access: str
    reset: int | None
    description: str
    fields: tuple[Field, ...] = ()

    def __post_init__(self):
        _check_name("name", self.name)
        _check_int("offset", self.offset, 0, (1 << ADDR_WIDTH) - 4, hexadecimal=True)
        if self.offset % 4:
            raise ValueError(f"offset must be a multiple of 4, not {self.offset:#x}")
        if not isinstance(self.access, str):
            raise TypeError(f"access must be one of {', '.join(ACCESSES)}, not {self.access!r}")
        if self.access not in ACCESSES:
            raise ValueError(f"access must be one of {', '.join(ACCESSES)}, not {self.access!r}")
        if self.reset is not None:
            _check_int("reset", self.reset, 0, _WORD, hexadecimal=True)
        _check_text("description", self.description)
        if isinstance(self.fields, list):
            object.__setattr__(self, "fields", tuple(self.fields))
        if not isinstance(self.fields, tuple) or \
                not all(isinstance(f, Field) for f in self.fields):
            raise TypeError(f"fields must be a tuple of Field, not {self.fields!r}")
        used, names = 0, set()
        for f in self.fields:
            if f.mask & used:
                raise ValueError(f"fields of {self.name} must not overlap, not {f.name!r} "
                                 f"at bits {f.lsb}..{f.lsb + f.width - 1}")
            if f.name in names:
                raise ValueError(f"fields of {self.name} must have distinct names, "
                                 f"not {f.name!r} twice")
            used |= f.mask
            names.add(f.name)
        if self.reset is not None and self.fields and self.reset & ~used:
            raise ValueError(f"reset of {self.name} must lie within its fields, "
                             f"not {self.reset:#010x}")

    @property
    def mask(self) -> int:
        """The bits that hold something (all 32 when the register has no fields)."""
        if not self.fields:
            return _WORD
        mask = 0
        for f in self.fields:
            mask |= f.mask
        return mask

    @property
    def readable(self) -> bool:
        return self.access != "WO"

    @property
    def writable(self) -> bool:
        return self.access != "RO"

    @property
    def write_mask(self) -> int:
        """Bits a write acts on (stores, clears or triggers); 0 for a read-only register."""
        return self.mask if self.writable else 0

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise ValueError(f"field must be one of {', '.join(f.name for f in self.fields)} "
                         f"of {self.name}, not {name!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "access": self.access,
                "reset": self.reset, "description": self.description,
                "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: dict) -> "Register":
        data = dict(data)
        data["fields"] = tuple(Field(**f) for f in data.get("fields", ()))
        return cls(**data)


@dataclass(frozen=True)
class ErrorCode:
    """A code of the ERROR register and what its detail byte holds."""

    code: int
    name: str
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Error codes (docs/ISA.md, "Errors"); ``hw/isa.py`` ``NPUError`` has the same codes.
ERRORS = (
    ErrorCode(0, "NONE", ""),
    ErrorCode(1, "ILLEGAL_OPCODE", "opcode"),
    ErrorCode(2, "BAD_FIELD", "opcode"),
    ErrorCode(3, "FEATURE_NOT_BUILT", "opcode"),
    ErrorCode(4, "BAD_SP_ADDRESS", "opcode"),
    ErrorCode(5, "BAD_HOST_ADDRESS", "opcode (0 for an instruction fetch)"),
    ErrorCode(6, "MISALIGNED", "opcode (0 for PROG_ADDR)"),
    ErrorCode(7, "AXI_READ_ERROR", "opcode (0 for an instruction fetch)"),
    ErrorCode(8, "AXI_WRITE_ERROR", "opcode"),
    ErrorCode(9, "CORE", "CoreError code of the GEMM core"),
)
#: Error name → code.
ERROR_CODES = {e.name: e.code for e in ERRORS}

_DONE_ERROR_BITS = (Field("DONE", 0, 1, "the program reached END"),
                    Field("ERROR", 1, 1, "the program stopped on an error"))


def _reg(name, offset, access, reset, description, *fields):
    return Register(name, offset, access, reset, description, tuple(fields))


#: ID-block register → (build parameter, description).
_ID_PARAMETERS = {
    "ROWS": ("rows", "systolic array rows"),
    "COLS": ("cols", "systolic array columns"),
    "ACC_BITS": ("acc_bits", "accumulator width in bits"),
    "ACC_DEPTH": ("acc_depth", "accumulator buffer rows (largest m_rows)"),
    "MODES": (None, "precision modes built: bit i is mode code i"),
    "FEATURES": (None, "optional features built"),
    "AXI_DATA_BITS": ("axi_data_bits", "data width of the AXI4 master"),
    "ACT_SP_DEPTH": ("act_sp_depth", "words of the ACT scratchpad"),
    "WGT_SP_DEPTH": ("wgt_sp_depth", "words of the WGT (and WIDX) scratchpad"),
    "OUT_SP_DEPTH": ("out_sp_depth", "words of the OUT scratchpad"),
    "PARAM_SP_DEPTH": ("param_sp_depth", "words of the PARAM scratchpad"),
    "CONFIG_HASH": (None, "first 8 hex digits of NPUConfig.config_hash()"),
}

_ID_FIELDS = {
    "MODES": tuple(Field(mode.upper(), MODE_CODES[mode], 1, f"mode {mode} (code "
                                                            f"{MODE_CODES[mode]}) built")
                   for mode in MODES),
    "FEATURES": (Field("SPARSE_2_4", 0, 1, "2:4 structured weight sparsity (sparse_2_4)"),),
}

#: The units with a busy counter (``*_BUSY`` at 0x040...), in the order of the register
#: file's ``unit_busy`` bits.
_COUNTED_UNITS = ("load", "compute", "vector", "store")

#: The whole map; the ID block (offsets 0x100...) has ``reset=None``.
REGISTERS = (
    _reg("ID", 0x000, "RO", ID_VALUE, 'identification, "NPUG"'),
    _reg("VERSION", 0x004, "RO", VERSION_VALUE, "register map version",
         Field("MINOR", 0, 16, "minor version"), Field("MAJOR", 16, 16, "major version")),
    _reg("CTRL", 0x008, "WO", 0, "control (reads as 0)",
         Field("START", 0, 1, "writing 1 starts the program at PROG_ADDR; "
                              "ignored while busy")),
    _reg("STATUS", 0x00C, "RO", 0, "status; DONE and ERROR are cleared by START",
         Field("BUSY", 0, 1, "a program is running"),
         Field("DONE", 1, 1, "the last program reached END"),
         Field("ERROR", 2, 1, "the last program stopped on an error")),
    _reg("ERROR", 0x010, "RO", 0, "error of the last program (cleared by START)",
         Field("CODE", 0, 8, "error code (see the error codes)"),
         Field("DETAIL", 8, 8, "detail of the error")),
    _reg("ERROR_PC", 0x014, "RO", 0, "byte address of the failing instruction"),
    _reg("PROG_ADDR", 0x018, "RW", 0, "host address of the first instruction "
                                      "(32-byte aligned; sampled at START)"),
    _reg("IRQ_ENABLE", 0x01C, "RW", 0, "interrupt enables", *_DONE_ERROR_BITS),
    _reg("IRQ_STATUS", 0x020, "RW1C", 0, "interrupt status; irq = "
                                         "|(IRQ_STATUS & IRQ_ENABLE)", *_DONE_ERROR_BITS),
    _reg("CYCLES_LO", 0x024, "RO", 0, "cycles from START to DONE/ERROR, low word "
                                      "(counts while BUSY; cleared by START)"),
    _reg("CYCLES_HI", 0x028, "RO", 0, "cycles from START to DONE/ERROR, high word "
                                      "(while running read HI, LO, HI)"),
    _reg("INSTRET", 0x02C, "RO", 0, "instructions completed in the last run, FENCE and "
                                    "END included (mod 2^32)"),
    _reg("READ_BASE", 0x030, "RW", 0, "lowest host address the NPU may read "
                                      "(sampled at START)"),
    _reg("READ_LIMIT", 0x034, "RW", 0, "first host address above the read window "
                                       "(sampled at START)"),
    _reg("WRITE_BASE", 0x038, "RW", 0, "lowest host address the NPU may write "
                                       "(sampled at START)"),
    _reg("WRITE_LIMIT", 0x03C, "RW", 0, "first host address above the write window "
                                        "(sampled at START)"),
) + tuple(
    _reg(f"{unit.upper()}_BUSY", 0x040 + 4 * i, "RO", 0,
         f"cycles the {unit} unit was busy in the last run (mod 2^32)")
    for i, unit in enumerate(_COUNTED_UNITS)
) + tuple(
    _reg(name, 0x100 + 4 * i, "RO", None, f"build parameter: {description}",
         *_ID_FIELDS.get(name, ()))
    for i, (name, (_param, description)) in enumerate(_ID_PARAMETERS.items())
)

#: Names of the ID-block registers, in offset order.
ID_BLOCK = tuple(_ID_PARAMETERS)
#: Per-unit busy counters in the order of the register file's ``unit_busy`` bits.
UNIT_COUNTERS = tuple(f"{unit.upper()}_BUSY" for unit in _COUNTED_UNITS)


def id_values(config: NPUConfig) -> dict[str, int]:
    """The ID block of ``config``: register name → value."""
    NPUConfig.check(config)
    values = {}
    for name, (param, _description) in _ID_PARAMETERS.items():
        if param is not None:
            values[name] = getattr(config, param)
    values["MODES"] = sum(1 << MODE_CODES[mode] for mode in config.modes)
    values["FEATURES"] = int(config.sparse_2_4)
    values["CONFIG_HASH"] = int(config.config_hash()[:8], 16)
    return {name: values[name] for name in ID_BLOCK}


@dataclass(frozen=True)
class RegisterMap:
    """The register map of one design: registers with values, error codes, parameters."""

    registers: tuple[Register, ...]
    errors: tuple[ErrorCode, ...]
    config: NPUConfig

    def __post_init__(self):
        offsets, names = {}, set()
        for reg in self.registers:
            if reg.reset is None:
                raise ValueError(f"reset of {reg.name} must be a value in a RegisterMap, "
                                 f"not None")
            if reg.offset in offsets:
                raise ValueError(f"offset must be unique, not {reg.offset:#05x} for both "
                                 f"{offsets[reg.offset]} and {reg.name}")
            if reg.name in names:
                raise ValueError(f"name must be unique, not {reg.name!r} twice")
            offsets[reg.offset] = reg.name
            names.add(reg.name)

    def __getitem__(self, name: str) -> Register:
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(name)

    def __iter__(self):
        return iter(self.registers)

    def __len__(self):
        return len(self.registers)

    def at(self, offset: int) -> Register | None:
        """The register at byte ``offset`` (low two bits ignored), or ``None``."""
        for reg in self.registers:
            if reg.offset == offset & ~3:
                return reg
        return None

    def to_dict(self) -> dict:
        """Plain JSON-compatible values (``flows/regmap.py`` writes them as regmap.json)."""
        return {
            "name": "npu",
            "addr_width": ADDR_WIDTH,
            "data_width": 32,
            "config_hash": self.config.config_hash(),
            "parameters": self.config.to_dict(),
            "registers": [reg.to_dict() for reg in self.registers],
            "errors": [e.to_dict() for e in self.errors],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RegisterMap":
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(Register.from_dict(r) for r in data["registers"]),
                   tuple(ErrorCode(**e) for e in data["errors"]),
                   NPUConfig.from_dict(data["parameters"], source="register map"))


def register_map(config: NPUConfig) -> RegisterMap:
    """The register map of ``config``: :data:`REGISTERS` with the ID block's values."""
    ids = id_values(config)
    registers = tuple(reg if reg.reset is not None else dataclasses.replace(reg, reset=ids[reg.name])
                      for reg in REGISTERS)
    return RegisterMap(registers, ERRORS, config)


class RegisterFileModel:
    """What a host observes on the registers of ``config``, one clock cycle at a time.

    Host side: :meth:`read` and :meth:`write` return the AXI response (and data) of one
    access.  NPU side: :meth:`step` advances cycles with the register file's inputs
    (``unit_busy`` bits, ``retire``) held, and applies ``finish`` or ``fail`` in the last
    of them.  While BUSY, each cycle counts in CYCLES, each cycle with ``retire`` in
    INSTRET and each cycle with ``unit_busy`` bit i in counter i (:data:`UNIT_COUNTERS`);
    the cycle of ``finish``/``fail`` still counts, and ``fail`` wins over ``finish``.
    A START sets BUSY, clears DONE, ERROR, the ERROR/ERROR_PC registers and the counters,
    and samples PROG_ADDR and the windows into :attr:`sampled`.
    """

    def __init__(self, config: NPUConfig):
        self.map = register_map(config)
        self.values = {reg.name: reg.reset for reg in self.map}
        self.busy = False
        self.cycles = 0
        self.starts = 0
        self.sampled = {name: 0 for name in ("PROG_ADDR", "READ_BASE", "READ_LIMIT",
                                            "WRITE_BASE", "WRITE_LIMIT")}

    @property
    def irq(self) -> int:
        return int(bool(self.values["IRQ_STATUS"] & self.values["IRQ_ENABLE"]))

    def _status(self, busy=None, done=None, error=None):
        status = self.map["STATUS"]
        value = self.values["STATUS"]
        for name, bit in (("BUSY", busy), ("DONE", done), ("ERROR", error)):
            if bit is not None:
                mask = status.field(name).mask
                value = (value | mask) if bit else (value & ~mask)
        self.values["STATUS"] = value

    def read(self, offset: int) -> tuple[int, int]:
        """``(data, resp)`` of a read of byte ``offset``."""
        reg = self.map.at(offset)
        if reg is None:
            return 0, SLVERR
        if not reg.readable:
            return 0, OKAY
        return self.values[reg.name], OKAY

    def write(self, offset: int, data: int, strobe: int = 0xF) -> int:
        """The response of a write of ``data`` with byte ``strobe`` to byte ``offset``."""
        reg = self.map.at(offset)
        if reg is None or not reg.writable:
            return SLVERR
        bits = sum(0xFF << 8 * i for i in range(4) if strobe >> i & 1) & reg.write_mask
        if reg.access == "RW":
            self.values[reg.name] = (self.values[reg.name] & ~bits) | (data & bits)
        elif reg.access == "RW1C":
            self.values[reg.name] &= ~(data & bits)
        elif reg.name == "CTRL" and data & bits & reg.field("START").mask and not self.busy:
            self._start()
        return OKAY

    def _start(self):
        self.busy = True
        self.starts += 1
        self._status(busy=True, done=False, error=False)
        self.values["ERROR"] = self.values["ERROR_PC"] = 0
        self.cycles = 0
        for name in ("CYCLES_LO", "CYCLES_HI", "INSTRET", *UNIT_COUNTERS):
            self.values[name] = 0
        for name in self.sampled:
            self.sampled[name] = self.values[name]

    def step(self, cycles: int = 1, *, unit_busy: int = 0, retire: bool = False,
             finish: bool = False, fail: tuple[int, int, int] | None = None) -> None:
        """Advance ``cycles`` clock cycles; ``finish``/``fail`` (code, detail, pc) in the last."""
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles must be a positive integer, not {cycles!r}")
        if not self.busy:
            return
        self.cycles = (self.cycles + cycles) & ((1 << 64) - 1)
        if retire:
            self.values["INSTRET"] = (self.values["INSTRET"] + cycles) & _WORD
        for i, name in enumerate(UNIT_COUNTERS):
            if unit_busy >> i & 1:
                self.values[name] = (self.values[name] + cycles) & _WORD
        self.values["CYCLES_LO"] = self.cycles & _WORD
        self.values["CYCLES_HI"] = self.cycles >> 32
        if fail is not None:
            code, detail, pc = fail
            self.values["ERROR"] = (code & 0xFF) | (detail & 0xFF) << 8
            self.values["ERROR_PC"] = pc & _WORD
            self._status(busy=False, error=True)
            self.values["IRQ_STATUS"] |= self.map["IRQ_STATUS"].field("ERROR").mask
            self.busy = False
        elif finish:
            self._status(busy=False, done=True)
            self.values["IRQ_STATUS"] |= self.map["IRQ_STATUS"].field("DONE").mask
            self.busy = False
