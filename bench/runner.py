"""Run the load generator (`bench/loadgen.py`) as a child process and read its result."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ferry.bench.model import FlowResult, IdleResult, LoadSpec, Mode, read_json, write_json
from ferry.process import ManagedProcess, ProcessFailed

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_SLACK_S = 60.0


def time_budget_s(spec: LoadSpec) -> float:
    """How long a generator run may take before it is killed."""
    if spec.mode is Mode.IDLE:
        return START_SLACK_S + spec.connections / 200 + spec.duration_s + 10
    return START_SLACK_S + spec.warmup_s + spec.duration_s + spec.drain_s


def run_load(spec: LoadSpec, work_dir: Path, name: str) -> FlowResult | IdleResult:
    """Start the generator with `spec`, wait for it, return its result; it is always stopped."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / f"{name}.spec.json"
    result_path = work_dir / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    write_json(spec, spec_path)
    argv = [sys.executable, "-m", "ferry.bench.loadgen", str(spec_path), str(result_path)]
    process = ManagedProcess(f"loadgen {name}", argv, work_dir / f"{name}.loadgen.log", cwd=_PROJECT_ROOT)
    process.start()
    try:
        deadline = time.monotonic() + time_budget_s(spec)
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise ProcessFailed(f"load generator still running after {time_budget_s(spec):.0f} s:\n"
                                    f"{process.log_tail()}")
            time.sleep(0.05)
        if process.poll() != 0 or not result_path.exists():
            raise ProcessFailed(f"load generator exited with {process.poll()}:\n{process.log_tail()}")
    finally:
        process.stop()
    result = read_json(result_path)
    assert isinstance(result, (FlowResult, IdleResult))
    return result
