"""``npugen demo``: the main job on one configuration, end to end.

Generates the NPU of the configuration, builds its Verilator model, and runs a GEMM, a
conv2d layer and an attention block on it back to back (no reset in between), each a
program in host memory that the NPU fetches and executes over AXI.  Every output is
compared with the golden kernel and the instruction-level model, and the host memory
outside the destination regions must be unchanged.
"""

from __future__ import annotations

import time

from npugen.golden.config import NPUConfig

from .npu_bench import compile_kernel, kernel_record
from .npu_sim import build_npu, run_kernels
from .progress import progress_steps

__all__ = ["DEMO_KERNELS", "run_demo", "format_table"]

#: (kernel, shape) of the demo; the conv is a 3×3 layer with padding 1.
DEMO_KERNELS = (
    ("gemm", {"m": 128, "k": 256, "n": 64}),
    ("conv", {"h": 16, "w": 16, "cin": 32, "cout": 32, "kernel": 3, "padding": 1}),
    ("attention", {"seq": 64, "dim": 64}),
)


def _shape_text(kernel: str, shape: dict) -> str:
    if kernel == "gemm":
        return f"{shape['m']}x{shape['k']}x{shape['n']}"
    if kernel == "conv":
        return (f"{shape['h']}x{shape['w']}x{shape['cin']}->{shape['cout']} "
                f"k{shape['kernel']} p{shape.get('padding', 0)}")
    return f"L{shape['seq']} d{shape['dim']} h{shape.get('heads', 1)}"


def run_demo(config: NPUConfig, *, seed: int = 0, kernels=DEMO_KERNELS,
             progress: bool | None = None) -> list[dict]:
    """Run the demo kernels on ``config``'s NPU; one benchmark record per kernel."""
    started = time.monotonic()
    with progress_steps(["compile kernels", "generate Verilog and build the Verilator model",
                         "simulate"], progress) as advance:
        programs = [compile_kernel(config, kernel, seed + i, **shape)
                    for i, (kernel, shape) in enumerate(kernels)]
        advance()
        build_npu(config)
        advance()
        results = run_kernels(config, programs, seed=seed)
        advance()
    records = []
    for i, ((kernel, shape), result) in enumerate(zip(kernels, results)):
        record = kernel_record(result, kind=kernel, shape=shape, seed=seed + i)
        record["shape"] = _shape_text(kernel, shape)
        records.append(record)
    if records:
        records[-1]["wall_seconds"] = round(time.monotonic() - started, 2)
    return records


def format_table(records: list[dict]) -> str:
    """The demo's table: kernel, shape, match, cycles, ideal cycles, utilization."""
    header = ("kernel", "shape", "match", "cycles", "ideal cycles", "utilization")
    rows = [(r["kernel"], r["shape"], "yes" if r["match"] else "NO", f"{r['cycles']:,}",
             f"{r['ideal_cycles']:,}", f"{r['utilization']:.3f}") for r in records]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    line = lambda row: "  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w)
                                 for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
