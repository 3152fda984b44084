"""Design-space exploration: synthesize a grid of configurations and tabulate/plot them.

``npugen dse --sweep rows=4,8,16 --sweep modes=int8,int8+int4 --target ecp5-85f`` builds
the Cartesian product of the sweeps over a base configuration, synthesizes every point
in parallel worker processes (:func:`run_points`) and writes ``results.csv``,
``results.json``, ``results.md`` and PNG plots (:func:`write_outputs`).

Any :class:`~npugen.golden.config.NPUConfig` parameter can be swept.  Values are TOML
values (``rows=4,8``, ``dataflow=weight_stationary``); a tuple parameter such as ``modes``
takes ``+``-joined items (``int8+int4``) or ``all``.  ``size=4,8`` sets ``rows`` and
``cols`` together (a square array).  A point whose configuration is invalid or whose
synthesis fails is recorded with its error; the sweep goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from npugen.golden.config import PRECISION_MODES, NPUConfig

__all__ = ["parse_sweeps", "grid", "run_points", "run_sweep", "point_rows", "write_outputs",
           "SIZE_ALIAS", "PLOTS"]

#: Sweep key that sets ``rows`` and ``cols`` to the same value.
SIZE_ALIAS = "size"
#: Files written by :func:`write_outputs` besides the tables.
PLOTS = ("luts_dsps_vs_size.png", "fmax_vs_size.png", "macs_per_mode.png")


def _field_kinds():
    return {f.name: f.default for f in dataclasses.fields(NPUConfig)}


def _parse_value(key, text, default):
    from npugen.flows.cli import UsageError, parse_set_option

    text = text.strip()
    if not text:
        raise ValueError(f"--sweep {key}: empty value")
    if isinstance(default, tuple):
        if text == "all":
            if key != "modes":
                raise ValueError(f"--sweep {key}: 'all' is only known for modes")
            return tuple(PRECISION_MODES)
        return tuple(item.strip() for item in text.split("+"))
    try:
        return parse_set_option(f"{key}={text}")[1]
    except UsageError as e:
        raise ValueError(str(e)) from None


def parse_sweeps(items) -> dict[str, list]:
    """``["rows=4,8", "modes=int8,int8+int4"]`` → ``{"rows": [4, 8], "modes": [...]}``."""
    kinds = _field_kinds()
    sweeps: dict[str, list] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ValueError(f"--sweep expects KEY=V1,V2,..., not {item!r}")
        if key != SIZE_ALIAS and key not in kinds:
            raise ValueError(f"--sweep {key}: unknown parameter (known: "
                             f"{', '.join(sorted([*kinds, SIZE_ALIAS]))})")
        if key in sweeps:
            raise ValueError(f"--sweep {key} given twice")
        default = kinds.get(key, 0)
        sweeps[key] = [_parse_value(key, v, default) for v in values.split(",")]
    if SIZE_ALIAS in sweeps and ({"rows", "cols"} & set(sweeps)):
        raise ValueError("--sweep size sets rows and cols; do not sweep them as well")
    return sweeps


def grid(sweeps: dict[str, list]) -> list[dict]:
    """The Cartesian product of the sweeps, the first sweep varying slowest."""
    keys = list(sweeps)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweeps[k] for k in keys))]


def _changes(point):
    changes = dict(point)
    if SIZE_ALIAS in changes:
        size = changes.pop(SIZE_ALIAS)
        changes.update(rows=size, cols=size)
    return changes


def _label(point):
    parts = []
    for key, value in point.items():
        text = "+".join(value) if isinstance(value, tuple) else str(value)
        parts.append(f"{key}={text}")
    return ",".join(parts) or "base"


def _run_point(task):
    """Worker: one point → record (never raises)."""
    index, base, point, unit, target, options = task
    record = {"index": index, "point": point, "label": _label(point), "unit": unit,
              "status": "failed", "error": None, "config": None, "result": None}
    try:
        config = base.replace(**_changes(point)) if point else base
        record["config"] = config.to_dict()
    except (ValueError, TypeError) as e:
        record["error"] = f"invalid configuration: {e}"
        return record
    try:
        from npugen.flows.synth import synthesize
        workdir = Path(options["workdir"]) / f"point{index:03d}"
        result = synthesize(config, target, unit=unit, seeds=options["seeds"], workdir=workdir,
                            pnr=options["pnr"], freq_mhz=options.get("freq_mhz"),
                            timeout=options.get("timeout"), placer=options.get("placer"),
                            router=options.get("router"))
    except Exception as e:  # a failed point is reported, not fatal
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=4)
        return record
    record.update(status="ok", result=result)
    return record


def run_points(tasks, *, jobs: int = 1, progress: bool = True, desc: str = "synthesis",
               worker=_run_point) -> list[dict]:
    """Run ``tasks`` (see :func:`_run_point`) in ``jobs`` processes with a progress bar.

    Records come back in task order.  A worker process that dies takes only its own
    point (and those still queued on the broken pool) down as failed points.
    """
    from tqdm import tqdm

    tasks = list(tasks)
    records: dict[int, dict] = {}
    bar = tqdm(total=len(tasks), desc=desc, unit="point", disable=not progress, leave=True)
    try:
        if jobs <= 1:
            for task in tasks:
                record = worker(task)
                records[record["index"]] = record
                bar.update(1)
                bar.set_postfix_str(f"{record['label']}: {record['status']}")
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(worker, task): task for task in tasks}
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        record = future.result()
                    except BrokenProcessPool as e:
                        record = {"index": task[0], "point": task[2], "label": _label(task[2]),
                                  "unit": task[3], "status": "failed", "config": None,
                                  "result": None, "error": f"worker process died: {e}"}
                    records[record["index"]] = record
                    bar.update(1)
                    bar.set_postfix_str(f"{record['label']}: {record['status']}")
    finally:
        bar.close()
    return [records[task[0]] for task in tasks]


def run_sweep(base: NPUConfig, sweeps: dict[str, list], target: str, *, unit=None,
              seeds=(1,), jobs: int = 1, pnr: bool = True, workdir, freq_mhz=None,
              timeout=None, placer=None, router=None, progress: bool = True) -> list[dict]:
    """Synthesize every point of ``grid(sweeps)`` over ``base``; one record per point."""
    options = {"workdir": str(workdir), "seeds": list(seeds), "pnr": pnr,
               "freq_mhz": freq_mhz, "timeout": timeout, "placer": placer, "router": router}
    tasks = [(i, base, point, unit, target, options) for i, point in enumerate(grid(sweeps))]
    return run_points(tasks, jobs=jobs, progress=progress, desc="dse")


# -- tables ---------------------------------------------------------------------------------

def _modes_text(modes):
    return "+".join(modes)


def point_rows(records) -> list[dict]:
    """One flat row per point: the swept values, area, Fmax, MACs/cycle and MACs per LUT."""
    from npugen.flows.units import NPU_TOP, unit_macs

    rows = []
    for record in records:
        row = {"label": record["label"]}
        for key, value in record["point"].items():
            row[key] = _modes_text(value) if isinstance(value, tuple) else value
        config = NPUConfig.from_dict(record["config"]) if record.get("config") else None
        if config is not None:
            row.update(rows=config.rows, cols=config.cols, pes=config.pes,
                       modes=_modes_text(config.modes))
        result = record.get("result")
        row["status"] = record["status"]
        if result is not None:
            row.update(luts=result["luts"], ffs=result["ffs"], carry=result["carry"],
                       dsps=result["dsps"], brams=result["brams"], fmax_mhz=result["fmax_mhz"])
            design = record.get("unit") or NPU_TOP
            row["macs_per_cycle"] = unit_macs(design, config)
            for mode in PRECISION_MODES:
                if mode in config.modes and design in ("array", NPU_TOP):
                    peak = config.peak_macs_per_cycle(mode)
                    row[f"peak_macs_{mode}"] = peak
                    row[f"macs_per_lut_{mode}"] = round(peak / result["luts"], 5) \
                        if result["luts"] else None
        row["error"] = record.get("error") or ""
        rows.append(row)
    return rows


def _columns(rows):
    columns = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    # Keep the error last: it is the widest.
    columns.remove("error")
    return columns + ["error"]


def to_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _cell(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows, *, title=None) -> str:
    columns = [c for c in _columns(rows) if c != "label"]
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", f"{len(failed)} of {len(rows)} points failed."]
    return "\n".join(lines) + "\n"


# -- plots ----------------------------------------------------------------------------------

def _series(rows, sweep_keys):
    """Rows that succeeded, grouped by the swept parameters other than the array size."""
    other = [k for k in sweep_keys if k not in ("rows", "cols", SIZE_ALIAS)]
    groups: dict[str, list] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        name = ", ".join(f"{k}={row[k]}" for k in other) or "design"
        groups.setdefault(name, []).append(row)
    return {name: sorted(items, key=lambda r: r["pes"]) for name, items in groups.items()}


def write_plots(rows, outdir, sweep_keys) -> list[Path]:
    """The PNG plots of a sweep; returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    outdir = Path(outdir)
    series = _series(rows, sweep_keys)
    written = []

    def save(fig, name):
        FigureCanvasAgg(fig)
        path = outdir / name
        fig.savefig(path, dpi=110)
        written.append(path)

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_lut, ax_dsp = fig.subplots(1, 2)
    for name, items in series.items():
        x = [r["pes"] for r in items]
        ax_lut.plot(x, [r["luts"] for r in items], marker="o", label=name)
        ax_dsp.plot(x, [r["dsps"] for r in items], marker="o", label=name)
    for ax, what in ((ax_lut, "LUT4"), (ax_dsp, "DSP blocks")):
        ax.set_xlabel("array size (PEs = rows × cols)")
        ax.set_ylabel(what)
        ax.set_title(f"{what} vs array size")
        ax.grid(True, alpha=0.3)
    if series:
        ax_lut.legend(fontsize="small")
    save(fig, PLOTS[0])

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, items in series.items():
        points = [(r["pes"], r["fmax_mhz"]) for r in items if r.get("fmax_mhz") is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("array size (PEs = rows × cols)")
    ax.set_ylabel("Fmax, median of seeds (MHz)")
    ax.set_title("Fmax vs array size")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    save(fig, PLOTS[1])

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_peak, ax_eff = fig.subplots(1, 2)
    ok = [r for r in rows if r["status"] == "ok"]
    labels = [r["label"] for r in ok]
    modes = [m for m in PRECISION_MODES if any(f"peak_macs_{m}" in r for r in ok)]
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        x = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(ok))]
        ax_peak.bar(x, [r.get(f"peak_macs_{mode}") or 0 for r in ok], width, label=mode)
        ax_eff.bar(x, [r.get(f"macs_per_lut_{mode}") or 0 for r in ok], width, label=mode)
    for ax, what in ((ax_peak, "peak MACs / cycle"), (ax_eff, "peak MACs / cycle per LUT4")):
        ax.set_xticks(range(len(ok)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(what)
        ax.set_title(f"{what}, per mode")
        ax.grid(True, axis="y", alpha=0.3)
        if modes:
            ax.legend(fontsize="small")
    save(fig, PLOTS[2])
    return written


def write_outputs(records, outdir, *, sweep_keys=(), title=None, meta=None) -> dict:
    """Write ``results.csv/.json/.md`` and the plots into ``outdir``; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = point_rows(records)
    paths = {"csv": outdir / "results.csv", "json": outdir / "results.json",
             "md": outdir / "results.md"}
    _atomic_write(paths["csv"], to_csv(rows))
    doc = {**(meta or {}), "rows": rows,
           "points": [{k: v for k, v in r.items() if k != "traceback"} for r in records]}
    _atomic_write(paths["json"], json.dumps(doc, indent=2, default=_json_default) + "\n")
    _atomic_write(paths["md"], to_markdown(rows, title=title))
    paths["plots"] = write_plots(rows, outdir, sweep_keys)
    return paths


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _atomic_write(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
