"""The ``npugen`` command line: generate Verilog, show a configuration, run benchmarks."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from npugen.golden.config import PRESETS, ConfigError, NPUConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["main", "build_parser", "parse_set_option", "resolve_config", "UsageError"]

PROG = "npugen"
DEFAULT_PRESET = "default"


class UsageError(Exception):
    """A problem with the command line or its inputs; reported in one line, exit code 2."""


# -- configuration from the command line ---------------------------------------------

_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_set_option(text: str) -> tuple[str, object]:
    """Split a ``--set KEY=VALUE`` argument; the value is read as a TOML value.

    A bare word that is not valid TOML (``dataflow=weight_stationary``) is taken as
    a string; anything else that does not parse is an error.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set expects KEY=VALUE, not {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        if not _BARE_WORD.fullmatch(raw):
            raise UsageError(f"--set {key}: {raw!r} is not a valid TOML value") from None
        value = raw
    return key, value


def resolve_config(preset: str | None = None, config: str | None = None,
                   sets: list[str] | None = None) -> tuple[NPUConfig, str]:
    """The configuration chosen by ``--preset``/``--config`` plus ``--set`` overrides.

    Returns the configuration and a short description of where it came from.
    """
    if preset is not None and config is not None:
        raise UsageError("--preset and --config are mutually exclusive")
    if config is not None:
        try:
            base = NPUConfig.load(config)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:  # a parameter out of range in the file
            raise ConfigError(f"{config}: {e}") from None
        source = f"file {config}"
    else:
        name = DEFAULT_PRESET if preset is None else preset
        base = NPUConfig.preset(name)
        source = f"preset {name}"
    overrides = dict(parse_set_option(item) for item in sets or ())
    if not overrides:
        return base, source
    settings = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return NPUConfig.from_dict({**base.to_dict(), **overrides}, source="--set"), \
        f"{source} with {settings}"


def _config_from_args(args):
    try:
        return resolve_config(args.preset, args.config, args.set)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


# -- commands ---------------------------------------------------------------------------

def _format_bytes(n):
    if n >= 1024 and n % 1024 == 0:
        return f"{n} ({n // 1024} KiB)"
    return str(n)


def _info_rows(config):
    rows = [(k, ", ".join(v) if isinstance(v, list) else str(v))
            for k, v in config.to_dict().items()]
    derived = config.derived()
    figures = [("pes", str(derived["pes"]))]
    for mode, macs in derived["peak_macs_per_cycle"].items():
        figures.append((f"peak MACs/cycle ({mode})", str(macs)))
    figures += [
        ("accumulator buffer bytes", _format_bytes(derived["acc_buffer_bytes"])),
        ("weight register bytes", _format_bytes(derived["weight_registers_bytes"])),
        ("tile M (max)", str(derived["max_tile_m"])),
        ("tile K", str(derived["tile_k"])),
        ("tile N", str(derived["tile_n"])),
    ]
    return rows, figures


def cmd_info(args):
    config, source = _config_from_args(args)
    if args.json:
        print(json.dumps({
            "source": source,
            "config_hash": config.config_hash(),
            "parameters": config.to_dict(),
            "derived": config.derived(),
        }, indent=2))
        return 0
    rows, figures = _info_rows(config)
    width = max(len(k) for k, _ in rows + figures)
    lines = [f"{source} (hash {config.config_hash()})", "", "parameters"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += ["", "derived"]
    lines += [f"  {k:<{width}}  {v}" for k, v in figures]
    print("\n".join(lines))
    return 0


def cmd_generate(args):
    from npugen.flows.verilog import write_outputs

    from npugen.flows.verilog import TOP_NAMES

    name = TOP_NAMES[args.top] if args.name is None else args.name
    if not _IDENTIFIER.fullmatch(name):
        raise UsageError(f"--name must be a Verilog identifier, not {name!r}")
    config, source = _config_from_args(args)
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir}: exists and is not a directory")
    try:
        manifest = write_outputs(config, outdir, name=name, top=args.top)
    except OSError as e:
        print(f"{PROG}: error: cannot write {outdir}: {e.strerror or e}", file=sys.stderr)
        return 1
    files = manifest["files"]
    print(f"{source}: {config.rows}x{config.cols} {'/'.join(config.modes)}, "
          f"hash {manifest['config_hash']}, {manifest['generation_seconds']:.2f} s")
    print(f"wrote {outdir / files['verilog']} (sha256 {manifest['verilog_sha256'][:16]}, "
          f"{len(manifest['ports'])} ports)")
    print(f"wrote {outdir / files['config']}")
    print(f"wrote {outdir / files['manifest']}")
    for key in ("regmap_json", "c_header", "regmap_md"):
        print(f"wrote {outdir / files[key]}")
    return 0


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if hasattr(value, "tolist"):  # NumPy arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _emit(record: dict, path) -> bool:
    """Print a benchmark record as JSON and write it to ``path`` if given."""
    text = json.dumps(record, indent=2, default=_json_default)
    print(text)
    return path is None or _write_json(path, text)


def _check_positive(args, *options):
    for option in options:
        value = getattr(args, option)
        if value < 1:
            raise UsageError(f"--{option} must be at least 1, not {value}")


def cmd_bench_gemm(args):
    _check_positive(args, "m", "k", "n")
    config, _source = _config_from_args(args)
    from npugen.sim.bench import DTYPES, bench_gemm

    # bf16 GEMMs are NPU programs (the core bench feeds integer tile programs).
    dtypes = DTYPES + ("bf16",) if args.engine == "npu" else DTYPES
    if args.dtype not in dtypes or args.dtype not in config.modes:
        raise UsageError(f"--dtype must be one of the built modes "
                         f"{', '.join(m for m in config.modes if m in dtypes)}"
                         f"{' (bf16: --engine npu)' if args.engine != 'npu' else ''}, "
                         f"not {args.dtype!r}")
    sparsity = None if args.sparsity == "dense" else args.sparsity
    if sparsity is not None and (args.dtype != "int8" or not config.sparse_2_4):
        raise UsageError(f"--sparsity {sparsity} needs --dtype int8 and a configuration "
                         f"with sparse_2_4 = true")
    if args.engine == "npu":
        from npugen.sim.npu_bench import bench_kernel
        result = bench_kernel(config, "gemm", seed=args.seed, waves=args.waves,
                              m=args.m, k=args.k, n=args.n, dtype=args.dtype, sparsity=sparsity)
    else:
        options = {"sparsity": sparsity} if sparsity is not None else {}
        result = bench_gemm(config, m=args.m, k=args.k, n=args.n, seed=args.seed,
                            dtype=args.dtype, waves=args.waves, **options)
    if not _emit(result, args.json):
        return 1
    return 0 if result["match"] else 1


def _bench_on_npu(args, kernel, shape):
    config, _source = _config_from_args(args)
    if args.dtype != "int8":
        raise UsageError(f"--dtype must be int8 for {kernel} (the compiler lowers int8 "
                         f"{kernel} layers), not {args.dtype!r}")
    from npugen.sim.npu_bench import bench_kernel, compile_kernel
    try:  # reject bad shapes before building anything
        compile_kernel(config, kernel, args.seed, **shape)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    result = bench_kernel(config, kernel, seed=args.seed, waves=args.waves, **shape)
    if not _emit(result, args.json):
        return 1
    return 0 if result["match"] else 1


def cmd_bench_conv(args):
    _check_positive(args, "h", "w", "cin", "cout", "kernel", "stride", "groups")
    if args.padding < 0:
        raise UsageError(f"--padding must be at least 0, not {args.padding}")
    return _bench_on_npu(args, "conv", {
        "h": args.h, "w": args.w, "cin": args.cin, "cout": args.cout, "kernel": args.kernel,
        "stride": args.stride, "padding": args.padding, "dilation": args.dilation,
        "groups": args.groups})


def cmd_bench_attention(args):
    _check_positive(args, "seq", "dim", "heads")
    return _bench_on_npu(args, "attention", {"seq": args.seq, "dim": args.dim,
                                             "heads": args.heads})


def cmd_demo(args):
    config, source = _config_from_args(args)
    from npugen.sim.demo import format_table, run_demo

    print(f"{source}: {config.rows}x{config.cols} {'/'.join(config.modes)} NPU, "
          f"AXI {config.axi_data_bits}-bit, hash {config.config_hash()}", file=sys.stderr)
    records = run_demo(config, seed=args.seed)
    print(format_table(records))
    if args.json is not None:
        text = json.dumps(records, indent=2, default=_json_default)
        if not _write_json(args.json, text):
            return 1
    return 0 if all(r["match"] for r in records) else 1


def _write_json(path, text):
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        print(f"{PROG}: error: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def cmd_bench_spmm(args):
    for option in ("m", "k", "n"):
        value = getattr(args, option)
        if value < 1:
            raise UsageError(f"--{option} must be at least 1, not {value}")
    if args.sweep == (args.density is not None):
        raise UsageError("give either --density D or --sweep")
    if args.density is not None and not 0.0 < args.density <= 1.0:
        raise UsageError(f"--density must be in (0, 1], not {args.density}")
    config, _source = _config_from_args(args)
    if args.k > config.acc_depth:
        raise UsageError(f"--k must be at most acc_depth = {config.acc_depth} (the sparse "
                         f"engine's activation buffer), not {args.k}")
    from npugen.sim.bench import SWEEP_DENSITIES, bench_spmm, bench_spmm_sweep, plot_spmm_sweep

    options = {"m": args.m, "k": args.k, "n": args.n, "seed": args.seed, "waves": args.waves}
    if not args.sweep:
        result = bench_spmm(config, density=args.density, **options)
        text = json.dumps(result, indent=2, default=_json_default)
        print(text)
        if args.json is not None and not _write_json(args.json, text):
            return 1
        return 0 if result["match"] else 1

    path = Path(args.json if args.json is not None else "spmm_sweep.json")
    records = bench_spmm_sweep(config, densities=SWEEP_DENSITIES, **options)
    text = json.dumps({"kernel": "spmm_sweep", "densities": list(SWEEP_DENSITIES),
                       "records": records}, indent=2, default=_json_default)
    print(text)
    if not _write_json(path, text):
        return 1
    plot = path.with_suffix(".png")
    try:
        plot_spmm_sweep(records, plot)
    except OSError as e:
        print(f"{PROG}: error: cannot write {plot}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {plot}", file=sys.stderr)
    return 0 if all(r["match"] for r in records) else 1


# -- argument parsing -------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _config_options():
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--preset", metavar="NAME",
                        help=f"named preset ({', '.join(PRESETS)}; default: {DEFAULT_PRESET})")
    choice.add_argument("--config", metavar="FILE", help="TOML file with an [npu] table")
    group.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override one parameter; VALUE is a TOML value "
                            "(rows=4, 'modes=[\"int8\"]', dataflow=weight_stationary)")
    return parent


def _bench_options(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.add_argument("--waves", action="store_true",
                   help="record an FST waveform (its directory is in the JSON)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``npugen`` command."""
    config_options = _config_options()
    parser = _Parser(prog=PROG, description="Generate, inspect and benchmark NPU designs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    p = commands.add_parser("generate", parents=[config_options],
                            help="write Verilog, config.toml, manifest.json and the "
                                 "register map",
                            description="Write <name>.v, config.toml, manifest.json and the "
                                        "register map (regmap.json, npu_regs.h, "
                                        "REGISTERS.md).")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="output directory")
    p.add_argument("--top", default="npu", choices=("npu", "gemm_core"),
                   help="npu: the whole NPU (AXI4-Lite registers, AXI4 DMA master); "
                        "gemm_core: the GEMM core alone with its streams (default: %(default)s)")
    p.add_argument("--name", default=None,
                   help="top-level module name (default: npu_top, or npu_gemm_core with "
                        "--top gemm_core)")
    p.set_defaults(handler=cmd_generate)

    p = commands.add_parser("demo", parents=[config_options],
                            help="the main job: run a GEMM, a conv2d layer and an attention "
                                 "block on the simulated NPU and check them",
                            description="Generate the NPU, build its Verilator model, run a "
                                        "GEMM, a conv2d layer and an attention block on it, "
                                        "check each against the golden model and print "
                                        "cycles and utilization.")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the records to FILE")
    p.set_defaults(handler=cmd_demo)

    p = commands.add_parser("info", parents=[config_options],
                            help="show a configuration and its derived figures")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_info)

    p = commands.add_parser("bench", help="run a benchmark on the simulated RTL")
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True,
                               parser_class=_Parser)
    p = benches.add_parser("gemm", parents=[config_options],
                           help="GEMM of an M×K activation and a K×N weight matrix")
    p.add_argument("--m", type=int, required=True, help="rows of the activation matrix")
    p.add_argument("--k", type=int, required=True, help="reduction dimension")
    p.add_argument("--n", type=int, required=True, help="output channels")
    p.add_argument("--dtype", default="int8", metavar="DTYPE",
                   help="operand data type / precision mode (default: %(default)s)")
    p.add_argument("--sparsity", default="dense", choices=("dense", "2:4"),
                   help="weight sparsity: 2:4 prunes the weights to 2:4 and runs them "
                        "compressed, reporting speedup vs the dense GEMM (default: %(default)s)")
    p.add_argument("--engine", default="npu", choices=("npu", "core"),
                   help="npu: the whole NPU, program and data over AXI (DMA included); "
                        "core: the GEMM core alone, fed by streams (default: %(default)s)")
    _bench_options(p)
    p.set_defaults(handler=cmd_bench_gemm)

    p = benches.add_parser("conv", parents=[config_options],
                           help="int8 conv2d layer (NHWC) on the whole NPU")
    for name, what in (("h", "input height"), ("w", "input width"), ("cin", "input channels"),
                       ("cout", "output channels")):
        p.add_argument(f"--{name}", type=int, required=True, help=what)
    p.add_argument("--kernel", type=int, default=3, help="kernel size (default: %(default)s)")
    p.add_argument("--stride", type=int, default=1, help="stride (default: %(default)s)")
    p.add_argument("--padding", type=int, default=0, help="padding (default: %(default)s)")
    p.add_argument("--dilation", type=int, default=1, help="dilation (default: %(default)s)")
    p.add_argument("--groups", type=int, default=1,
                   help="groups; groups = cin = cout is depthwise (default: %(default)s)")
    p.add_argument("--dtype", default="int8", metavar="DTYPE",
                   help="operand data type (int8) (default: %(default)s)")
    _bench_options(p)
    p.set_defaults(handler=cmd_bench_conv)

    p = benches.add_parser("attention", parents=[config_options],
                           help="int8 attention block (QK^T, integer softmax, xV) on the NPU")
    p.add_argument("--seq", type=int, required=True, help="sequence length")
    p.add_argument("--dim", type=int, required=True, help="head dimension")
    p.add_argument("--heads", type=int, default=1, help="heads (default: %(default)s)")
    p.add_argument("--dtype", default="int8", metavar="DTYPE",
                   help="operand data type (int8) (default: %(default)s)")
    _bench_options(p)
    p.set_defaults(handler=cmd_bench_attention)

    p = benches.add_parser("spmm", parents=[config_options],
                           help="sparse weights x dense activations on the zero-skipping engine",
                           description="Prune the weights of a random M×K×N GEMM to a density, "
                                       "run it on the sparse engine and compare its cycles "
                                       "with the dense GEMM core of the same configuration.")
    p.add_argument("--density", type=float, metavar="D",
                   help="fraction of weights kept by magnitude pruning, in (0, 1]")
    p.add_argument("--sweep", action="store_true",
                   help="run densities 0.1, 0.25, 0.5, 0.75, 1.0 and plot speedup vs density "
                        "(PNG next to the JSON)")
    p.add_argument("--m", type=int, default=64, help="rows of the activation matrix "
                                                      "(default: %(default)s)")
    p.add_argument("--k", type=int, default=256, help="reduction dimension, at most acc_depth "
                                                       "(default: %(default)s)")
    p.add_argument("--n", type=int, default=64, help="output channels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the result to FILE (--sweep: default spmm_sweep.json)")
    p.add_argument("--waves", action="store_true",
                   help="record an FST waveform (its directory is in the JSON)")
    p.set_defaults(handler=cmd_bench_spmm)

    from npugen.flows.fpga_cli import add_commands as add_fpga_commands
    add_fpga_commands(commands, config_options)  # synth, dse, cost, build-board
    from npugen.flows.perf_report import add_commands as add_perf_commands
    add_perf_commands(commands, config_options)  # perf
    from npugen.flows.run_model import add_commands as add_run_model_commands
    add_run_model_commands(commands, config_options)  # run-model
    return parser


def main(argv=None) -> int:
    """Run the ``npugen`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
