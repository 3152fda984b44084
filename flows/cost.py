"""Unit cost table: every compute unit of :data:`npugen.flows.units.UNITS` synthesized alone.

For each unit the table gives LUT4, FF, DSP, BRAM, Fmax, MACs per cycle and LUT4 per MAC;
a unit that extends another (``baseline``: a PE with int4 or binary over the int8 PE)
also gives the extra LUT4 per MAC of the extension, ``Δ LUT4/MAC``.
Units of one ``group`` (e.g. the float multipliers in LUTs) are also compared with the
partial-product model: a multiplier of two ``m+1``-bit significands has ``(m+1)²``
partial-product bits — 576 for FP32 (m = 23), 121 for FP16 and TF32 (m = 10), 64 for
BF16 (m = 7) — so its LUT4 count should scale about like that.  ``model ratio`` is the
unit's partial products over those of the group's smallest unit, ``measured ratio`` the
same ratio of the measured LUT4 counts.
"""

from __future__ import annotations

import json
from pathlib import Path

from npugen.flows.dse import _atomic_write, run_points
from npugen.golden.config import NPUConfig

__all__ = ["run_cost", "cost_rows", "to_markdown", "to_csv", "write_outputs",
           "PARTIAL_PRODUCTS_NOTE"]

PARTIAL_PRODUCTS_NOTE = ("Partial-product model: (m+1)² bits for m stored significand bits — "
                         "FP32 576, FP16/TF32 121, BF16 64; ratios are taken within a group "
                         "against its smallest unit.  Δ LUT4/MAC: the LUT4 a unit adds to its "
                         "baseline unit, per MAC per cycle of the unit.")


def run_cost(config: NPUConfig, target: str, *, units=None, seeds=(1,), jobs: int = 1,
             pnr: bool = True, workdir, freq_mhz=None, timeout=None,
             placer=None, router=None, progress: bool = True) -> list[dict]:
    """Synthesize ``units`` (default: all registered) alone; one record per unit."""
    from npugen.flows.units import UNITS, get_unit

    names = list(UNITS) if units is None else list(units)
    for name in names:
        get_unit(name)
    options = {"workdir": str(workdir), "seeds": list(seeds), "pnr": pnr,
               "freq_mhz": freq_mhz, "timeout": timeout, "placer": placer, "router": router}
    tasks = [(i, config, {}, name, target, options) for i, name in enumerate(names)]
    records = run_points(tasks, jobs=jobs, progress=progress, desc="cost")
    for record in records:
        record["label"] = record["unit"]
    return records


def cost_rows(records, config: NPUConfig) -> list[dict]:
    """Flat table rows with LUTs per MAC and the partial-product comparison."""
    from npugen.flows.units import get_unit, unit_macs

    rows = []
    for record in records:
        name = record["unit"]
        unit = get_unit(name)
        result = record.get("result")
        row = {"unit": name, "description": unit.description, "status": record["status"],
               "luts": None, "ffs": None, "dsps": None, "brams": None, "fmax_mhz": None,
               "macs_per_cycle": None, "luts_per_mac": None, "extra_luts_per_mac": None,
               "baseline": unit.baseline, "group": unit.group,
               "partial_products": unit.partial_products, "model_ratio": None,
               "measured_ratio": None, "error": record.get("error") or ""}
        try:
            row["macs_per_cycle"] = unit_macs(name, config)
        except (ValueError, TypeError) as e:
            row["error"] = row["error"] or f"MACs per cycle: {e}"
        if result is not None:
            row.update(luts=result["luts"], ffs=result["ffs"], dsps=result["dsps"],
                       brams=result["brams"], fmax_mhz=result["fmax_mhz"])
            if row["macs_per_cycle"]:
                row["luts_per_mac"] = round(result["luts"] / row["macs_per_cycle"], 2)
        rows.append(row)

    by_unit = {row["unit"]: row for row in rows}
    for row in rows:
        base = by_unit.get(row["baseline"]) if row["baseline"] else None
        if base is not None and row["luts"] is not None and base["luts"] is not None \
                and row["macs_per_cycle"]:
            row["extra_luts_per_mac"] = round((row["luts"] - base["luts"]) /
                                              row["macs_per_cycle"], 2)

    groups: dict[str, list] = {}
    for row in rows:
        if row["group"] and row["partial_products"]:
            groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        reference = min(members, key=lambda r: r["partial_products"])
        for row in members:
            row["model_ratio"] = round(row["partial_products"] / reference["partial_products"], 3)
            if row["luts"] is not None and reference["luts"]:
                row["measured_ratio"] = round(row["luts"] / reference["luts"], 3)
    return rows


_COLUMNS = [("unit", "unit"), ("luts", "LUT4"), ("ffs", "FF"), ("dsps", "DSP"),
            ("brams", "BRAM"), ("fmax_mhz", "Fmax (MHz)"), ("macs_per_cycle", "MACs/cycle"),
            ("luts_per_mac", "LUT4/MAC"), ("extra_luts_per_mac", "Δ LUT4/MAC"),
            ("partial_products", "pp model"),
            ("model_ratio", "model ratio"), ("measured_ratio", "measured ratio"),
            ("status", "status")]


def _cell(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(rows, *, target: str, config_label: str = "") -> str:
    lines = [f"## Unit cost on {target}" + (f" ({config_label})" if config_label else ""), "",
             "| " + " | ".join(title for _, title in _COLUMNS) + " |",
             "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key, _ in _COLUMNS) + " |")
    lines += ["", PARTIAL_PRODUCTS_NOTE]
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed:
        lines.append(f"- {row['unit']} failed: {row['error']}")
    lines += ["", "Units:"]
    lines += [f"- `{row['unit']}`: {row['description']}" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows) -> str:
    from npugen.flows.dse import to_csv as _to_csv
    return _to_csv(rows)


def write_outputs(rows, *, target, config, json_path=None, md_path=None, csv_path=None,
                  records=None):
    """Write the cost table where asked; returns the Markdown text."""
    markdown = to_markdown(rows, target=target, config_label=f"hash {config.config_hash()}")
    if json_path is not None:
        doc = {"target": target, "config": config.to_dict(), "rows": rows,
               "tool_versions": next((r["result"]["tool_versions"] for r in records or ()
                                      if r.get("result")), None)}
        _atomic_write(Path(json_path), json.dumps(doc, indent=2) + "\n")
    if md_path is not None:
        _atomic_write(Path(md_path), markdown)
    if csv_path is not None:
        _atomic_write(Path(csv_path), to_csv(rows))
    return markdown
