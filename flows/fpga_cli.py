"""The FPGA subcommands of ``npugen``: ``synth``, ``dse``, ``cost`` and ``build-board``.

:func:`add_commands` registers them on the parser built by :mod:`npugen.flows.cli`.
Exit codes: 0 success, 1 a tool failed or a regression was found, 2 usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_commands", "cmd_synth", "cmd_dse", "cmd_cost", "cmd_build_board"]

PROG = "npugen"


def _cli():
    from npugen.flows import cli
    return cli


def _positive(option, value):
    if value < 1:
        raise _cli().UsageError(f"--{option} must be at least 1, not {value}")


def _target(name):
    from npugen.flows.synth import TARGETS
    if name not in TARGETS:
        raise _cli().UsageError(f"--target must be one of {', '.join(TARGETS)}, not {name!r}")
    return name


def _fail(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _write(path, text):
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise _cli().UsageError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {path}")


def _print_tools(target, *, pnr=True, pack=False):
    from npugen.flows.synth import find_tools
    tools = find_tools(target, pnr=pnr, pack=pack)
    for tool in tools.values():
        print(f"found {tool.describe()}")
    return tools


def _default_workdir(kind, target, label):
    return Path("build") / kind / target / label


# -- synth ----------------------------------------------------------------------------------

def cmd_synth(args):
    from npugen.flows import synth
    from npugen.flows.units import NPU_TOP, get_unit

    config, source = _cli()._config_from_args(args)
    target = synth.get_target(_target(args.target))
    _positive("seeds", args.seeds)
    _positive("jobs", args.jobs)
    design = args.unit or NPU_TOP
    try:
        get_unit(design)
    except ValueError as e:
        raise _cli().UsageError(f"--unit: {e}") from None
    workdir = Path(args.workdir) if args.workdir else _default_workdir(
        "synth", target.name, f"{design}-{config.config_hash()}")
    print(f"{source}: {design} on {target.name} ({target.description})")
    try:
        _print_tools(target, pnr=not args.synth_only)
        result = synth.synthesize(config, target, unit=args.unit,
                                  seeds=range(1, args.seeds + 1), workdir=workdir,
                                  pnr=not args.synth_only, freq_mhz=args.freq, jobs=args.jobs,
                                  log=print, placer=args.placer, router=args.router)
    except synth.SynthError as e:
        return _fail(str(e))
    text = synth.format_markdown(result)
    print()
    print(text)
    status = 0
    if args.check_reference or args.update_reference:
        reference_path = args.reference or synth.REFERENCE_PATH
        if args.update_reference:
            try:
                key = synth.update_reference(result, reference_path)
            except ValueError as e:
                raise _cli().UsageError(f"--update-reference: {e}") from None
            print(f"reference {key} updated in {reference_path}")
        else:
            comparison = synth.compare_to_reference(result, synth.load_reference(reference_path))
            result["reference_check"] = comparison
            if comparison["status"] == "no-reference":
                print(f"no reference entry for {comparison['key'] or 'this configuration'} "
                      f"in {reference_path}")
            else:
                for name, change in comparison["changes"].items():
                    if name != "tool_versions" and change["change"] is not None:
                        print(f"  {name}: {change['reference']} -> {change['now']} "
                              f"({change['change']:+.1%})")
                if "tool_versions" in comparison["changes"]:
                    print("  note: the reference was made with other tool versions")
                for problem in comparison["problems"]:
                    print(f"REGRESSION: {problem}")
                if comparison["problems"]:
                    status = 1
                else:
                    print(f"reference {comparison['key']}: within tolerance")
    if args.json:
        _write(args.json, json.dumps(result, indent=2) + "\n")
    if args.md:
        _write(args.md, text)
    return status


# -- dse ------------------------------------------------------------------------------------

def cmd_dse(args):
    from npugen.flows import dse, synth
    from npugen.flows.units import NPU_TOP, get_unit

    config, source = _cli()._config_from_args(args)
    target = synth.get_target(_target(args.target))
    _positive("seeds", args.seeds)
    _positive("jobs", args.jobs)
    if not args.sweep:
        raise _cli().UsageError("dse needs at least one --sweep KEY=V1,V2,...")
    try:
        sweeps = dse.parse_sweeps(args.sweep)
        if args.unit:
            get_unit(args.unit)
    except ValueError as e:
        raise _cli().UsageError(str(e)) from None
    points = dse.grid(sweeps)
    outdir = Path(args.output)
    print(f"{source}: {len(points)} points of {args.unit or NPU_TOP} on {target.name}, "
          f"{args.jobs} worker(s)")
    try:
        _print_tools(target, pnr=not args.synth_only)
    except synth.SynthError as e:
        return _fail(str(e))
    records = dse.run_sweep(config, sweeps, target.name, unit=args.unit,
                            seeds=range(1, args.seeds + 1), jobs=args.jobs,
                            pnr=not args.synth_only, workdir=outdir / "work",
                            freq_mhz=args.freq, placer=args.placer, router=args.router,
                            progress=not args.no_progress)
    meta = {"target": target.name, "base": config.to_dict(), "source": source,
            "unit": args.unit or NPU_TOP, "sweeps": {k: [list(v) if isinstance(v, tuple) else v
                                                        for v in vs] for k, vs in sweeps.items()}}
    paths = dse.write_outputs(records, outdir, sweep_keys=list(sweeps), meta=meta,
                              title=f"{args.unit or NPU_TOP} on {target.name}")
    print(paths["md"].read_text(encoding="utf-8"))
    for path in (paths["csv"], paths["json"], paths["md"], *paths["plots"]):
        print(f"wrote {path}")
    failed = [r for r in records if r["status"] != "ok"]
    for record in failed:
        print(f"point {record['label']} failed: {record['error']}", file=sys.stderr)
    return 0 if len(failed) < len(records) else 1


# -- cost -----------------------------------------------------------------------------------

def cmd_cost(args):
    from npugen.flows import cost, synth
    from npugen.flows.units import UNITS

    config, source = _cli()._config_from_args(args)
    target = synth.get_target(_target(args.target))
    _positive("seeds", args.seeds)
    _positive("jobs", args.jobs)
    units = None
    if args.units:
        units = [u.strip() for u in args.units.split(",") if u.strip()]
        unknown = [u for u in units if u not in UNITS]
        if unknown or not units:
            raise _cli().UsageError(f"--units must name units of {', '.join(UNITS)}, "
                                    f"not {args.units!r}")
    workdir = Path(args.workdir) if args.workdir else _default_workdir(
        "cost", target.name, config.config_hash())
    print(f"{source}: unit cost on {target.name}")
    try:
        _print_tools(target, pnr=not args.synth_only)
    except synth.SynthError as e:
        return _fail(str(e))
    records = cost.run_cost(config, target.name, units=units, seeds=range(1, args.seeds + 1),
                            jobs=args.jobs, pnr=not args.synth_only, workdir=workdir,
                            freq_mhz=args.freq, placer=args.placer, router=args.router,
                            progress=not args.no_progress)
    rows = cost.cost_rows(records, config)
    text = cost.write_outputs(rows, target=target.name, config=config, json_path=args.json,
                              md_path=args.md, csv_path=args.csv, records=records)
    print(text)
    for path in (args.json, args.md, args.csv):
        if path:
            print(f"wrote {path}")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


# -- build-board ------------------------------------------------------------------------------

def _gemm_shape(text):
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise _cli().UsageError(f"--gemm must be three positive integers M,K,N, not {text!r}")
    return shape


def cmd_build_board(args):
    from npugen.flows import board, synth

    config, source = _cli()._config_from_args(args)
    gemm = _gemm_shape(args.gemm)
    if args.data_seed < 0:
        raise _cli().UsageError(f"--data-seed must be non-negative, not {args.data_seed}")
    try:
        _platform, target_name = board.board_platform(args.board, args.variant)
    except ValueError as e:
        raise _cli().UsageError(str(e)) from None
    except RuntimeError as e:
        return _fail(str(e))
    outdir = Path(args.output)
    print(f"{source}: NPU self-test top for {args.board}-{args.variant} ({target_name}), "
          f"GEMM {gemm[0]}x{gemm[1]}x{gemm[2]}")
    try:
        _print_tools(synth.get_target(target_name), pnr=True, pack=True)
        record = board.build_board(config, outdir, board=args.board, variant=args.variant,
                                   gemm=gemm, data_seed=args.data_seed, seed=args.seed,
                                   log=print)
    except synth.SynthError as e:
        return _fail(str(e))
    except ValueError as e:
        raise _cli().UsageError(str(e)) from None
    print(json.dumps({k: record[k] for k in ("luts", "ffs", "dsps", "brams", "fmax_mhz",
                                             "timing_met", "bitstream", "bitstream_bytes",
                                             "memory_words", "expected_signature")}, indent=2))
    if not record["timing_met"]:
        print(f"warning: Fmax {record['fmax_mhz']} MHz is below the 25 MHz board clock",
              file=sys.stderr)
    return 0


# -- parsers ----------------------------------------------------------------------------------

def _flow_options(parser, *, seeds_help="place-and-route seeds 1..N (default: %(default)s)"):
    from npugen.flows.synth import PLACERS, ROUTERS, TARGETS
    parser.add_argument("--target", required=True, metavar="TARGET",
                        help=f"FPGA device: {', '.join(TARGETS)}")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help=seeds_help)
    parser.add_argument("--jobs", "-j", type=int, default=1, metavar="J",
                        help="parallel tool runs (default: %(default)s)")
    parser.add_argument("--freq", type=float, metavar="MHZ",
                        help="nextpnr timing target (default: 150 on ECP5, 30 on iCE40)")
    parser.add_argument("--placer", choices=PLACERS,
                        help="nextpnr placer (default: nextpnr's, heap)")
    parser.add_argument("--router", choices=ROUTERS,
                        help="nextpnr router (default: nextpnr's, router1)")
    parser.add_argument("--synth-only", action="store_true",
                        help="stop after yosys: area only, no placement and no Fmax")


def add_commands(commands, config_options):
    """Register ``synth``, ``dse``, ``cost`` and ``build-board`` on ``commands``."""
    from npugen.flows.units import NPU_TOP, UNITS

    units = ", ".join(UNITS)
    p = commands.add_parser(
        "synth", parents=[config_options], help="FPGA area and Fmax (yosys + nextpnr)",
        description="Synthesize the NPU top or one unit with yosys, place and route it with "
                    "nextpnr (out of context for a core) and report LUT4, FF, carry, DSP, "
                    "BRAM and Fmax per seed with the median.")
    p.add_argument("--unit", metavar="NAME",
                   help=f"synthesize one unit alone: {units} (default: {NPU_TOP}, the NPU top)")
    _flow_options(p)
    p.add_argument("--workdir", metavar="DIR",
                   help="tool working directory (default: build/synth/TARGET/UNIT-HASH)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--md", metavar="FILE", help="write the result as a Markdown table")
    p.add_argument("--check-reference", action="store_true",
                   help="compare with the reference results of the presets; exit 1 when Fmax "
                        "dropped more than 10 %% or LUT4 grew more than 10 %%")
    p.add_argument("--update-reference", action="store_true",
                   help="store this result (a preset) as the new reference")
    p.add_argument("--reference", metavar="FILE",
                   help="reference file (default: the one shipped in npugen.flows)")
    p.set_defaults(handler=cmd_synth)

    p = commands.add_parser(
        "dse", parents=[config_options], help="design-space sweep with tables and plots",
        description="Synthesize the grid of --sweep values in parallel and write "
                    "results.csv, results.json, results.md and PNG plots.")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="parameter values to sweep (any configuration parameter; "
                        "modes=int8,int8+int4,all; size=4,8 sets rows and cols)")
    p.add_argument("--unit", metavar="NAME", help=f"synthesize one unit: {units}")
    _flow_options(p)
    p.add_argument("-o", "--output", default="dse-out", metavar="DIR",
                   help="output directory (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_dse)

    p = commands.add_parser(
        "cost", parents=[config_options], help="unit cost table (each compute unit alone)",
        description="Synthesize each registered unit alone and tabulate LUT4, DSP, Fmax, "
                    "LUT4 per MAC and the partial-product model.")
    p.add_argument("--units", metavar="A,B", help=f"units to include (default: all: {units})")
    _flow_options(p)
    p.add_argument("--workdir", metavar="DIR",
                   help="tool working directory (default: build/cost/TARGET/HASH)")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.add_argument("--md", metavar="FILE", help="write the table as Markdown")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_cost)

    p = commands.add_parser(
        "build-board", parents=[config_options], help="bitstream of the NPU self-test top",
        description="Build a bitstream of the NPU with an on-chip memory preloaded with a "
                    "GEMM program and a host sequencer that runs it and checks the result "
                    "(LEDs: pass, fail, NPU error, running, signature bits).")
    p.add_argument("--board", default="ulx3s", help="board (default: %(default)s)")
    p.add_argument("--variant", default="85f", help="board variant (default: %(default)s)")
    p.add_argument("--gemm", default="8,16,8", metavar="M,K,N",
                   help="shape of the self-test INT8 GEMM (default: %(default)s)")
    p.add_argument("--data-seed", type=int, default=1, metavar="S",
                   help="seed of the self-test data (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr seed (default: %(default)s)")
    p.add_argument("-o", "--output", default="build/board", metavar="DIR",
                   help="output directory (default: %(default)s)")
    p.set_defaults(handler=cmd_build_board)
