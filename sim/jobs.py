"""Host side of a cocotb testbench run: job file in, result file out.

The pytest side and the testbench exchange plain pickles: the job (configuration,
programs, seed, stream pause rates, ...) goes to the file named by ``NPUGEN_JOB``, the
testbench writes what it observed to ``NPUGEN_RESULT``.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

from . import runner

__all__ = ["run_job"]


def run_job(build_dir: Path, toplevel: str, test_module: str, job: dict, *, testcase: str,
            seed: int, waves: bool = False, work_dir: Path | None = None,
            prefix: str = "run-"):
    """Run ``testcase`` of ``test_module`` on a built model with ``job``.

    Returns ``(result, failure, work_dir)``: the testbench's record (``None`` if it wrote
    none), the :class:`runner.SimulationFailed` raised by the run (or ``None``) and the
    directory holding the job, result, log and waveforms.
    """
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=build_dir))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file, result_file = work_dir / "job.pkl", work_dir / "result.pkl"
    result_file.unlink(missing_ok=True)
    with open(job_file, "wb") as f:
        pickle.dump(job, f)
    failure = None
    try:
        runner.run(build_dir, toplevel, test_module, testcase=testcase,
                   env={"NPUGEN_JOB": str(job_file), "NPUGEN_RESULT": str(result_file)},
                   waves=waves, seed=seed, test_dir=work_dir)
    except runner.SimulationFailed as e:
        failure = e
    result = None
    if result_file.exists():
        with open(result_file, "rb") as f:
            result = pickle.load(f)
    return result, failure, work_dir
