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

__all__ = ["run_job", "run_testbench"]


def run_testbench(build_dir: Path, toplevel: str, test_module: str, testcase: str, job: dict,
                  *, seed: int, waves: bool = False, work_dir: Path | None = None,
                  prefix: str = "run-"):
    """Write ``job`` to a job file, run ``testcase`` of ``test_module`` on a built model.

    Returns ``(result, failure, work_dir)``: the testbench's record (its result file),
    the :class:`runner.SimulationFailed` of a failed run that still wrote its record (or
    ``None``) for the caller to judge, and the directory holding the job, result, log
    and waveforms (``work_dir``, else a new directory ``prefix...`` in ``build_dir``).
    Raises when there is no record.
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
    if not result_file.exists():
        raise failure or runner.SimulationFailed(f"no results in {work_dir}")
    with open(result_file, "rb") as f:
        return pickle.load(f), failure, work_dir


def run_job(build_dir: Path, toplevel: str, test_module: str, config, programs: list[dict], *,
            seed: int, idle: float, backpressure: float, fault: str | None, testcase: str,
            waves: bool = False, work_dir: Path | None = None, prefix: str = "run-",
            extra: dict | None = None):
    """Run ``testcase`` of ``test_module`` on a built model with ``programs``.

    Returns ``(result, failure, work_dir)``: the testbench's record, the
    :class:`runner.SimulationFailed` of a ``run_programs`` run whose record was still
    written (the caller decides whether the outputs explain it), and the directory
    holding the job, result, log and waveforms.  Raises when there is no record, and for
    any other testcase when it failed.  ``extra`` adds testbench-specific fields to the job.
    """
    job = {"config": config.to_dict(), "seed": seed, "idle": idle,
           "backpressure": backpressure, "fault": fault, "programs": programs,
           **(extra or {})}
    result, failure, work_dir = run_testbench(build_dir, toplevel, test_module, testcase, job,
                                              seed=seed, waves=waves, work_dir=work_dir,
                                              prefix=prefix)
    if failure is not None and testcase != "run_programs":
        raise failure
    return result, failure, work_dir
