"""The NPU's DMA on Verilator (cocotb + cocotbext-axi AxiRam) against the ISA reference.

Random LOAD and STORE instructions (2-D strides including negative ones, gathers,
broadcasts, windows, unaligned spans, every target) run back to back on 32-, 64- and
128-bit buses under AXI idle/back-pressure patterns; every scratchpad write is compared
with ``dma_sim.load_words`` and the whole host memory with ``dma_sim.store_writes``
applied to its initial contents (so nothing outside the stored bytes may change).
Errors (windows, alignment, exact address arithmetic, AXI error responses), aborts in
the middle of a transfer and the instruction fetch (prefetch, faults past the window,
flush) are checked on the same models, and contiguous transfers report their beats per
cycle.  Seeds are printed; a run reproduces from its parameters.
"""

import random

import pytest

from npugen.golden.config import NPUConfig, PRESETS
from npugen.hw.dma_read import (BurstPlanner, InstructionFetch, LoadEngine, ReadMux,
                                ReadPortSignature, load_word_bits)
from npugen.hw.dma_write import StoreEngine, WritePortSignature
from npugen.hw.isa import NPUError
from npugen.sim.dma_sim import SparseBytes, load_words, run_dma, store_writes, target_lanes

#: One model per bus width: byte words smaller than a beat (32), the default preset
#: (64), odd word sizes (128: ACT 3 bytes, WGT 5, PARAM 20).
CONFIGS = {
    32: PRESETS["tiny"],
    64: PRESETS["default"],
    128: NPUConfig(rows=3, cols=5, acc_depth=16, out_fifo_depth=16, spmm_lanes=2,
                   axi_data_bits=128, act_sp_depth=64, wgt_sp_depth=64, out_sp_depth=512,
                   param_sp_depth=16),
}

READ_REGION = (0x0001_0F00, 0x0001_5100)     # crosses four 4 KB boundaries
WRITE_REGION = (0x0003_0F00, 0x0003_5100)
PROGRAM_REGION = (0x0005_0000, 0x0005_2000)
OUT_WORDS = 64
FULL = 0xFFFF
BAD_HOST = int(NPUError.BAD_HOST_ADDRESS.value)
MISALIGNED = int(NPUError.MISALIGNED.value)
AXI_READ = int(NPUError.AXI_READ_ERROR.value)
AXI_WRITE = int(NPUError.AXI_WRITE_ERROR.value)


# ---- stimulus ------------------------------------------------------------------------

def random_memory(rng, *regions):
    """Random contents for every 4 KB block touching ``regions``."""
    blocks = {}
    for lo, hi in regions:
        for block in range(lo >> 12 << 12, hi, 4096):
            blocks[block] = bytes(rng.getrandbits(8) for _ in range(4096))
    return blocks


def load_footprint(f):
    """Lowest and highest+1 byte read by LOAD ``f`` (only words inside the windows)."""
    e = 4 if f["target"] == 3 else 1
    span = (f["lanes"] - 1) * f["lane_stride"] + e
    starts = [f["addr"] + o * f["outer_stride"] + i * f["inner_stride"]
              for o in range(f["outer_count"]) for i in range(f["inner_count"])
              if f["inner_lo"] <= i < f["inner_hi"] and f["outer_lo"] <= o < f["outer_hi"]]
    return (min(starts), max(starts) + span) if starts else None


def random_load(rng, config, region=READ_REGION):
    targets = [0, 1, 3] + ([2] if config.sparse_2_4 else [])
    while True:
        target = rng.choice(targets)
        e = 4 if target == 3 else 1
        word_lanes = target_lanes(config, target)
        lanes = rng.choice([word_lanes, word_lanes, rng.randint(1, word_lanes)])
        kind = rng.choice(["contiguous", "contiguous", "contiguous", "gather", "broadcast"])
        lane_stride = {"contiguous": e, "broadcast": 0,
                       "gather": e * rng.randint(2, 24) if e == 4 else rng.randint(2, 300)}[kind]
        span = (lanes - 1) * lane_stride + e
        inner_count = rng.choice([1, 2, rng.randint(1, 12), rng.randint(1, 40)])
        outer_count = rng.choice([1, 1, rng.randint(1, 4)])
        inner_stride = rng.choice([span, span, span, -span, 0, e * rng.randint(-80, 80)])
        outer_stride = rng.choice([inner_count * inner_stride, e * rng.randint(-600, 600)])
        windows = rng.random() < 0.3
        f = dict(target=target, sp_addr=rng.randrange(0, 0xF000), addr=0,
                 inner_count=inner_count, outer_count=outer_count,
                 inner_stride=inner_stride, outer_stride=outer_stride,
                 lane_stride=lane_stride, lanes=lanes, pad=rng.randint(-128, 127),
                 inner_lo=rng.randint(0, 2) if windows else 0,
                 inner_hi=rng.randint(1, inner_count + 1) if windows else FULL,
                 outer_lo=rng.randint(0, 1) if windows else 0,
                 outer_hi=rng.randint(1, outer_count + 1) if windows else FULL)
        f["addr"] = rng.randrange(region[0], region[1]) & ~(e - 1)
        lo_hi = load_footprint(f)
        if lo_hi is None or (region[0] <= lo_hi[0] and lo_hi[1] <= region[1]):
            return f


def random_store(rng, config, region=WRITE_REGION):
    while True:
        e = rng.choice([1, 4])
        lanes = rng.choice([config.cols, config.cols, rng.randint(1, config.cols)])
        nbytes = lanes * e
        inner_count = rng.choice([1, 2, rng.randint(1, 10), rng.randint(1, 30)])
        outer_count = rng.choice([1, 1, rng.randint(1, 3)])
        if inner_count * outer_count > OUT_WORDS:
            continue
        inner_stride = rng.choice([nbytes, nbytes, nbytes, -nbytes, nbytes + e * rng.randint(1, 9),
                                   e * rng.randint(-50, 50)])
        outer_stride = rng.choice([inner_count * inner_stride, e * rng.randint(-700, 700)])
        f = dict(elem_bytes=e, sp_addr=rng.randrange(0, OUT_WORDS - inner_count * outer_count + 1),
                 addr=rng.randrange(region[0], region[1]) & ~(e - 1), inner_count=inner_count,
                 outer_count=outer_count, inner_stride=inner_stride, outer_stride=outer_stride,
                 lanes=lanes)
        starts = [f["addr"] + o * outer_stride + i * inner_stride
                  for o in range(outer_count) for i in range(inner_count)]
        if region[0] <= min(starts) and max(starts) + nbytes <= region[1]:
            return f


def random_program(rng, count):
    return [rng.getrandbits(256) for _ in range(count)]


def program_blocks(base, program, blocks):
    """Write 32-byte instructions at ``base`` into the 4 KB ``blocks`` dict."""
    memory = SparseBytes(blocks)
    for n, bits in enumerate(program):
        memory.write(base + 32 * n, bits.to_bytes(32, "little"))
    blocks.update({a: bytes(b) for a, b in memory.blocks.items()})


# ---- checks ----------------------------------------------------------------------------

def word_mask(config, target):
    return (1 << (target_lanes(config, target) * (32 if target == 3 else 8))) - 1


def got_words(config, rec):
    return [(t, a, d & word_mask(config, t)) for t, a, d, _ in rec["writes"]]


def expected_loads(config, memory, loads, window):
    words, errors = [], []
    for f in loads:
        w, error = load_words(config, memory, f, *window)
        words += w
        if error:
            errors.append(error)
            break
    return words, errors


def check_words(config, rec, expected, where):
    got = got_words(config, rec)
    for n, (g, x) in enumerate(zip(got, expected)):
        assert g == x, f"{where}: scratchpad write {n} is {g}, expected {x}"
    assert len(got) == len(expected), f"{where}: {len(got)} writes, expected {len(expected)}"


class Host:
    """The reference host memory through the phases of a run."""

    def __init__(self, blocks):
        self.memory = SparseBytes(blocks)
        self.may = {}        # address → set of values a byte may hold (aborted stores)

    def store(self, config, out, fields, window):
        writes, error = store_writes(config, out, fields, *window)
        for addr, data in writes:
            self.memory.write(addr, data)
        return writes, error

    def check(self, run):
        got = SparseBytes(run.memory)
        blocks = set(self.memory.blocks) | set(got.blocks)
        for block in sorted(blocks):
            want = self.memory.read(block, 4096)
            have = got.read(block, 4096)
            for k in range(4096):
                if want[k] != have[k] and have[k] not in self.may.get(block + k, ()):
                    raise AssertionError(f"host byte 0x{block + k:08x} is 0x{have[k]:02x}, "
                                         f"expected 0x{want[k]:02x}; work dir {run.work_dir}")


def check_fetch(rec, memory, start, window, count):
    """Items until ``count`` or a fault: the program's bits with their pc, and a
    BAD_HOST_ADDRESS item at the first instruction outside ``window``."""
    for n, (bits, pc, fault) in enumerate(rec["fetched"]):
        want_pc = start + 32 * n
        assert pc == want_pc, f"fetch item {n}: pc 0x{pc:x}, expected 0x{want_pc:x}"
        if not (window[0] <= pc and pc + 32 <= window[1]):
            assert fault == BAD_HOST and bits == 0, f"fetch item {n} at 0x{pc:x}: {fault}"
            assert n == len(rec["fetched"]) - 1
            return
        want = int.from_bytes(memory.read(pc, 32), "little")
        assert fault == 0 and bits == want, f"fetch item {n} at 0x{pc:x} differs"
    assert len(rec["fetched"]) == count


# ---- parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ReadMux, InstructionFetch, LoadEngine, StoreEngine])
def test_config_must_be_an_npuconfig(cls):
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 'tiny'$"):
        cls("tiny")


@pytest.mark.parametrize("args, message", [
    ((3, 9), r"^data_bytes must be a power of two in 4\.\.128, not 3$"),
    ((256, 9), r"^data_bytes must be a power of two in 4\.\.128, not 256$"),
    ((8, 0), r"^len_bits must be an integer in 1\.\.16, not 0$"),
    ((8, True), r"^len_bits must be an integer in 1\.\.16, not True$"),
    ((8, 9, 0), r"^max_segments must be an integer in 1\.\.256, not 0$"),
])
def test_burst_planner_parameters(args, message):
    with pytest.raises(ValueError, match=message):
        BurstPlanner(*args)


def test_port_signatures():
    tiny, default = PRESETS["tiny"], PRESETS["default"]
    assert ReadPortSignature(tiny) == ReadPortSignature(tiny.replace(rows=4))
    assert ReadPortSignature(tiny) != ReadPortSignature(default)
    assert repr(ReadPortSignature(tiny)) == "ReadPortSignature(data_width=32)"
    assert repr(WritePortSignature(default)) == "WritePortSignature(data_width=64)"
    assert WritePortSignature(default).members["wstrb"].shape == 8
    assert load_word_bits(default) == 8 * 32 and load_word_bits(CONFIGS[128]) == 5 * 32
    assert load_word_bits(NPUConfig(rows=64, cols=2, sparse_2_4=True)) == 128 * 8


def test_reference_matches_golden_model():
    """``dma_sim.load_words``/``store_writes`` and ``dma_sim.encode`` agree with the golden
    NPU model and instruction encoder on random LOADs and STOREs (errors included)."""
    from npugen.golden import isa as gisa
    from npugen.golden.npu_model import HostMemory, NPUModel
    from npugen.hw.isa import load_layout, store_layout
    from npugen.sim.dma_sim import encode

    seed = 601
    print(f"seed={seed}")
    rng = random.Random(seed)
    base, size = READ_REGION[0] & ~0xFFF, 0x40000
    outcomes = {"load": set(), "store": set()}
    for width, config in CONFIGS.items():
        depth = {0: config.act_sp_depth, 1: config.wgt_sp_depth, 2: config.wgt_sp_depth,
                 3: config.param_sp_depth}
        model = NPUModel(config)
        for n in range(120):
            blocks = random_memory(rng, (base, base + 0x8000))
            memory = HostMemory(base, size)
            for block, content in blocks.items():
                memory.write(block, content)
            store = n % 3 == 2
            if store:
                f = random_store(rng, config, (READ_REGION[0], READ_REGION[1] + 0x800))
                instr = gisa.Store(**f)
                assert encode(store_layout, f).to_bytes(32, "little") == gisa.encode(instr)
                out = {sp: rng.getrandbits(32 * config.cols) for sp in range(OUT_WORDS)}
                for sp, word in out.items():
                    model.sp["OUT"][sp] = [((word >> (32 * j)) & 0xFFFFFFFF) - (
                        (word >> (32 * j + 31) & 1) << 32) for j in range(config.cols)]
            else:
                f = random_load(rng, config, (READ_REGION[0], READ_REGION[1] + 0x800))
                if f["inner_count"] * f["outer_count"] > depth[f["target"]]:
                    continue
                f["sp_addr"] = 0
                instr = gisa.Load(**f)
                assert encode(load_layout, f).to_bytes(32, "little") == gisa.encode(instr)
            program = base + size - 64
            memory.write(program, gisa.assemble([instr, gisa.End()]))
            window = (READ_REGION[0] + rng.choice([0, 0x100]), READ_REGION[1])
            result = model.run(memory, program, read_window=(window[0], base + size),
                               write_window=window)
            reference = SparseBytes(blocks)
            if store:
                writes, error = store_writes(config, out, f, *window)
                for addr, data in writes:
                    reference.write(addr, data)
                got = memory.read(READ_REGION[0], READ_REGION[1] - READ_REGION[0])
                assert got == reference.read(READ_REGION[0], len(got)), (width, n, f)
            else:
                words, error = load_words(config, reference, f, window[0], base + size)
                name = ("ACT", "WGT", "WIDX", "PARAM")[f["target"]]
                bits = 32 if f["target"] == 3 else 8
                for target, sp, word in words:
                    lanes = [((word >> (bits * j)) & ((1 << bits) - 1))
                             for j in range(target_lanes(config, target))]
                    lanes = [v - (1 << bits) if v >> (bits - 1) else v for v in lanes]
                    if target == 2:
                        lanes = [v & 3 for v in lanes]
                    assert list(model.sp[name][sp]) == lanes, (width, n, f, sp)
            assert int(result.error) == error, (width, n, f, result)
            outcomes["store" if store else "load"].add(error)
    assert outcomes == {"load": {0, BAD_HOST}, "store": {0, BAD_HOST}}


# ---- random transfers -------------------------------------------------------------------

RANDOM_RUNS = [(32, "random", 101), (32, "bursty", 102), (64, "none", 201),
               (64, "slow_data", 202), (64, "random", 203), (128, "slow_addr", 301),
               (128, "bursty", 302)]


@pytest.mark.parametrize("width, pattern, seed", RANDOM_RUNS)
def test_random_loads_and_stores(width, pattern, seed, tmp_path):
    print(f"seed={seed} width={width} pattern={pattern}")
    config = CONFIGS[width]
    rng = random.Random(seed)
    blocks = random_memory(rng, READ_REGION, WRITE_REGION)
    program = random_program(rng, 24)
    program_blocks(PROGRAM_REGION[0] + 0x40, program, blocks)
    host = Host(blocks)
    read_window = (READ_REGION[0], PROGRAM_REGION[1])
    write_window = WRITE_REGION
    phases, expect = [], []
    for n in range(3):
        out = {sp: rng.getrandbits(32 * config.cols) for sp in range(OUT_WORDS)}
        loads = [random_load(rng, config) for _ in range(8)]
        stores = [random_store(rng, config) for _ in range(6)]
        phase = dict(read_window=read_window, write_window=write_window, out=out,
                     loads=loads, stores=stores)
        if n == 1:   # the fetch unit shares the read port with the loads
            phase["fetch"] = dict(start=PROGRAM_REGION[0] + 0x40, count=len(program))
        phases.append(phase)
        words, errors = expected_loads(config, host.memory, loads, read_window)
        assert not errors
        for f in stores:
            assert host.store(config, out, f, write_window)[1] == 0
        expect.append(words)
    run = run_dma(config, phases, seed=seed, pattern=pattern, memory=blocks,
                  work_dir=tmp_path)
    for n, (phase, rec, words) in enumerate(zip(phases, run.phases, expect)):
        where = f"phase {n} (seed {seed}, {run.work_dir})"
        check_words(config, rec, words, where)
        assert len(rec["load_done"]) == len(phase["loads"]), where
        assert len(rec["store_done"]) == len(phase["stores"]), where
        assert not rec["load_errors"] and not rec["store_errors"], where
        assert rec["busy"] == (0, 0), where
        if "fetch" in phase:
            check_fetch(rec, host.memory, phase["fetch"]["start"], read_window, len(program))
    host.check(run)


def test_back_to_back_with_command_idles(tmp_path):
    """Commands arrive with random gaps; loads read what earlier phases stored."""
    seed = 401
    print(f"seed={seed}")
    config = CONFIGS[32]
    rng = random.Random(seed)
    blocks = random_memory(rng, READ_REGION, WRITE_REGION)
    host = Host(blocks)
    phases, expect = [], []
    window = (WRITE_REGION[0], WRITE_REGION[1])
    for n in range(4):
        out = {sp: rng.getrandbits(32 * config.cols) for sp in range(OUT_WORDS)}
        if n % 2 == 0:
            stores = [random_store(rng, config) for _ in range(8)]
            for f in stores:
                host.store(config, out, f, window)
            phases.append(dict(read_window=window, write_window=window, out=out,
                               stores=stores))
            expect.append([])
        else:
            loads = [random_load(rng, config, WRITE_REGION) for _ in range(10)]
            phases.append(dict(loads=loads))
            expect.append(expected_loads(config, host.memory, loads, window)[0])
    run = run_dma(config, phases, seed=seed, pattern="random", memory=blocks, cmd_idle=0.5,
                  work_dir=tmp_path)
    for n, (rec, words) in enumerate(zip(run.phases, expect)):
        check_words(config, rec, words, f"phase {n} (seed {seed})")
    host.check(run)


# ---- errors, aborts, fetch ---------------------------------------------------------------

def contiguous_load(config, target, addr, count, stride=None, **extra):
    lanes = target_lanes(config, target)
    e = 4 if target == 3 else 1
    f = dict(target=target, sp_addr=0x100, addr=addr, inner_count=count, outer_count=1,
             inner_stride=lanes * e if stride is None else stride, outer_stride=0,
             lane_stride=e, lanes=lanes, pad=-7, inner_lo=0, inner_hi=FULL, outer_lo=0,
             outer_hi=FULL)
    f.update(extra)
    return f


def contiguous_store(config, elem_bytes, addr, count, stride=None, sp_addr=0, **extra):
    nbytes = config.cols * elem_bytes
    f = dict(elem_bytes=elem_bytes, sp_addr=sp_addr, addr=addr, inner_count=count,
             outer_count=1, inner_stride=nbytes if stride is None else stride,
             outer_stride=0, lanes=config.cols)
    f.update(extra)
    return f


def footprint_bytes(config, out, f):
    """``{address: new byte}`` of every byte STORE ``f`` writes (no window)."""
    writes, _ = store_writes(config, out, f, 0, 1 << 40)
    return {a + k: b for a, data in writes for k, b in enumerate(data)}


@pytest.mark.parametrize("width", [32, 64, 128])
def test_errors_aborts_and_fetch(width, tmp_path):
    seed = 500 + width
    print(f"seed={seed} width={width}")
    config = CONFIGS[width]
    rng = random.Random(seed)
    blocks = random_memory(rng, READ_REGION, WRITE_REGION, PROGRAM_REGION)
    host = Host(blocks)
    act, lanes, param_bytes = target_lanes(config, 0), config.cols, 4 * config.cols
    r_lo, r_hi = READ_REGION
    w_lo, w_hi = WRITE_REGION
    out = {sp: rng.getrandbits(32 * config.cols) for sp in range(OUT_WORDS)}
    everything = (0, 0xFFFF_FFFF)
    phases = []          # (phase, check)

    def load_phase(loads, code, window=READ_REGION, errors=(), **extra):
        words, got_errors = expected_loads(config, host.memory, loads, window)
        assert got_errors == ([code] if code else [])
        phase = dict(read_window=window, errors=list(errors), loads=loads, **extra)

        def check(rec, where):
            if errors:     # a bus error: a prefix of the words, never the failing one
                written = got_words(config, rec)
                assert written == words[:len(written)], where
                assert len(written) < len(words) + 1, where
            else:
                check_words(config, rec, words, where)
            assert [c for c, _ in rec["load_errors"]] == ([code] if code else []), where
            assert len(rec["load_done"]) == len(loads) - (1 if code else 0), where
            if code and rec["load_done"]:    # earlier instructions finish first
                assert rec["load_done"][-1][0] < rec["load_errors"][0][1], where
            assert rec["busy"] == (0, 0), where
        phases.append((phase, check))

    def store_phase(stores, code, window=WRITE_REGION, errors=(), partial=False):
        """``partial``: the last store may be written in part (bus error, abort)."""
        refused = set()
        for lo, hi in errors:
            refused |= set(range(lo, hi))
        for n, f in enumerate(stores):
            if partial and n == len(stores) - 1:
                for a, b in footprint_bytes(config, out, f).items():
                    if a not in refused:
                        host.may.setdefault(a, set()).add(b)
            else:
                assert host.store(config, out, f, window)[1] == (
                    code if n == len(stores) - 1 else 0)
        phase = dict(write_window=window, errors=list(errors), out=out, stores=stores)

        def check(rec, where):
            assert [c for c, _ in rec["store_errors"]] == ([code] if code else []), where
            assert len(rec["store_done"]) == len(stores) - (1 if code else 0), where
            assert rec["busy"] == (0, 0), where
        phases.append((phase, check))

    # LOAD: a good load, then one whose fourth word crosses READ_LIMIT.
    load_phase([random_load(rng, config),
                contiguous_load(config, 0, r_hi - 3 * act - 1, 6)], BAD_HOST)
    # ... whose third word starts below READ_BASE (negative inner stride).
    load_phase([contiguous_load(config, 1, r_lo + 2 * lanes - 1, 5, stride=-lanes)], BAD_HOST)
    # PARAM: the second word is not 4-aligned; a lane stride of 6 misaligns lane 1.
    load_phase([contiguous_load(config, 3, r_lo + 0x40, 3, stride=param_bytes + 2)],
               MISALIGNED)
    load_phase([contiguous_load(config, 3, r_lo + 0x40, 2, lane_stride=6)], MISALIGNED)
    # Window before alignment: a PARAM word both misaligned and outside.
    load_phase([contiguous_load(config, 3, r_hi - 2, 1)], BAD_HOST)
    # Exact arithmetic over a window of all memory: below 0 and above 2**32 - 1 are
    # outside, although they wrap into the window modulo 2**32.
    load_phase([contiguous_load(config, 0, 0x10000, 2, stride=0x7FFF_FFFF, outer_count=3,
                                outer_stride=-0x8000_0000)], BAD_HOST, window=everything)
    load_phase([contiguous_load(config, 1, 0xFFFF_FF00, 3, stride=0x80)], BAD_HOST,
               window=everything)
    # Four pad words, then a word at 2**33 + 0x1000 (in the window modulo 2**33).
    load_phase([contiguous_load(config, 0, 0x1004, 5, stride=0x7FFF_FFFF, inner_lo=4)],
               BAD_HOST, window=everything)
    # Words ending exactly at READ_LIMIT and starting exactly at READ_BASE are inside.
    load_phase([contiguous_load(config, 0, r_hi - 3 * act, 3),
                contiguous_load(config, 3, r_hi - 2 * param_bytes, 2),
                contiguous_load(config, 1, r_lo + 2 * lanes, 3, stride=-lanes)], 0)
    # Pad words are never checked: word 0 lies below READ_BASE but is outside the window.
    load_phase([contiguous_load(config, 0, r_lo - 16, 4, stride=16, inner_lo=1)], 0)
    # An SLVERR inside word 9 of a long load.
    bad = r_lo + 0x200 + 9 * act + act // 2
    load_phase([contiguous_load(config, 0, r_lo + 0x200, 40)], 0, errors=[(bad, bad + 1)])
    phases[-1][0]["expect_read_error"] = True
    # Abort in the middle of a long load; the unit then runs the next phase.
    long_load = contiguous_load(config, 3, r_lo + 0x400, 60)
    load_phase([long_load], 0, abort=dict(unit="load", after_beats=20))
    load_phase([random_load(rng, config) for _ in range(4)], 0)

    # STORE: words before the failing one are written, nothing at or after it.
    store_phase([random_store(rng, config),
                 contiguous_store(config, 1, w_hi - 3 * lanes - 1, 6)], BAD_HOST)
    store_phase([contiguous_store(config, 1, w_hi - 3 * lanes, 3),
                 contiguous_store(config, 4, w_lo + 8 * lanes, 3, stride=-4 * lanes)], 0)
    store_phase([contiguous_store(config, 4, w_lo + 0x100, 3, stride=4 * lanes + 2)],
                MISALIGNED)
    store_phase([contiguous_store(config, 4, w_hi - 2, 1)], BAD_HOST)
    store_phase([contiguous_store(config, 1, 0x20, 2, stride=-0x40)], BAD_HOST,
                window=everything)
    store_phase([contiguous_store(config, 4, 0xFFFF_FFF0 - 4 * lanes, 3, stride=8 * lanes)],
                BAD_HOST, window=everything)
    bad = w_lo + 0x300 + 10 * 4 * lanes + 2
    store_phase([contiguous_store(config, 4, w_lo + 0x300, 40)], 0, errors=[(bad, bad + 1)],
                partial=True)
    store_phase([contiguous_store(config, 4, w_lo + 0x800, 60, sp_addr=2)], 0, partial=True)
    phases[-1][0]["abort"] = dict(unit="store", after_beats=15)
    store_phase([random_store(rng, config) for _ in range(4)], 0)

    # Fetch: past the window (the program crosses a 4 KB boundary), a flush with a full
    # prefetch buffer and a restart elsewhere, an SLVERR, a start outside the window.
    p0 = PROGRAM_REGION[0] + 0xF80
    fetches = [(p0, (p0, p0 + 12 * 32), 20, {}),
               (p0, PROGRAM_REGION, 3, {"hold": 80}),
               (p0 + 0x400, PROGRAM_REGION, 6, {}),
               (p0 + 0x800, PROGRAM_REGION, 9, {"errors": [(p0 + 0x800 + 5 * 32 + 7,
                                                           p0 + 0x800 + 5 * 32 + 8)]}),
               (p0, (p0 + 32, p0 + 0x100), 4, {})]
    for start, window, count, extra in fetches:
        phase = dict(read_window=window, errors=extra.get("errors", []),
                     fetch=dict(start=start, count=count, hold=extra.get("hold", 0)))

        def check(rec, where, start=start, window=window, count=count, extra=extra):
            if extra.get("errors"):
                fetched = rec["fetched"]
                assert [f for _, _, f in fetched] == [0] * 5 + [AXI_READ], where
                check_fetch(dict(fetched=fetched[:5]), host.memory, start, window, 5)
                assert fetched[5][1] == start + 5 * 32, where
            else:
                check_fetch(rec, host.memory, start, window, count)
        phases.append((phase, check))

    run = run_dma(config, [p for p, _ in phases], seed=seed, pattern="random", memory=blocks,
                  work_dir=tmp_path)
    assert len(run.phases) == len(phases)
    for n, ((phase, check), rec) in enumerate(zip(phases, run.phases)):
        where = f"phase {n} (seed {seed}, {run.work_dir})"
        if phase.get("expect_read_error"):
            assert [c for c, _ in rec["load_errors"]] == [AXI_READ], where
            written = got_words(config, rec)
            want = expected_loads(config, host.memory, phase["loads"], READ_REGION)[0]
            assert written == want[:len(written)] and len(written) <= 9, where
            assert not rec["load_done"] and rec["busy"] == (0, 0), where
            continue
        if "abort" in phase and phase["abort"]["unit"] == "load":
            written = got_words(config, rec)
            want = expected_loads(config, host.memory, phase["loads"], READ_REGION)[0]
            assert written == want[:len(written)] and 0 < len(written) < len(want), where
            assert not rec["load_done"] and not rec["load_errors"], where
            assert rec["busy"] == (0, 0), where
            continue
        if "abort" in phase:
            assert not rec["store_done"] and not rec["store_errors"], where
            assert 15 <= rec["end"][2] - rec["start"][2] < 60 * 4 * lanes // (width // 8), where
            assert rec["busy"] == (0, 0), where
            continue
        if phase.get("errors") and "stores" in phase:
            assert [c for c, _ in rec["store_errors"]] == [AXI_WRITE], where
            assert not rec["store_done"] and rec["busy"] == (0, 0), where
            continue
        check(rec, where)
    host.check(run)


# ---- throughput ----------------------------------------------------------------------------

def throughput_phases(config):
    """``(name, phase, bytes per word, bus direction)`` of long contiguous transfers."""
    nbytes = config.axi_data_bits // 8
    r_base, w_base = READ_REGION[0] + 0x100, WRITE_REGION[0] + 0x100
    words = {t: max(16, 512 * nbytes // (target_lanes(config, t) * (4 if t == 3 else 1)))
             for t in (0, 1, 3)}
    words = {t: min(n, (READ_REGION[1] - r_base) // (target_lanes(config, t) *
                                                      (4 if t == 3 else 1)) - 1)
             for t, n in words.items()}
    out_words = min(config.out_sp_depth, 256)
    cases = []
    for name, t, offset in (("ACT", 0, 0), ("WGT", 1, 0), ("PARAM", 3, 0),
                            ("ACT unaligned", 0, 1)):
        f = contiguous_load(config, t, r_base + offset, words[t])
        cases.append((f"load {name}", dict(loads=[f]), target_lanes(config, t) *
                      (4 if t == 3 else 1), 0))
    per = max(1, words[0] // 8)
    cases.append(("8 loads ACT back to back",
                  dict(loads=[contiguous_load(config, 0, r_base + n * per * target_lanes(config, 0),
                                              per) for n in range(8)]),
                  target_lanes(config, 0), 0))
    out = {sp: (sp * 0x9E3779B97F4A7C15) % (1 << (32 * config.cols)) for sp in range(out_words)}
    for name, e, offset in (("int32", 4, 0), ("int8", 1, 0),
                            ("int32 unaligned", 4, 4 if nbytes > 4 else 0)):
        f = contiguous_store(config, e, w_base + offset, out_words)
        cases.append((f"store {name}", dict(stores=[f]), config.cols * e, 1))
    cases[0][1].update(read_window=READ_REGION, write_window=WRITE_REGION, out=out)
    return cases


@pytest.mark.parametrize("width", [32, 64, 128])
def test_contiguous_throughput(width, tmp_path):
    """Beats per cycle of long contiguous transfers with an always-ready memory, from the
    command accepted to ``done``; aligned transfers stream at ≥ 0.9 beat (or, for words
    smaller than a beat, ≥ 0.9 word) per cycle."""
    config = CONFIGS[width]
    nbytes = width // 8
    cases = throughput_phases(config)
    blocks = random_memory(random.Random(7), READ_REGION)
    run = run_dma(config, [phase for _, phase, _, _ in cases], seed=7, memory=blocks,
                  work_dir=tmp_path)
    print(f"\nDMA throughput, {width}-bit bus ({config.rows}x{config.cols}"
          f"{', 2:4' if config.sparse_2_4 else ''}):")
    for (name, phase, word_bytes, direction), rec in zip(cases, run.phases):
        done = rec["load_done" if direction == 0 else "store_done"]
        accept = rec["load_accept" if direction == 0 else "store_accept"]
        n_instr = len(phase.get("loads", phase.get("stores", [])))
        assert len(done) == n_instr and not rec["load_errors"] and not rec["store_errors"]
        cycles = done[-1][0] - accept[0][0]
        beats = done[-1][1 + direction] - accept[0][1 + direction]
        words = sum(f["inner_count"] for f in phase.get("loads", phase.get("stores", [])))
        print(f"  {name:26s} {word_bytes:4d} B/word {beats:5d} beats {cycles:5d} cycles  "
              f"{beats / cycles:.3f} beats/cycle  {words / cycles:.3f} words/cycle")
        power_of_two = word_bytes & (word_bytes - 1) == 0
        if power_of_two and "unaligned" not in name:
            if word_bytes >= nbytes:
                assert beats / cycles >= 0.9, name
            else:
                assert words / cycles >= 0.9, name


@pytest.mark.parametrize("width", [32, 64])
def test_many_short_instructions(width, tmp_path):
    """60 one-word LOADs and 60 one-word STOREs back to back: one done each, in order."""
    seed = 700 + width
    print(f"seed={seed}")
    config = CONFIGS[width]
    rng = random.Random(seed)
    blocks = random_memory(rng, READ_REGION, WRITE_REGION)
    host = Host(blocks)
    out = {sp: rng.getrandbits(32 * config.cols) for sp in range(OUT_WORDS)}
    loads, stores = [], []
    for _ in range(60):
        f = random_load(rng, config)
        f.update(inner_count=1, outer_count=1)
        loads.append(f)
        g = random_store(rng, config)
        g.update(inner_count=1, outer_count=1)
        stores.append(g)
        host.store(config, out, g, WRITE_REGION)
    words = expected_loads(config, host.memory, loads, READ_REGION)[0]
    phase = dict(read_window=READ_REGION, write_window=WRITE_REGION, out=out, loads=loads,
                 stores=stores)
    run = run_dma(config, [phase], seed=seed, memory=blocks, work_dir=tmp_path)
    rec = run.phases[0]
    check_words(config, rec, words, f"seed {seed}")
    assert len(rec["load_done"]) == 60 and len(rec["store_done"]) == 60
    # Each LOAD's done follows its word's write.
    writes = [cycle for *_, cycle in rec["writes"]]
    assert all(d[0] > w for d, w in zip(rec["load_done"], writes))
    host.check(run)
