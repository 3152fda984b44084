import dataclasses
import json
import os
import re
import subprocess
import sys
from itertools import permutations

import pytest

from npugen.golden.config import (DATAFLOWS, PRECISION_MODES, PRESETS, ConfigError,
                                  NPUConfig)

KNOWN = ", ".join(sorted(f.name for f in dataclasses.fields(NPUConfig)))


# -- validation: one case per parameter and kind of mistake ------------------------------

BAD_VALUES = [
    # rows
    ("rows", 0, ValueError, r"^rows must be an integer in 2\.\.64, not 0$"),
    ("rows", 1, ValueError, r"^rows must be an integer in 2\.\.64, not 1$"),
    ("rows", 65, ValueError, r"^rows must be an integer in 2\.\.64, not 65$"),
    ("rows", -8, ValueError, r"^rows must be an integer in 2\.\.64, not -8$"),
    ("rows", "8", TypeError, r"^rows must be an integer in 2\.\.64, not '8'$"),
    ("rows", 8.0, TypeError, r"^rows must be an integer in 2\.\.64, not 8\.0$"),
    ("rows", True, TypeError, r"^rows must be an integer in 2\.\.64, not True$"),
    # cols
    ("cols", 1, ValueError, r"^cols must be an integer in 2\.\.64, not 1$"),
    ("cols", 128, ValueError, r"^cols must be an integer in 2\.\.64, not 128$"),
    ("cols", None, TypeError, r"^cols must be an integer in 2\.\.64, not None$"),
    # dataflow
    ("dataflow", "output_stationary", ValueError,
     r"^dataflow must be one of weight_stationary, not 'output_stationary'$"),
    ("dataflow", "", ValueError, r"^dataflow must be one of weight_stationary, not ''$"),
    ("dataflow", 1, TypeError, r"^dataflow must be one of weight_stationary, not 1$"),
    # lane_bits
    ("lane_bits", 4, ValueError, r"^lane_bits must be the integer 8, not 4$"),
    ("lane_bits", 16, ValueError, r"^lane_bits must be the integer 8, not 16$"),
    ("lane_bits", "8", TypeError, r"^lane_bits must be the integer 8, not '8'$"),
    ("lane_bits", False, TypeError, r"^lane_bits must be the integer 8, not False$"),
    # acc_bits
    ("acc_bits", 17, ValueError, r"^acc_bits must be an integer in 18\.\.32, not 17$"),
    ("acc_bits", 33, ValueError, r"^acc_bits must be an integer in 18\.\.32, not 33$"),
    ("acc_bits", 32.0, TypeError, r"^acc_bits must be an integer in 18\.\.32, not 32\.0$"),
    # acc_depth
    ("acc_depth", 8, ValueError,
     r"^acc_depth must be a power of two in 16\.\.65536, not 8$"),
    ("acc_depth", 131072, ValueError,
     r"^acc_depth must be a power of two in 16\.\.65536, not 131072$"),
    ("acc_depth", 100, ValueError,
     r"^acc_depth must be a power of two in 16\.\.65536, not 100$"),
    ("acc_depth", "512", TypeError,
     r"^acc_depth must be a power of two in 16\.\.65536, not '512'$"),
    # out_fifo_depth
    ("out_fifo_depth", 2, ValueError,
     r"^out_fifo_depth must be a power of two in 4\.\.1024, not 2$"),
    ("out_fifo_depth", 2048, ValueError,
     r"^out_fifo_depth must be a power of two in 4\.\.1024, not 2048$"),
    ("out_fifo_depth", 24, ValueError,
     r"^out_fifo_depth must be a power of two in 4\.\.1024, not 24$"),
    ("out_fifo_depth", [32], TypeError,
     r"^out_fifo_depth must be a power of two in 4\.\.1024, not \[32\]$"),
    # modes
    ("modes", "int8", TypeError, r"^modes must be a list of mode names, not 'int8'$"),
    ("modes", None, TypeError, r"^modes must be a list of mode names, not None$"),
    ("modes", ["int3"], ValueError,
     r"^modes must contain only int8, int4, binary, bf16, not 'int3'$"),
    ("modes", [8], TypeError, r"^modes must contain only int8, int4, binary, bf16, not 8$"),
    ("modes", ["int8", "int8"], ValueError,
     r"^modes must not repeat a mode, not \['int8', 'int8'\]$"),
    ("modes", [], ValueError, r"^modes must include 'int8', not \[\]$"),
    # spmm_lanes
    ("spmm_lanes", 0, ValueError, r"^spmm_lanes must be an integer in 1\.\.64, not 0$"),
    ("spmm_lanes", 65, ValueError, r"^spmm_lanes must be an integer in 1\.\.64, not 65$"),
    ("spmm_lanes", 4.0, TypeError, r"^spmm_lanes must be an integer in 1\.\.64, not 4\.0$"),
    ("spmm_lanes", True, TypeError, r"^spmm_lanes must be an integer in 1\.\.64, not True$"),
    # sparse_2_4
    ("sparse_2_4", 1, TypeError, r"^sparse_2_4 must be a boolean, not 1$"),
    ("sparse_2_4", "yes", TypeError, r"^sparse_2_4 must be a boolean, not 'yes'$"),
    # host interface and scratchpads
    ("axi_data_bits", 48, ValueError,
     r"^axi_data_bits must be a power of two in 32\.\.256, not 48$"),
    ("axi_data_bits", 512, ValueError,
     r"^axi_data_bits must be a power of two in 32\.\.256, not 512$"),
    ("act_sp_depth", 32, ValueError,
     r"^act_sp_depth must be a power of two in 64\.\.65536, not 32$"),
    ("wgt_sp_depth", 1000, ValueError,
     r"^wgt_sp_depth must be a power of two in 64\.\.65536, not 1000$"),
    ("out_sp_depth", "2048", TypeError,
     r"^out_sp_depth must be a power of two in 64\.\.65536, not '2048'$"),
    ("param_sp_depth", 8, ValueError,
     r"^param_sp_depth must be a power of two in 16\.\.65536, not 8$"),
]


@pytest.mark.parametrize("name, value, exc, regex", BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _, _ in BAD_VALUES])
def test_bad_value(name, value, exc, regex):
    with pytest.raises(exc, match=regex):
        NPUConfig(**{name: value})


def test_every_parameter_is_checked():
    checked = {name for name, *_ in BAD_VALUES}
    assert checked == {f.name for f in dataclasses.fields(NPUConfig)}


@pytest.mark.parametrize("name, value", [
    ("rows", 2), ("rows", 64), ("cols", 2), ("cols", 64), ("acc_bits", 18),
    ("acc_bits", 32), ("acc_depth", 16), ("acc_depth", 65536),
    ("out_fifo_depth", 4), ("out_fifo_depth", 1024), ("rows", 3), ("cols", 7),
])
def test_range_limits_accepted(name, value):
    assert getattr(NPUConfig(**{name: value}), name) == value


def test_replace_validates():
    with pytest.raises(ValueError, match=r"^rows must be an integer in 2\.\.64, not 0$"):
        NPUConfig().replace(rows=0)
    assert NPUConfig().replace(rows=4).rows == 4


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NPUConfig().rows = 4


# -- presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, rows, cols", [
    ("tiny", 2, 2), ("default", 8, 8), ("large", 32, 32),
])
def test_preset_shape(name, rows, cols):
    config = NPUConfig.preset(name)
    assert (config.rows, config.cols) == (rows, cols)
    assert config is PRESETS[name]


def test_default_preset_is_default_config():
    # The presets build 2:4 sparsity; the bare dataclass leaves it out (odd rows allowed).
    assert NPUConfig.preset("default") == NPUConfig(sparse_2_4=True)


def test_sparse_2_4_validation():
    assert NPUConfig.preset("tiny").sparse_2_4 and not NPUConfig.preset("large").sparse_2_4
    assert NPUConfig(rows=3).sparse_2_4 is False
    with pytest.raises(TypeError, match=r"^sparse_2_4 must be a boolean, not 1$"):
        NPUConfig(sparse_2_4=1)
    with pytest.raises(ValueError, match=r"^sparse_2_4 needs an even number of rows \(a pair "
                                         r"of rows shares a group of 4 K elements\), not rows=3$"):
        NPUConfig(rows=3, sparse_2_4=True)
    config = NPUConfig(rows=4, sparse_2_4=True)
    assert NPUConfig.from_toml(config.to_toml()) == config
    assert config.config_hash() != config.replace(sparse_2_4=False).config_hash()


def test_preset_unknown():
    with pytest.raises(ValueError,
                       match=r"^preset must be one of tiny, default, large, not 'huge'$"):
        NPUConfig.preset("huge")


# -- TOML ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PRESETS))
def test_toml_round_trip(name, tmp_path):
    config = PRESETS[name]
    path = tmp_path / f"{name}.toml"
    config.save(path)
    assert path.read_text().startswith("[npu]\n")
    loaded = NPUConfig.load(path)
    assert loaded == config
    assert loaded.config_hash() == config.config_hash()
    assert NPUConfig.from_toml(config.to_toml()) == config


def test_toml_partial_table_uses_defaults():
    config = NPUConfig.from_toml('[npu]\nrows = 4\nmodes = ["int8"]\n')
    assert config == NPUConfig(rows=4, modes=("int8",))


def test_toml_unknown_key():
    with pytest.raises(ConfigError,
                       match=rf"^cfg\.toml: unknown parameter 'depth' \(known: {KNOWN}\)$"):
        NPUConfig.from_toml("[npu]\nrows = 4\ndepth = 8\n", source="cfg.toml")


def test_toml_unknown_top_level_key():
    with pytest.raises(ConfigError,
                       match=r"^cfg\.toml: unknown top-level key 'rows' "
                             r"\(parameters belong in the \[npu\] table\)$"):
        NPUConfig.from_toml("rows = 4\n[npu]\ncols = 4\n", source="cfg.toml")


def test_toml_malformed():
    with pytest.raises(ConfigError, match=r"^cfg\.toml: not valid TOML: .+$"):
        NPUConfig.from_toml("[npu\nrows = 4\n", source="cfg.toml")


def test_toml_missing_table():
    with pytest.raises(ConfigError, match=r"^cfg\.toml: missing \[npu\] table$"):
        NPUConfig.from_toml("[npus]\nrows = 4\n", source="cfg.toml")


def test_toml_table_not_a_table():
    with pytest.raises(ConfigError,
                       match=r"^cfg\.toml: expected a table of parameters, not 4$"):
        NPUConfig.from_toml("npu = 4\n", source="cfg.toml")


def test_toml_bad_value():
    with pytest.raises(ValueError, match=r"^cols must be an integer in 2\.\.64, not 100$"):
        NPUConfig.from_toml("[npu]\ncols = 100\n")


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[npu]\nrows = \n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid TOML: .+$"):
        NPUConfig.load(path)


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: cannot read "
                                          r"configuration: No such file or directory$"):
        NPUConfig.load(path)


def test_load_not_utf8(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"[npu]\nrows = \xff\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: cannot read "
                                          r"configuration: not UTF-8 text$"):
        NPUConfig.load(path)


def test_from_dict_unknown_key():
    with pytest.raises(ConfigError,
                       match=rf"^configuration: unknown parameter 'row' \(known: {KNOWN}\)$"):
        NPUConfig.from_dict({"row": 4})


# -- hashing and equality -----------------------------------------------------------------

def test_hash_equal_configs():
    a = NPUConfig(rows=4, cols=16, modes=("int8",))
    b = NPUConfig.from_dict({"cols": 16, "modes": ["int8"], "rows": 4})
    assert a == b
    assert hash(a) == hash(b)
    assert a.config_hash() == b.config_hash()


def test_hash_is_short_hex():
    assert re.fullmatch(r"[0-9a-f]{16}", NPUConfig().config_hash())


@pytest.mark.parametrize("change", [
    {"rows": 4}, {"cols": 4}, {"acc_bits": 24}, {"acc_depth": 1024},
    {"out_fifo_depth": 128},
])
def test_hash_differs(change):
    base = NPUConfig()
    assert base.replace(**change).config_hash() != base.config_hash()


def test_preset_hashes_distinct():
    hashes = {config.config_hash() for config in PRESETS.values()}
    assert len(hashes) == len(PRESETS)


def test_hash_stable_across_processes():
    code = ("import json; from npugen.golden.config import PRESETS; "
            "print(json.dumps({n: c.config_hash() for n, c in PRESETS.items()}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(out) == {n: c.config_hash() for n, c in PRESETS.items()}


# -- modes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("modes", list(permutations(PRECISION_MODES)))
def test_modes_canonical_order(modes):
    config = NPUConfig(modes=list(modes))
    assert config.modes == PRECISION_MODES
    assert isinstance(config.modes, tuple)
    assert config == NPUConfig(modes=PRECISION_MODES)
    assert config.to_dict()["modes"] == list(PRECISION_MODES)


def test_modes_list_and_tuple_equal():
    assert NPUConfig(modes=["int8"]) == NPUConfig(modes=("int8",))
    assert hash(NPUConfig(modes=["int8"])) == hash(NPUConfig(modes=("int8",)))
    assert NPUConfig(modes=["binary", "int8"]) == NPUConfig(modes=("int8", "binary"))


def test_known_names():
    assert "int8" in PRECISION_MODES
    assert "weight_stationary" in DATAFLOWS


# -- derived figures ------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("tiny", {"pes": 4, "peak_macs_per_cycle": {"int8": 4, "int4": 8, "binary": 32},
              "acc_buffer_bytes": 512,
              "weight_registers_bytes": 8, "max_tile_m": 64, "tile_k": 2, "tile_n": 2}),
    ("default", {"pes": 64, "peak_macs_per_cycle": {"int8": 64, "int4": 128, "binary": 512},
                 "acc_buffer_bytes": 16384,
                 "weight_registers_bytes": 128, "max_tile_m": 512, "tile_k": 8,
                 "tile_n": 8}),
    ("large", {"pes": 1024, "peak_macs_per_cycle": {"int8": 1024, "int4": 2048,
                                                     "binary": 8192},
               "acc_buffer_bytes": 131072, "weight_registers_bytes": 2048,
               "max_tile_m": 1024, "tile_k": 32, "tile_n": 32}),
])
def test_derived(name, expected):
    assert PRESETS[name].derived() == expected


def test_derived_follows_parameters():
    config = NPUConfig(rows=4, cols=16, acc_bits=24, acc_depth=256)
    derived = config.derived()
    assert derived["pes"] == 64
    assert derived["acc_buffer_bytes"] == 256 * 16 * 3
    assert derived["weight_registers_bytes"] == 2 * 64
    assert (derived["tile_k"], derived["tile_n"], derived["max_tile_m"]) == (4, 16, 256)


def test_derived_is_json():
    assert json.loads(json.dumps(NPUConfig().derived())) == NPUConfig().derived()


@pytest.mark.parametrize("depth, bits", [(16, 5), (512, 10), (65536, 17)])
def test_acc_row_bits(depth, bits):
    assert NPUConfig(acc_depth=depth).acc_row_bits == bits


def test_peak_macs_unbuilt_mode():
    with pytest.raises(ValueError,
                       match=r"^mode must be one of the built modes \['int8'\], not 'int4'$"):
        NPUConfig(modes=("int8",)).peak_macs_per_cycle("int4")
