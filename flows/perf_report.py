"""``npugen perf``: the analytic cycle model of the NPU applied to networks, and the report
that compares the presets on the model zoo.

``npugen perf --model NAME|FILE`` estimates one network (a zoo name or a JSON layer table,
:func:`npugen.golden.model_zoo.load_model`) on one configuration with
:func:`npugen.golden.npu_perf.estimate_model`; ``npugen perf --report DIR`` runs the
presets × networks × precision modes and writes ``report.md``, ``report.json``,
``fps.png`` and ``utilization.png``.  Exit codes: 0 success, 1 a file could not be
written, 2 usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_commands", "cmd_perf", "MODE_CHOICES", "run_report", "format_model_md",
           "write_report"]

PROG = "npugen"
#: Precision variants of the report: a mode, or int8 with 2:4 weights.
MODE_CHOICES = ("int8", "int4", "binary", "2:4")
REPORT_PRESETS = ("tiny", "default", "large")


def _cli():
    from npugen.flows import cli
    return cli


def _variant(mode, sparsity):
    return "2:4" if sparsity else mode


def _split_variant(variant):
    return ("int8", "2:4") if variant == "2:4" else (variant, None)


def _check_variant(config, mode, sparsity, what):
    if mode not in config.modes:
        raise _cli().UsageError(f"--dtype must be one of the built modes "
                                f"{', '.join(config.modes)} of {what}, not {mode!r}")
    if sparsity is not None and (mode != "int8" or not config.sparse_2_4):
        raise _cli().UsageError(f"--sparsity {sparsity} needs --dtype int8 and a "
                                f"configuration with sparse_2_4 = true ({what})")


def _fmt_int(n):
    return f"{n:,}".replace(",", " ")


def _fmt_si(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def format_model_md(result: dict) -> str:
    """A Markdown page of one ``npugen perf --model`` result (the JSON record)."""
    lines = [
        f"# {result['model']} on {result['rows']}×{result['cols']} "
        f"({result['mode']}, {result['sparsity']}, batch {result['batch']})", "",
        f"- MACs {_fmt_int(result['macs'])}, weights {_fmt_int(result['weights'])}",
        f"- cycles {_fmt_int(result['cycles'])} (ideal {_fmt_int(result['ideal_cycles'])}), "
        f"utilization {result['utilization']:.3f}",
        f"- {result['fps']:.4g} frames/s at {result['clock_mhz']:g} MHz", "",
        "| layer | GEMM m×k×n (groups) | MACs | cycles | utilization | lowering | method |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for layer in result["layers"]:
        m, k, n, g = layer["gemm"]
        lines.append(f"| {layer['name']} | {m}×{k}×{n}{f' ({g})' if g > 1 else ''} | "
                     f"{_fmt_int(layer['macs'])} | {_fmt_int(layer['cycles'])} | "
                     f"{layer['utilization']:.3f} | {layer['lowering']} | {layer['method']} |")
    if result["host_layers"]:
        lines += ["", f"Layers without MACs (run on the host, not counted): "
                      f"{', '.join(result['host_layers'])}."]
    return "\n".join(lines) + "\n"


def _summary_table(result: dict) -> str:
    lines = [f"{result['model']}: {result['rows']}x{result['cols']} {result['mode']} "
             f"{result['sparsity']}, batch {result['batch']}",
             f"{'layer':28s} {'MACs':>14s} {'cycles':>12s} {'util':>6s}  lowering"]
    for layer in result["layers"]:
        lines.append(f"{layer['name'][:28]:28s} {layer['macs']:14d} {layer['cycles']:12d} "
                     f"{layer['utilization']:6.3f}  {layer['lowering']}")
    lines.append(f"{'total':28s} {result['macs']:14d} {result['cycles']:12d} "
                 f"{result['utilization']:6.3f}  {result['fps']:.4g} frames/s at "
                 f"{result['clock_mhz']:g} MHz")
    return "\n".join(lines)


def _write(path, text):
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"{PROG}: error: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


# -- the report ----------------------------------------------------------------------------


def run_report(presets, models, variants, *, clock_mhz=100.0, batch=1, progress=False):
    """Estimate every preset × model × variant (skipping variants a preset lacks);
    returns the records (``ModelEstimate.to_dict()`` plus ``preset``)."""
    from npugen.golden.config import NPUConfig
    from npugen.golden.model_zoo import load_model
    from npugen.golden.npu_perf import estimate_model

    tables = {name: load_model(name) for name in models}
    jobs = []
    for preset in presets:
        config = NPUConfig.preset(preset)
        for variant in variants:
            mode, sparsity = _split_variant(variant)
            if mode not in config.modes or (sparsity and not config.sparse_2_4):
                continue
            jobs += [(preset, config, mode, sparsity, name) for name in models]
    from npugen.sim.progress import progress_steps

    records = []
    if not jobs:
        return records
    steps = [f"{preset} {_variant(mode, sparsity)} {name}"
             for preset, _, mode, sparsity, name in jobs]
    with progress_steps(steps, progress) as advance:
        for preset, config, mode, sparsity, name in jobs:
            result = estimate_model(config, tables[name], mode=mode, sparsity=sparsity,
                                    batch=batch, clock_mhz=clock_mhz)
            records.append({"preset": preset, **result.to_dict()})
            advance()
    return records


def _report_md(records, presets, models, variants, clock_mhz):
    from npugen.golden.config import NPUConfig

    lines = ["# NPU performance of the presets on the model zoo", "",
             f"Analytic cycle model (`npugen.golden.npu_perf`), batch "
             f"{records[0]['batch'] if records else 1}, clock {clock_mhz:g} MHz. "
             "Cycles are START to DONE of the layer programs the compiler produces, "
             "summed over the conv and fc layers (pooling, residual additions and channel "
             "scaling run on the host and are not counted). Utilization is "
             "⌈MACs / peak⌉ over the cycles, with the peak of the mode (2:4: twice int8).", "",
             "| preset | array | AXI | ACT / WGT / OUT / PARAM words | peak MACs/cycle |",
             "|---|---|---|---|---|"]
    for preset in presets:
        c = NPUConfig.preset(preset)
        peaks = ", ".join(f"{m} {c.peak_macs_per_cycle(m)}" for m in c.modes)
        lines.append(f"| {preset} | {c.rows}×{c.cols} | {c.axi_data_bits} bit | "
                     f"{c.act_sp_depth} / {c.wgt_sp_depth} / {c.out_sp_depth} / "
                     f"{c.param_sp_depth} | {peaks}{', 2:4' if c.sparse_2_4 else ''} |")
    for name in models:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        lines += ["", f"## {name}", "",
                  f"MACs {_fmt_si(rows[0]['macs'])}, weights {_fmt_si(rows[0]['weights'])}.", "",
                  "| preset | mode | cycles | utilization | frames/s | K-split layers | "
                  "extrapolated layers |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            ksplit = sum(1 for layer in r["layers"] if layer["lowering"] == "k-split")
            extrap = sum(1 for layer in r["layers"] if layer["method"] == "extrapolated")
            lines.append(f"| {r['preset']} | {_variant(r['mode'], r['sparsity'] != 'dense')} | "
                         f"{_fmt_int(r['cycles'])} | {r['utilization']:.3f} | "
                         f"{r['fps']:.4g} | {ksplit} | {extrap} |")
    lines += ["", "Lowering: an int8 dense convolution runs as `compile_conv2d` lowers it "
                  "(im2col by LOAD, one kernel tap × `rows` channels per K tile, so few "
                  "channels per group waste array rows: depthwise layers use one row and one "
                  "column); in int4, binary and 2:4 the compiler has no conv lowering and a "
                  "convolution runs as the GEMM of its im2col, read from host memory (the "
                  "host builds it; not counted). K-split layers have a weight tile larger "
                  "than the weight scratchpad: they are estimated as separate K chunks with "
                  "int32 outputs (no single-program lowering exists; the accumulation is not "
                  "counted). Extrapolated layers were estimated on two smaller instances of "
                  "the same layer (see `npugen.golden.npu_perf.EXACT_WORK`).",
              "", "![frames per second](fps.png)", "", "![utilization](utilization.png)", ""]
    return "\n".join(lines)


def _plot(records, presets, models, variants, key, ylabel, path, log):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in models if any(r["model"] == m for r in records)]
    fig = Figure(figsize=(max(6.0, 2.2 * len(models)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    series = [(p, v) for p in presets for v in variants
              if any(r["preset"] == p and _variant(r["mode"], r["sparsity"] != "dense") == v
                     for r in records)]
    width = 0.8 / max(1, len(series))
    colors = matplotlib.colormaps["tab20"]
    for i, (preset, variant) in enumerate(series):
        xs, ys = [], []
        for j, model in enumerate(models):
            for r in records:
                if r["preset"] == preset and r["model"] == model and \
                        _variant(r["mode"], r["sparsity"] != "dense") == variant:
                    xs.append(j + (i - (len(series) - 1) / 2) * width)
                    ys.append(r[key])
        ax.bar(xs, ys, width=width, label=f"{preset} {variant}", color=colors(i % 20))
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=20)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize="x-small", ncol=max(1, len(series) // 4))
    fig.savefig(path, dpi=110)


def write_report(records, outdir, presets, models, variants, clock_mhz) -> list:
    """Write ``report.md``, ``report.json``, ``fps.png``, ``utilization.png`` into
    ``outdir``; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / "report.md", outdir / "report.json", outdir / "fps.png",
             outdir / "utilization.png"]
    paths[0].write_text(_report_md(records, presets, models, variants, clock_mhz),
                        encoding="utf-8")
    paths[1].write_text(json.dumps({"clock_mhz": clock_mhz, "records": records}, indent=1)
                        + "\n", encoding="utf-8")
    _plot(records, presets, models, variants, "fps", f"frames/s at {clock_mhz:g} MHz",
          paths[2], log=True)
    _plot(records, presets, models, variants, "utilization", "utilization (ideal / cycles)",
          paths[3], log=False)
    return paths


# -- the command ---------------------------------------------------------------------------


def _list_option(text, choices, option):
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise _cli().UsageError(f"--{option} must name at least one of {', '.join(choices)}")
    for item in items:
        if choices is not None and item not in choices:
            raise _cli().UsageError(f"--{option} must be a comma-separated list of "
                                    f"{', '.join(choices)}, not {item!r}")
    return items


def cmd_perf(args):
    from npugen.golden.config import NPUConfig
    from npugen.golden.model_zoo import MODEL_NAMES, load_model
    from npugen.golden.npu_perf import estimate_model

    cli = _cli()
    if not args.clock_mhz > 0:
        raise cli.UsageError(f"--clock-mhz must be a positive number, not {args.clock_mhz}")
    if args.batch < 1:
        raise cli.UsageError(f"--batch must be at least 1, not {args.batch}")
    progress = sys.stderr.isatty()
    if args.report is not None:
        if args.model is not None or args.json is not None or args.md is not None:
            raise cli.UsageError("--report writes its own files: give it without --model, "
                                 "--json and --md")
        if args.preset is not None or args.config is not None or args.set:
            raise cli.UsageError("--report compares the presets (--presets), not one "
                                 "configuration")
        presets = _list_option(args.presets, REPORT_PRESETS, "presets")
        variants = _list_option(args.modes, MODE_CHOICES, "modes")
        models = _list_option(args.models, None, "models")
        built = [(p, v) for p in presets for v in variants
                 if _split_variant(v)[0] in NPUConfig.preset(p).modes and
                 (v != "2:4" or NPUConfig.preset(p).sparse_2_4)]
        if not built:
            raise cli.UsageError(f"none of the presets {', '.join(presets)} builds the modes "
                                 f"{', '.join(variants)}")
        try:
            for name in models:
                load_model(name)
        except (ValueError, TypeError) as e:
            raise cli.UsageError(str(e)) from None
        records = run_report(presets, models, variants, clock_mhz=args.clock_mhz,
                             batch=args.batch, progress=progress)
        try:
            paths = write_report(records, args.report, presets, models, variants,
                                 args.clock_mhz)
        except OSError as e:
            print(f"{PROG}: error: cannot write the report into {args.report}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
        return 0

    if args.model is None:
        raise cli.UsageError(f"give --model NAME|FILE ({', '.join(MODEL_NAMES)}, digits-mlp, "
                             f"digits-cnn, or a JSON layer table) or --report DIR")
    config, source = cli._config_from_args(args)
    sparsity = None if args.sparsity == "dense" else args.sparsity
    _check_variant(config, args.dtype, sparsity, source)
    try:
        table = load_model(args.model)
    except (ValueError, TypeError) as e:
        raise cli.UsageError(str(e)) from None
    from npugen.sim.progress import progress_steps

    layers = [layer.name for layer in table.compute_layers()] or [table.name]
    with progress_steps(layers, progress) as advance:
        started = []

        def step(name):            # called before each layer: the previous one is done
            if started:
                advance()
            started.append(name)

        result = estimate_model(config, table, mode=args.dtype, sparsity=sparsity,
                                batch=args.batch, clock_mhz=args.clock_mhz, progress=step)
        advance()
    record = result.to_dict()
    print(_summary_table(record))
    ok = True
    if args.json is not None:
        ok = _write(args.json, json.dumps(record, indent=1) + "\n") and ok
    if args.md is not None:
        ok = _write(args.md, format_model_md(record)) and ok
    return 0 if ok else 1


def add_commands(commands, config_options):
    """Register ``perf`` on ``commands``."""
    from npugen.golden.model_zoo import MODEL_NAMES

    p = commands.add_parser(
        "perf", parents=[config_options],
        help="analytic cycle model: cycles, utilization and frames/s of a network",
        description="Estimate a network layer by layer with the NPU's analytic cycle "
                    "model (the programs the compiler produces, run through a model of the "
                    "controller, DMA and units), or compare the presets on the model zoo "
                    "(--report).")
    p.add_argument("--model", metavar="NAME|FILE",
                   help=f"network: {', '.join(MODEL_NAMES)}, digits-mlp, digits-cnn, or a "
                        f"JSON layer table")
    p.add_argument("--dtype", default="int8", choices=("int8", "int4", "binary"),
                   help="precision mode of every layer (default: %(default)s)")
    p.add_argument("--sparsity", default="dense", choices=("dense", "2:4"),
                   help="2:4 runs the int8 weights compressed (default: %(default)s)")
    p.add_argument("--clock-mhz", type=float, default=100.0, metavar="F",
                   help="clock for frames/s (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default: 1)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--md", metavar="FILE", help="write the result as a Markdown table")
    p.add_argument("--report", metavar="DIR",
                   help="compare the presets on networks: write report.md, report.json, "
                        "fps.png and utilization.png into DIR")
    p.add_argument("--presets", default=",".join(REPORT_PRESETS), metavar="LIST",
                   help="--report: presets to compare (default: %(default)s)")
    p.add_argument("--models", default=",".join(MODEL_NAMES), metavar="LIST",
                   help="--report: networks (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODE_CHOICES), metavar="LIST",
                   help="--report: precision variants, 2:4 = int8 with 2:4 weights "
                        "(default: %(default)s)")
    p.set_defaults(handler=cmd_perf)
