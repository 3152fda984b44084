import dataclasses
import hashlib
import json
import re
import sys
import types

import numpy as np
import pytest
from amaranth.hdl import Fragment

from npugen.flows import verilog
from npugen.flows.cli import UsageError, main, parse_set_option
from npugen.golden.config import PRESETS, NPUConfig
from npugen.sim import npu_bench as real_npu_bench

KNOWN = ", ".join(sorted(f.name for f in dataclasses.fields(NPUConfig)))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- --set parsing ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("rows=4", ("rows", 4)),
    (" rows = 4 ", ("rows", 4)),
    ("acc_bits=0x18", ("acc_bits", 24)),
    ('modes=["int8"]', ("modes", ["int8"])),
    ("dataflow=weight_stationary", ("dataflow", "weight_stationary")),
    ('dataflow="weight_stationary"', ("dataflow", "weight_stationary")),
    ("dataflow='a b'", ("dataflow", "a b")),
    ("flag=true", ("flag", True)),
    ("rows=four", ("rows", "four")),
])
def test_parse_set_option(text, expected):
    assert parse_set_option(text) == expected


@pytest.mark.parametrize("text, regex", [
    ("rows", r"^--set expects KEY=VALUE, not 'rows'$"),
    ("=4", r"^--set expects KEY=VALUE, not '=4'$"),
    ('modes=["int8"', r"""^--set modes: '\["int8"' is not a valid TOML value$"""),
    ("dataflow=a b", r"^--set dataflow: 'a b' is not a valid TOML value$"),
])
def test_parse_set_option_bad(text, regex):
    with pytest.raises(UsageError, match=regex):
        parse_set_option(text)


# -- info ---------------------------------------------------------------------------------

def test_info_table(capsys):
    code, out, err = run(capsys, "info")
    assert (code, err) == (0, "")
    config = PRESETS["default"]
    lines = out.splitlines()
    assert lines[0] == f"preset default (hash {config.config_hash()})"
    assert re.search(r"^  rows +8$", out, re.MULTILINE)
    assert re.search(r"^  dataflow +weight_stationary$", out, re.MULTILINE)
    assert re.search(r"^  modes +int8, int4, binary$", out, re.MULTILINE)
    assert re.search(r"^  peak MACs/cycle \(int8\) +64$", out, re.MULTILINE)
    assert re.search(r"^  accumulator buffer bytes +16384 \(16 KiB\)$", out, re.MULTILINE)
    # One value column for both sections.
    columns = {len(m.group(1)) for m in re.finditer(r"^(  \S.*?  +)\S", out, re.MULTILINE)}
    assert len(columns) == 1


def test_info_json(capsys):
    code, out, err = run(capsys, "info", "--json", "--preset", "tiny")
    assert (code, err) == (0, "")
    config = PRESETS["tiny"]
    assert json.loads(out) == {
        "source": "preset tiny",
        "config_hash": config.config_hash(),
        "parameters": config.to_dict(),
        "derived": config.derived(),
    }


def test_info_set(capsys):
    code, out, _ = run(capsys, "info", "--json", "--preset", "tiny",
                       "--set", "rows=4", "--set", 'modes=["int8"]')
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == PRESETS["tiny"].replace(rows=4, modes=("int8",)).to_dict()
    assert info["source"] == "preset tiny with rows=4, modes=['int8']"


def test_info_config_file(capsys, tmp_path):
    path = tmp_path / "npu.toml"
    NPUConfig(rows=4, cols=16).save(path)
    code, out, _ = run(capsys, "info", "--json", "--config", str(path), "--set", "cols=8")
    assert code == 0
    assert json.loads(out)["parameters"] == NPUConfig(rows=4, cols=8).to_dict()


def test_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "generate" in out and "info" in out and "bench" in out


# -- generate -----------------------------------------------------------------------------

@pytest.mark.parametrize("top, module", [("npu", "npu_top"), ("gemm_core", "npu_gemm_core")])
def test_generate_tiny(capsys, tmp_path, top, module):
    outdir = tmp_path / "out"
    options = [] if top == "npu" else ["--top", top]
    code, out, err = run(capsys, "generate", "--preset", "tiny", "-o", str(outdir), *options)
    assert (code, err) == (0, "")
    config = PRESETS["tiny"]
    written = [f"{module}.v", "config.toml", "manifest.json", "regmap.json", "npu_regs.h",
               "REGISTERS.md"]
    assert sorted(p.name for p in outdir.iterdir()) == sorted(written)
    for name in written:
        assert f"wrote {outdir / name}" in out

    text = (outdir / f"{module}.v").read_bytes()
    assert re.search(rf"^module {module}\(".encode(), text, re.MULTILINE)
    assert NPUConfig.load(outdir / "config.toml") == config

    manifest = json.loads((outdir / "manifest.json").read_text())
    assert (manifest["top"], manifest["design"]) == (module, top)
    assert manifest["files"] == {"verilog": f"{module}.v", "config": "config.toml",
                                 "manifest": "manifest.json", "regmap_json": "regmap.json",
                                 "c_header": "npu_regs.h", "regmap_md": "REGISTERS.md"}
    assert manifest["verilog_sha256"] == hashlib.sha256(text).hexdigest()
    assert manifest["config_hash"] == config.config_hash()
    assert manifest["parameters"] == config.to_dict()
    assert manifest["derived"] == config.derived()
    assert manifest["versions"]["npugen"]
    assert manifest["versions"]["amaranth"]
    assert manifest["generation_seconds"] >= 0

    ports = manifest["ports"]
    assert all(set(p) == {"name", "direction", "width"} for p in ports)
    names = [p["name"] for p in ports]
    assert len(set(names)) == len(names)
    assert names[:2] == ["clk", "rst"]
    component = verilog.top_component(config, top=top)
    Fragment.get(component, None)  # elaborated, as the generator does
    flattened = ["__".join(map(str, path))
                 for path, _, _ in component.signature.flatten(component)]
    assert names[2:] == flattened
    for port in ports:
        width = rf"\[{port['width'] - 1}:0\] " if port["width"] > 1 else ""
        decl = rf"^\s*{port['direction']} (signed )?{width}{port['name']};$"
        assert re.search(decl.encode(), text, re.MULTILINE), port


def test_generate_is_reproducible(tmp_path):
    config = PRESETS["tiny"]
    assert verilog.generate_verilog(config) == verilog.generate_verilog(config)


def test_generate_name(capsys, tmp_path):
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "--name", "npu_x",
                     "-o", str(tmp_path / "out"))
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["top"] == "npu_x"
    assert "module npu_x(" in (tmp_path / "out" / "npu_x.v").read_text()


def test_generate_into_existing_dir(capsys, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("keep me")
    (outdir / "config.toml").write_text("stale")
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "-o", str(outdir))
    assert code == 0
    assert (outdir / "notes.txt").read_text() == "keep me"
    assert NPUConfig.load(outdir / "config.toml") == PRESETS["tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_generate_creates_parents(capsys, tmp_path):
    outdir = tmp_path / "a" / "b" / "out"
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "-o", str(outdir))
    assert code == 0
    assert (outdir / "npu_top.v").is_file()


@pytest.fixture
def failing_write(monkeypatch):
    """Make the second file written by write_outputs fail with ENOSPC."""
    real = verilog._write_file
    calls = []

    def write_file(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(verilog, "_write_file", write_file)


def test_generate_write_error_leaves_nothing(capsys, tmp_path, failing_write):
    outdir = tmp_path / "a" / "out"
    code, out, err = run(capsys, "generate", "--preset", "tiny", "-o", str(outdir))
    assert code == 1
    assert re.fullmatch(rf"npugen: error: cannot write {re.escape(str(outdir))}: "
                        r"No space left on device\n", err)
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_generate_write_error_keeps_existing(capsys, tmp_path, failing_write):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "npu_top.v").write_text("old")
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "-o", str(outdir))
    assert code == 1
    assert [p.name for p in outdir.iterdir()] == ["npu_top.v"]
    assert (outdir / "npu_top.v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_generate_elaboration_error_leaves_nothing(capsys, tmp_path, monkeypatch):
    def broken(config, **kwargs):
        raise RuntimeError("elaboration failed")

    monkeypatch.setattr(verilog, "top_component", broken)
    with pytest.raises(RuntimeError, match=r"^elaboration failed$"):
        main(["generate", "--preset", "tiny", "-o", str(tmp_path / "a" / "out")])
    assert list(tmp_path.iterdir()) == []


def test_write_outputs_rejects_bad_name(tmp_path):
    with pytest.raises(ValueError, match=r"^name must be a Verilog identifier, not '\.\./x'$"):
        verilog.write_outputs(PRESETS["tiny"], tmp_path / "out", name="../x")
    assert list(tmp_path.iterdir()) == []


def test_generate_verilog_rejects_non_config():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not \{'rows': 2\}$"):
        verilog.generate_verilog({"rows": 2})


def _malformed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[npu\nrows = 4\n")
    return str(path)


def _out_of_range(tmp_path):
    path = tmp_path / "range.toml"
    path.write_text("[npu]\nrows = 100\n")
    return str(path)


GENERATE_ERRORS = [
    (["--preset", "huge"],
     r"preset must be one of tiny, default, large, not 'huge'"),
    (["--set", "depth=4"], rf"--set: unknown parameter 'depth' \(known: {KNOWN}\)"),
    (["--set", "rows=0"], r"rows must be an integer in 2\.\.64, not 0"),
    (["--set", "rows=four"], r"rows must be an integer in 2\.\.64, not 'four'"),
    (["--set", "dataflow=diagonal"],
     r"dataflow must be one of weight_stationary, not 'diagonal'"),
    (["--set", 'modes=["int3"]'], r"modes must contain only int8, int4, binary, bf16, not 'int3'"),
    (["--set", "rows"], r"--set expects KEY=VALUE, not 'rows'"),
    (["--set", "modes=[int8"], r"--set modes: '\[int8' is not a valid TOML value"),
    (["--config", _malformed], r"{path}: not valid TOML: .+"),
    (["--config", _out_of_range], r"{path}: rows must be an integer in 2\.\.64, not 100"),
    (["--config", "{tmp}/missing.toml"],
     r"{path}: cannot read configuration: No such file or directory"),
    (["--preset", "tiny", "--config", "x.toml"],
     r"argument --config: not allowed with argument --preset"),
    (["--name", "top-level"], r"--name must be a Verilog identifier, not 'top-level'"),
]


@pytest.mark.parametrize("args, regex", GENERATE_ERRORS,
                         ids=[" ".join(a if isinstance(a, str) else a.__name__ for a in args)
                              for args, _ in GENERATE_ERRORS])
def test_generate_errors(capsys, tmp_path, args, regex):
    (tmp_path / "work").mkdir()
    args = [a(tmp_path / "work") if callable(a) else a.format(tmp=tmp_path / "work")
            for a in args]
    if "--config" in args:
        path = args[args.index("--config") + 1]
        regex = regex.replace("{path}", re.escape(path))
    outdir = tmp_path / "new" / "out"
    code, out, err = run(capsys, "generate", *args, "-o", str(outdir))
    assert code == 2
    assert out == ""
    assert re.fullmatch(rf"npugen: error: {regex}\n", err), err
    assert not (tmp_path / "new").exists()


def test_generate_requires_output(capsys):
    code, _, err = run(capsys, "generate", "--preset", "tiny")
    assert code == 2
    assert err == "npugen: error: the following arguments are required: -o/--output\n"


def test_generate_output_is_a_file(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run(capsys, "generate", "--preset", "tiny", "-o", str(target))
    assert code == 2
    assert err == f"npugen: error: {target}: exists and is not a directory\n"
    assert target.read_text() == "x"


# -- bench ----------------------------------------------------------------------------------

@pytest.fixture
def fake_bench(monkeypatch):
    """Replace npugen.sim.bench with a recorder; the real bench is tested elsewhere."""
    calls = []
    result = {"cycles": np.int64(40), "ideal_cycles": 32, "utilization": 0.8,
              "macs": 128, "match": True}

    def bench_gemm(config, **kwargs):
        calls.append((config, kwargs))
        return dict(result)

    def bench_kernel(config, kind, **kwargs):
        calls.append((config, {"kind": kind, **kwargs}))
        return dict(result)

    module = types.ModuleType("npugen.sim.bench")
    module.bench_gemm = bench_gemm
    module.DTYPES = ("int8",)
    monkeypatch.setitem(sys.modules, "npugen.sim.bench", module)
    npu_module = types.ModuleType("npugen.sim.npu_bench")
    npu_module.bench_kernel = bench_kernel
    npu_module.compile_kernel = real_npu_bench.compile_kernel
    monkeypatch.setitem(sys.modules, "npugen.sim.npu_bench", npu_module)
    return types.SimpleNamespace(calls=calls, result=result)


def test_bench_gemm(capsys, tmp_path, fake_bench):
    path = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", "gemm", "--m", "4", "--k", "8", "--n", "2",
                         "--preset", "tiny", "--set", "rows=4", "--seed", "7",
                         "--json", str(path), "--engine", "core")
    assert (code, err) == (0, "")
    assert fake_bench.calls == [(PRESETS["tiny"].replace(rows=4),
                                 {"m": 4, "k": 8, "n": 2, "seed": 7, "dtype": "int8",
                                  "waves": False})]
    expected = {"cycles": 40, "ideal_cycles": 32, "utilization": 0.8, "macs": 128,
                "match": True}
    assert json.loads(out) == expected
    assert json.loads(path.read_text()) == expected


def test_bench_gemm_defaults(capsys, fake_bench):
    """The whole NPU is the default engine."""
    code, _, _ = run(capsys, "bench", "gemm", "--m", "1", "--k", "1", "--n", "1", "--waves")
    assert code == 0
    assert fake_bench.calls == [(PRESETS["default"],
                                 {"kind": "gemm", "m": 1, "k": 1, "n": 1, "seed": 0,
                                  "dtype": "int8", "sparsity": None, "waves": True})]


def test_bench_conv_and_attention(capsys, fake_bench):
    code, _, err = run(capsys, "bench", "conv", "--h", "8", "--w", "6", "--cin", "4",
                       "--cout", "8", "--padding", "1", "--stride", "2", "--preset", "tiny")
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "bench", "attention", "--seq", "16", "--dim", "8", "--heads", "2")
    assert (code, err) == (0, "")
    assert fake_bench.calls == [
        (PRESETS["tiny"], {"kind": "conv", "h": 8, "w": 6, "cin": 4, "cout": 8, "kernel": 3,
                           "stride": 2, "padding": 1, "dilation": 1, "groups": 1, "seed": 0,
                           "waves": False}),
        (PRESETS["default"], {"kind": "attention", "seq": 16, "dim": 8, "heads": 2,
                              "seed": 0, "waves": False})]


@pytest.mark.parametrize("args, regex", [
    (["conv", "--h", "0", "--w", "4", "--cin", "2", "--cout", "2"], r"--h must be at least 1, not 0"),
    (["conv", "--h", "4", "--w", "4", "--cin", "2", "--cout", "2", "--padding", "-1"],
     r"--padding must be at least 0, not -1"),
    (["conv", "--h", "4", "--w", "4", "--cin", "3", "--cout", "4", "--groups", "2"],
     r"groups must divide cin and cout, not groups=2 with cin=3, cout=4"),
    (["attention", "--seq", "8", "--dim", "0"], r"--dim must be at least 1, not 0"),
    (["attention", "--seq", "8", "--dim", "8", "--dtype", "int4"],
     r"--dtype must be int8 for attention \(the compiler lowers int8 attention layers\), "
     r"not 'int4'"),
])
def test_bench_kernel_errors(capsys, fake_bench, args, regex):
    code, out, err = run(capsys, "bench", *args)
    assert (code, out) == (2, "")
    assert re.fullmatch(rf"npugen: error: {regex}\n", err), err
    assert fake_bench.calls == []


def test_bench_gemm_sparsity(capsys, fake_bench):
    code, _, _ = run(capsys, "bench", "gemm", "--m", "64", "--k", "256", "--n", "64",
                     "--sparsity", "2:4", "--engine", "core")
    assert code == 0
    assert fake_bench.calls == [(PRESETS["default"],
                                 {"m": 64, "k": 256, "n": 64, "seed": 0, "dtype": "int8",
                                  "waves": False, "sparsity": "2:4"})]
    code, _, err = run(capsys, "bench", "gemm", "--m", "1", "--k", "1", "--n", "1",
                       "--sparsity", "2:4", "--set", "sparse_2_4=false")
    assert code == 2
    assert err == ("npugen: error: --sparsity 2:4 needs --dtype int8 and a configuration "
                   "with sparse_2_4 = true\n")
    code, _, err = run(capsys, "bench", "gemm", "--m", "1", "--k", "1", "--n", "1",
                       "--sparsity", "1:2")
    assert code == 2 and "argument --sparsity: invalid choice: '1:2'" in err
    assert len(fake_bench.calls) == 1


def test_bench_gemm_mismatch(capsys, fake_bench):
    fake_bench.result["match"] = False
    code, out, _ = run(capsys, "bench", "gemm", "--m", "2", "--k", "2", "--n", "2")
    assert code == 1
    assert json.loads(out)["match"] is False


@pytest.mark.parametrize("args, regex", [
    (["--m", "0", "--k", "1", "--n", "1"], r"--m must be at least 1, not 0"),
    (["--m", "1", "--k", "-3", "--n", "1"], r"--k must be at least 1, not -3"),
    (["--m", "1", "--k", "1", "--n", "0"], r"--n must be at least 1, not 0"),
    (["--m", "x", "--k", "1", "--n", "1"], r"argument --m: invalid int value: 'x'"),
    (["--m", "1", "--k", "1"], r"the following arguments are required: --n"),
    (["--m", "1", "--k", "1", "--n", "1", "--set", "cols=1"],
     r"cols must be an integer in 2\.\.64, not 1"),
    (["--m", "1", "--k", "1", "--n", "1", "--dtype", "int3"],
     r"--dtype must be one of the built modes int8, not 'int3'"),
])
def test_bench_gemm_errors(capsys, fake_bench, args, regex):
    code, out, err = run(capsys, "bench", "gemm", *args)
    assert code == 2
    assert out == ""
    assert re.fullmatch(rf"npugen: error: {regex}\n", err), err
    assert fake_bench.calls == []


def test_bench_requires_kind(capsys):
    code, _, err = run(capsys, "bench")
    assert code == 2
    assert err == "npugen: error: the following arguments are required: BENCH\n"


# -- bench spmm -------------------------------------------------------------------------------

@pytest.fixture
def fake_spmm(monkeypatch):
    """Replace npugen.sim.bench with a recorder of the sparse benchmarks."""
    calls, plots = [], []

    def bench_spmm(config, **kwargs):
        calls.append((config, kwargs))
        return {"cycles": np.int64(100), "speedup": 2.0, "efficiency": 1.0,
                "achieved_density": kwargs["density"], "match": True}

    def bench_spmm_sweep(config, *, densities, **kwargs):
        return [bench_spmm(config, density=d, **kwargs) for d in densities]

    def plot_spmm_sweep(records, path):
        plots.append((len(records), path))
        path.write_bytes(b"\x89PNG")

    module = types.ModuleType("npugen.sim.bench")
    module.bench_spmm, module.bench_spmm_sweep = bench_spmm, bench_spmm_sweep
    module.plot_spmm_sweep, module.SWEEP_DENSITIES = plot_spmm_sweep, (0.1, 0.25, 0.5, 0.75, 1.0)
    monkeypatch.setitem(sys.modules, "npugen.sim.bench", module)
    return types.SimpleNamespace(calls=calls, plots=plots)


def test_bench_spmm(capsys, tmp_path, fake_spmm):
    path = tmp_path / "spmm.json"
    code, out, err = run(capsys, "bench", "spmm", "--density", "0.25", "--preset", "tiny",
                         "--k", "32", "--json", str(path))
    assert (code, err) == (0, "")
    assert fake_spmm.calls == [(PRESETS["tiny"], {"density": 0.25, "m": 64, "k": 32, "n": 64,
                                                  "seed": 0, "waves": False})]
    assert json.loads(out) == json.loads(path.read_text())
    assert json.loads(out)["cycles"] == 100


def test_bench_spmm_sweep_writes_plot_next_to_json(capsys, tmp_path, fake_spmm):
    path = tmp_path / "sweep.json"
    code, out, err = run(capsys, "bench", "spmm", "--sweep", "--json", str(path))
    assert code == 0
    record = json.loads(path.read_text())
    assert [r["achieved_density"] for r in record["records"]] == [0.1, 0.25, 0.5, 0.75, 1.0]
    assert fake_spmm.plots == [(5, tmp_path / "sweep.png")]
    assert (tmp_path / "sweep.png").exists()
    assert err == f"wrote {path} and {tmp_path / 'sweep.png'}\n"


@pytest.mark.parametrize("args, regex", [
    ([], r"give either --density D or --sweep"),
    (["--density", "0.5", "--sweep"], r"give either --density D or --sweep"),
    (["--density", "0"], r"--density must be in \(0, 1\], not 0\.0"),
    (["--density", "1.5"], r"--density must be in \(0, 1\], not 1\.5"),
    (["--density", "0.5", "--m", "0"], r"--m must be at least 1, not 0"),
    (["--density", "0.5", "--preset", "tiny", "--k", "65"],
     r"--k must be at most acc_depth = 64 \(the sparse engine's activation buffer\), not 65"),
    (["--density", "0.5", "--set", "spmm_lanes=0"],
     r"spmm_lanes must be an integer in 1\.\.64, not 0"),
])
def test_bench_spmm_errors(capsys, fake_spmm, args, regex):
    code, out, err = run(capsys, "bench", "spmm", *args)
    assert code == 2
    assert out == ""
    assert re.fullmatch(rf"npugen: error: {regex}\n", err), err
    assert fake_spmm.calls == []
