"""``npugen run-model digits``: a digits network as one NPU program on the simulated NPU.

:func:`run_model` quantizes the chosen variant of the digits MLP or CNN
(:mod:`npugen.golden.digits`), compiles it with a batch of test images into one program
(:func:`npugen.golden.network.compile_network`), runs the program on the Verilator model
of the NPU and on the instruction-level model, and compares the logits and predictions
with the golden network (``QuantizedNetwork.forward``; for ``--dtype bf16``
``BF16Network.forward_bits``, FP32 logits compared bit for bit, predictions their
argmax).  ``--dtype bf16`` runs on the configuration's modes plus bf16 (added when the
preset or file does not build it).  It also reports the test-split
accuracy (360 images, golden model) of the float network and of every variant
run-model offers, the accuracy on the images the RTL ran, the RTL cycles per image, and
per layer the cycles and utilization that the analytic cycle model
(:mod:`npugen.golden.npu_perf`) attributes to it: a layer spans from the completion of
the FENCE that ends the previous layer to the completion of its own FENCE (END for the
last).  Exit codes: 0 success, 1 predictions differing from the golden model (or a file
that could not be written), 2 usage errors.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

__all__ = ["add_commands", "cmd_run_model", "run_model", "format_result", "DTYPES",
           "variant_name", "RUN_VARIANTS", "MODELS"]

PROG = "npugen"
MODELS = ("digits",)
#: --dtype choices (bf16: every layer in the bf16 MAC mode, FP32 logits).
DTYPES = ("int8", "int4", "binary", "bf16")
#: The variants run-model can run, as :data:`npugen.golden.digits.VARIANTS` names.
RUN_VARIANTS = ("int8", "int8-2:4-finetuned", "int4", "binary")


def _cli():
    from npugen.flows import cli
    return cli


def variant_name(dtype, sparsity):
    """The :data:`~npugen.golden.digits.VARIANTS` name of ``--dtype``/``--sparsity``."""
    if dtype not in DTYPES:
        raise _cli().UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if sparsity is None:
        return dtype
    if sparsity != "2:4":
        raise _cli().UsageError(f"--sparsity must be dense or 2:4, not {sparsity!r}")
    if dtype == "bf16":
        raise _cli().UsageError("--sparsity 2:4 needs --dtype int8 (the 2:4 mode is int8), "
                                "not --dtype bf16")
    if dtype != "int8":
        raise _cli().UsageError(f"--sparsity 2:4 needs --dtype int8 (the 2:4 mode is int8), "
                                f"not --dtype {dtype}")
    return "int8-2:4-finetuned"


def _quantized(kind, variant, calibration):
    from npugen.golden import digits
    options = dict(digits.VARIANTS[variant])
    net = digits.load_network(kind, sparse=options.pop("network", None) == "2:4")
    return digits.quantize_network(net, calibration, **options), options.get("sparsity")


def run_model(config, network, dtype="int8", sparsity=None, images=20, *, seed=0,
              accuracy=True, log=None) -> dict:
    """Run ``network`` (``mlp``/``cnn``) in ``dtype`` (and ``sparsity``) on ``images``
    test images on the simulated NPU; return the result record (see the module doc)."""
    from npugen.golden import digits
    from npugen.golden.network import compile_network, layer_cycles
    from npugen.golden.npu_perf import estimate_program
    from npugen.sim.npu_sim import run_kernels

    cli = _cli()
    if network not in digits.KINDS:
        raise cli.UsageError(f"--network must be one of {', '.join(digits.KINDS)}, "
                             f"not {network!r}")
    variant = variant_name(dtype, sparsity)
    if isinstance(images, bool) or not isinstance(images, int) or \
            not 1 <= images <= digits.TEST_SIZE:
        raise cli.UsageError(f"--images must be an integer in 1..{digits.TEST_SIZE}, "
                             f"not {images!r}")
    if dtype == "bf16" and "bf16" not in config.modes:
        try:
            config = config.replace(modes=tuple(config.modes) + ("bf16",))
        except ValueError as e:
            raise cli.UsageError(f"--dtype bf16 needs the bf16 mode, which this "
                                 f"configuration cannot build: {e}") from None
    if dtype not in config.modes:
        raise cli.UsageError(f"--dtype {dtype} is not a built mode of this configuration "
                             f"(modes {', '.join(config.modes)})")
    if sparsity and not config.sparse_2_4:
        raise cli.UsageError("--sparsity 2:4 needs a configuration with sparse_2_4 = true")

    def say(text):
        if log is not None:
            print(text, file=log)

    x_train, _, x_test, y_test = digits.load_digits_split()
    calibration = x_train[:digits.CALIBRATION_SIZE]
    x, y = x_test[:images], y_test[:images]
    if dtype == "bf16":
        qnet = digits.bf16_network(digits.load_network(network), config.rows)
        net_sparsity, codes = None, qnet.input_bits(x)
    else:
        qnet, net_sparsity = _quantized(network, variant, calibration)
        codes = qnet.input_quant.quantize(digits._input(network, x))
    try:
        program = compile_network(config, qnet, codes, sparsity=net_sparsity, base=0x1000)
    except ValueError as e:
        raise cli.UsageError(f"the {network} in {variant} does not fit this configuration: "
                             f"{e}") from None
    say(f"{network} {variant}: {len(program.instructions)} instructions, {images} images; "
        f"running on the Verilator model")
    start = time.monotonic()
    result, = run_kernels(config, [program], seed=seed)
    wall = time.monotonic() - start
    estimate = estimate_program(program, timeline=True)
    layers = layer_cycles(program, estimate)

    golden_logits = program.expected["logits"]
    rtl_logits = result.outputs["logits"]

    def argmax(logits):          # bf16: FP32 bit patterns
        logits = np.asarray(logits)
        return np.argmax(logits.view(np.float32) if dtype == "bf16" else logits, axis=1)

    golden_pred = argmax(golden_logits)
    rtl_pred = argmax(rtl_logits)
    assert np.array_equal(golden_pred, qnet.predict(x))
    float_net = digits.load_network(network)
    cycles = result.record.cycles
    record = {
        "model": "digits", "network": network, "dtype": dtype,
        "sparsity": sparsity or "dense", "variant": variant, "images": images,
        "config_hash": config.config_hash(), "rows": config.rows, "cols": config.cols,
        "modes": list(config.modes),
        "instructions": len(program.instructions),
        "rtl_done": result.record.done, "model_status": result.model_status,
        "stray_writes": result.stray_writes,
        "logits_match": bool(np.array_equal(rtl_logits, golden_logits)
                             and np.array_equal(result.model_outputs["logits"],
                                                golden_logits)),
        "predictions_match": bool(np.array_equal(rtl_pred, golden_pred)),
        "match": bool(result.match),
        "predictions": rtl_pred.tolist(), "labels": y.tolist(),
        "rtl_accuracy": float(np.mean(rtl_pred == y)),
        "float_accuracy_rtl_images": float(np.mean(float_net.predict(x) == y)),
        "cycles": cycles, "cycles_per_image": cycles / images,
        "model_cycles": estimate.cycles,
        "model_error": (estimate.cycles - cycles) / cycles if cycles else None,
        "ideal_cycles": program.ideal_cycles, "macs": program.macs,
        "utilization": program.ideal_cycles / cycles if cycles else 0.0,
        "unit_busy": result.record.unit_busy,
        "layers": layers, "simulation_seconds": round(wall, 1),
    }
    if accuracy:
        report = digits.accuracy_report([network], RUN_VARIANTS)[network]
        # bf16 in the summation order of this configuration's rows
        bnet = digits.bf16_network(float_net, config.rows)
        report["bf16"] = float(np.mean(bnet.predict(x_test) == y_test))
        record["test_accuracy"] = report
    return record


def format_result(r) -> str:
    """A human-readable summary of a :func:`run_model` record."""
    lines = [f"digits {r['network']} {r['variant']} on a {r['rows']}x{r['cols']} NPU "
             f"(hash {r['config_hash']}): {r['images']} images in one program of "
             f"{r['instructions']} instructions",
             f"predictions identical to the golden model: "
             f"{'yes' if r['predictions_match'] else 'NO'} (logits "
             f"{'identical' if r['logits_match'] else 'DIFFER'})",
             f"accuracy on these {r['images']} images: RTL {100 * r['rtl_accuracy']:.2f} %, "
             f"float {100 * r['float_accuracy_rtl_images']:.2f} %",
             f"cycles {r['cycles']} ({r['cycles_per_image']:.1f} per image), cycle model "
             f"{r['model_cycles']} ({100 * r['model_error']:+.2f} %), ideal "
             f"{r['ideal_cycles']}, utilization {100 * r['utilization']:.1f} %"]
    if "test_accuracy" in r:
        lines += ["", "test-split accuracy (360 images, golden model)",
                  "| variant | accuracy |", "|---|---|"]
        for name, acc in r["test_accuracy"].items():
            mark = " (this run)" if name == r["variant"] else ""
            lines.append(f"| {name}{mark} | {100 * acc:.2f} % |")
    lines += ["", "per layer (cycle model, between layer-boundary FENCEs)",
              "| layer | mode | MACs | cycles | ideal | utilization |",
              "|---|---|---|---|---|---|"]
    for layer in r["layers"]:
        mode = layer["mode"] + (" 2:4" if layer["sparse"] else "")
        lines.append(f"| {layer['name']} | {mode} | {layer['macs']} | {layer['cycles']} | "
                     f"{layer['ideal_cycles']} | {100 * layer['utilization']:.1f} % |")
    return "\n".join(lines)


def cmd_run_model(args):
    cli = _cli()
    if args.model not in MODELS:
        raise cli.UsageError(f"MODEL must be one of {', '.join(MODELS)}, not {args.model!r}")
    sparsity = None if args.sparsity == "dense" else args.sparsity
    variant_name(args.dtype, sparsity)          # bf16 and 2:4 checks before any work
    config, source = cli._config_from_args(args)
    record = run_model(config, args.network, args.dtype, sparsity, args.images,
                       seed=args.seed, accuracy=not args.no_accuracy, log=sys.stderr)
    record["source"] = source
    print(format_result(record))
    if args.json is not None:
        if not cli._write_json(args.json, json.dumps(record, indent=2)):
            return 1
    if not record["match"]:
        print(f"{PROG}: error: the NPU's predictions differ from the golden model",
              file=sys.stderr)
        return 1
    return 0


def add_commands(commands, config_options):
    """Register ``run-model`` on ``commands``."""
    p = commands.add_parser(
        "run-model", parents=[config_options],
        help="run a network as one program on the simulated NPU and check it",
        description="Compile a quantized network and a batch of test images into one NPU "
                    "program, run it on the Verilator model, check the predictions against "
                    "the golden model and report accuracy, cycles per image and per-layer "
                    "utilization.")
    p.add_argument("model", metavar="MODEL", help="the network family: digits")
    p.add_argument("--network", default="cnn", help="mlp or cnn (default: %(default)s)")
    p.add_argument("--dtype", default="int8", metavar="DTYPE",
                   help="precision: int8, int4, binary or bf16 (int4/binary keep the first "
                        "and last layers in int8; bf16 runs every layer in the bf16 MAC mode "
                        "with FP32 logits and adds bf16 to the configuration's modes when it "
                        "is not built) (default: %(default)s)")
    p.add_argument("--sparsity", default="dense", metavar="S",
                   help="dense or 2:4 (int8, the 2:4 fine-tuned weights) "
                        "(default: %(default)s)")
    p.add_argument("--images", type=int, default=20,
                   help="test images in the batch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="testbench seed (default: %(default)s)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the golden test-split accuracy table")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.set_defaults(handler=cmd_run_model)
