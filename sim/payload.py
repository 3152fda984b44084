"""Packing of stream payloads to and from the integers a simulator sees.

Amaranth lays out ``data.StructLayout`` fields at their ``offset`` and
``data.ArrayLayout`` elements at ``index * element width``, least significant bit
first.  These helpers walk a layout and pack nested Python values (dicts for structs,
sequences for arrays, ints for leaves) into one integer and back.
"""

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["pack", "unpack", "unpack_lanes"]


def _shape(layout):
    return layout if isinstance(layout, data.Layout) else Shape.cast(layout)


def pack(layout, value) -> int:
    """Pack ``value`` (nested dicts/sequences/ints) according to ``layout``."""
    layout = _shape(layout)
    if isinstance(layout, data.StructLayout):
        word = 0
        for name, field in layout:
            if name not in value:
                raise KeyError(f"missing field {name!r} for {layout!r}")
            word |= pack(field.shape, value[name]) << field.offset
        return word
    if isinstance(layout, data.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width if not isinstance(
            layout.elem_shape, data.Layout) else layout.elem_shape.size
        if len(value) != layout.length:
            raise ValueError(f"expected {layout.length} elements, got {len(value)}")
        word = 0
        for i, element in enumerate(value):
            word |= pack(layout.elem_shape, element) << (i * width)
        return word
    shape = layout if isinstance(layout, Shape) else Shape.cast(layout)
    v = int(value)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    if not lo <= v <= hi:
        raise ValueError(f"value {v} does not fit {shape!r}")
    return v & ((1 << shape.width) - 1)


def unpack(layout, word: int):
    """Inverse of :func:`pack`."""
    layout = _shape(layout)
    word = int(word)
    if isinstance(layout, data.StructLayout):
        return {name: unpack(field.shape, word >> field.offset) for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        width = elem.size if isinstance(elem, data.Layout) else Shape.cast(elem).width
        return [unpack(elem, word >> (i * width)) for i in range(layout.length)]
    shape = Shape.cast(layout)
    v = word & ((1 << shape.width) - 1)
    if shape.signed and v >> (shape.width - 1):
        v -= 1 << shape.width
    return v


def unpack_lanes(word: int, width: int, count: int, *, signed: bool = True) -> list[int]:
    """Split ``word`` into ``count`` lanes of ``width`` bits (fast path for result rows)."""
    mask = (1 << width) - 1
    lanes = []
    for i in range(count):
        v = (word >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        lanes.append(v)
    return lanes
