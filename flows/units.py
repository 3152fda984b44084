"""The registry of synthesizable units: what ``npugen synth --unit`` and ``npugen cost`` build.

A unit is one Amaranth component synthesized alone (out of context), with the number of
multiply-accumulates it performs per cycle so the cost table can report LUTs per MAC.
Adding a unit is one entry in :data:`UNITS`::

    "bf16_mul_lut": Unit(lambda c: Bf16Multiplier(dsp=False), 1, "BF16 multiplier in LUTs",
                         group="float-mul-lut", partial_products=(7 + 1) ** 2),

``factory`` receives the :class:`~npugen.golden.config.NPUConfig` of the run (units that
do not depend on it ignore it); ``macs_per_cycle`` is a number or a function of the
configuration.  ``partial_products`` is the size of the multiplier's partial-product
array (``(m+1)²`` for a float significand of ``m`` stored bits); units of one ``group``
are compared by the ratio of their measured LUTs against the ratio of this model.

The hardware modules are imported inside the factories, so the registry can be listed
(and the flow scripts tested) without elaborating anything.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Union

__all__ = ["Unit", "UNITS", "NPU_TOP", "unit_names", "get_unit", "build_unit", "unit_macs"]

#: Name of the design built when no unit is chosen: the whole NPU top (AXI host interface).
NPU_TOP = "npu"


@dataclass(frozen=True)
class Unit:
    """One entry of the unit registry.

    Parameters
    ----------
    factory : callable
        ``factory(config)`` returns a fresh ``wiring.Component`` with a ``sync`` domain.
    macs_per_cycle : int or callable
        Multiply-accumulates per cycle (``macs_per_cycle(config)`` when callable); 0 for
        units that do no MACs (requantizer, buffers).
    description : str
        One line for tables and ``--help``.
    group : str or None
        Units whose areas are compared with each other (same ``group``).
    partial_products : int or None
        Partial-product bits of the multiplier model, e.g. ``(m+1)**2``.
    baseline : str or None
        A unit this one extends (a PE with an extra precision mode extends the int8 PE):
        the cost table reports the extra LUT4 per MAC of the extension,
        ``(LUT4 − baseline LUT4) / MACs per cycle``.
    """

    factory: Callable
    macs_per_cycle: Union[int, Callable]
    description: str
    group: str | None = None
    partial_products: int | None = None
    baseline: str | None = None


def _with_modes(cls, modes, **kwargs):
    """``cls(**kwargs)``, passing ``modes`` when the component is built for several modes."""
    if "modes" in inspect.signature(cls.__init__).parameters:
        kwargs["modes"] = tuple(modes)
    elif tuple(modes) != ("int8",):
        raise ValueError(f"{cls.__name__} has no precision modes, cannot build {list(modes)}")
    return cls(**kwargs)


def _int8_pe(config):
    from npugen.hw.pe import ProcessingElement
    return _with_modes(ProcessingElement, ("int8",), act_bits=config.lane_bits + 1,
                       weight_bits=config.lane_bits, acc_bits=config.acc_bits)


def _pe(config):
    from npugen.hw.pe import ProcessingElement
    return _with_modes(ProcessingElement, config.modes, act_bits=config.lane_bits + 1,
                       weight_bits=config.lane_bits, acc_bits=config.acc_bits)


def _pe_with(modes):
    """A factory of a PE with ``modes`` (no 2:4), whatever the configuration's modes."""
    def factory(config):
        from npugen.hw.pe import ProcessingElement
        return ProcessingElement(act_bits=config.lane_bits + 1, weight_bits=config.lane_bits,
                                 acc_bits=config.acc_bits, modes=modes)
    return factory


def _array(config):
    from npugen.hw.systolic_array import SystolicArray
    return _with_modes(SystolicArray, config.modes, rows=config.rows, cols=config.cols,
                       act_bits=config.lane_bits + 1, weight_bits=config.lane_bits,
                       acc_bits=config.acc_bits)


def _accumulator(config):
    from npugen.hw.accumulator import AccumulatorBuffer
    return AccumulatorBuffer(config)


def _requantizer(config):
    from npugen.hw.requantizer import Requantizer
    return Requantizer(config)


def _gemm_core(config):
    from npugen.flows.verilog import top_component
    return top_component(config, top="gemm_core")


def _npu(config):
    from npugen.flows.verilog import top_component
    return top_component(config, top="npu")


def _npu_block(module, cls_name):
    """A factory of one block of the NPU top (``npugen.hw.<module>.<cls_name>(config)``),
    synthesized alone to find which block limits the top's Fmax."""
    def factory(config):
        import importlib
        return getattr(importlib.import_module(f"npugen.hw.{module}"), cls_name)(config)
    return factory


def _float_unit(kind, fmt_name, **kwargs):
    """A factory of an FP multiplier or adder behind plain ports.

    The FP units' streams are ``always_ready`` (their ``ready`` is a constant), which a
    Verilog top cannot have as a port; the shell exposes ``a``, ``b``, ``valid_in`` and
    ``result``, ``valid_out`` and connects them straight through.
    """
    def factory(config):
        from amaranth.hdl import Module
        from amaranth.lib import wiring
        from amaranth.lib.wiring import In, Out

        from npugen.golden import floating
        from npugen.hw.float_format import float_struct
        from npugen.hw.fp_adder import FloatAdder
        from npugen.hw.fp_multiplier import FloatMultiplier

        fmt = getattr(floating, fmt_name)
        cls = FloatMultiplier if kind == "mul" else FloatAdder

        class FloatUnitShell(wiring.Component):
            def __init__(self):
                super().__init__({"a": In(float_struct(fmt)), "b": In(float_struct(fmt)),
                                  "valid_in": In(1), "result": Out(float_struct(fmt)),
                                  "valid_out": Out(1)})

            def elaborate(self, platform):
                m = Module()
                m.submodules.unit = unit = cls(fmt, **kwargs)
                m.d.comb += [
                    unit.operands.payload.a.eq(self.a), unit.operands.payload.b.eq(self.b),
                    unit.operands.valid.eq(self.valid_in),
                    self.result.eq(unit.result.payload), self.valid_out.eq(unit.result.valid),
                ]
                return m

        return FloatUnitShell()
    return factory


def _peak_macs(config):
    return max(config.peak_macs_per_cycle(mode) for mode in config.modes)


#: name → :class:`Unit`.  One line per unit; the order is the order of the cost table.
UNITS: dict[str, Unit] = {
    "int8_pe": Unit(_int8_pe, 1, "INT8 MAC processing element (9-bit × 8-bit, int32 psum)",
                    group="int-mac", partial_products=9 * 8),
    "pe": Unit(_pe, lambda c: max(c.peak_macs_per_cycle(m) for m in c.modes) // c.pes,
               "processing element with the configuration's precision modes"),
    "int4_pe": Unit(_pe_with(("int8", "int4")), 2, "PE with int8 and int4 (two int4 MACs "
                    "per cycle on the shared multiplier)", baseline="int8_pe"),
    "binary_pe": Unit(_pe_with(("int8", "binary")), 8, "PE with int8 and binary (eight "
                      "XNOR-popcount MACs per cycle)", baseline="int8_pe"),
    "bf16_pe": Unit(_pe_with(("int8", "bf16")), 1, "PE with int8 and the BF16 MAC (a "
                    "BF16×BF16→FP32 product and an FP32 sum per cycle)", baseline="int8_pe"),
    "array": Unit(_array, _peak_macs, "rows × cols systolic array core with skew/deskew"),
    "accumulator": Unit(_accumulator, 0, "accumulator buffer (acc_depth rows × cols, RMW)"),
    "requantizer": Unit(_requantizer, 0, "per-column TFLite requantizer (cols lanes, 11 stages)"),
    **{f"{name}_mul_{kind}": Unit(
        _float_unit("mul", fmt, multiplier=kind), 1,
        f"{name.upper()} multiplier, significand product {'on a DSP' if kind == 'dsp' else 'in LUTs'}",
        group=f"float-mul-{kind}", partial_products=(man + 1) ** 2)
       for kind in ("lut", "dsp")
       for name, fmt, man in (("bf16", "BFLOAT16", 7), ("fp16", "FLOAT16", 10),
                              ("tf32", "TENSORFLOAT32", 10), ("fp32", "FLOAT32", 23))},
    "fp32_add": Unit(_float_unit("add", "FLOAT32"), 0, "FP32 adder (accumulation)"),
    "gemm_core": Unit(_gemm_core, _peak_macs, "GEMM core: controller, array, accumulator, "
                                              "requantizer, result FIFO"),
    "registers": Unit(_npu_block("registers", "RegisterFile"), 0,
                      "NPU block: AXI4-Lite register file"),
    "controller": Unit(_npu_block("controller", "Controller"), 0,
                       "NPU block: instruction decode, dependency tracking, dispatch"),
    "fetch": Unit(_npu_block("dma_read", "InstructionFetch"), 0,
                  "NPU block: instruction fetch (AXI4 reads, ID 0)"),
    "load_engine": Unit(_npu_block("dma_read", "LoadEngine"), 0,
                        "NPU block: LOAD DMA (AXI4 reads → scratchpads)"),
    "store_engine": Unit(_npu_block("dma_write", "StoreEngine"), 0,
                         "NPU block: STORE DMA (OUT scratchpad → AXI4 writes)"),
    "vector_unit": Unit(_npu_block("vector_unit", "VectorUnit"), 0,
                        "NPU block: vector unit (requantize, element-wise, softmax)"),
    "compute_unit": Unit(_npu_block("compute_unit", "ComputeUnit"), _peak_macs,
                         "NPU block: MATMUL sequencers and the GEMM core behind scratchpad ports"),
    "scratchpads": Unit(_npu_block("scratchpad", "Scratchpads"), 0,
                        "NPU block: ACT, WGT, WIDX, PARAM and OUT scratchpads"),
    NPU_TOP: Unit(_npu, _peak_macs, "the NPU top: registers, controller, DMA, scratchpads, "
                                    "vector and compute units (AXI host interface)"),
}


def unit_names() -> list[str]:
    return list(UNITS)


def get_unit(name: str) -> Unit:
    try:
        return UNITS[name]
    except KeyError:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {name!r}") from None


def build_unit(name: str, config):
    """A fresh component of unit ``name`` for ``config``."""
    return get_unit(name).factory(config)


def unit_macs(name: str, config) -> int:
    """Multiply-accumulates per cycle of unit ``name`` for ``config``."""
    macs = get_unit(name).macs_per_cycle
    return int(macs(config) if callable(macs) else macs)
