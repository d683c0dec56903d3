"""`train --slurm` through submitit's local executor: preempted, it checkpoints, requeues and ends exactly."""

import json
import os
import signal
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from clipsae.store.writer import write_store
from tests.conftest import submitted_job, wait_until

ARGS = ["--expansion", "4", "--k", "4", "--steps", "3000", "--batch-size", "64", "--checkpoint-every", "100",
        "--device", "cpu", "--threads", "1"]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(d.name))
    return found


def _steps_logged(out: Path) -> int:
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return max((json.loads(x)["step"] for x in lines if x.strip()), default=0)


def test_a_preempted_job_requeues_and_ends_with_the_uninterrupted_weights(tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    write_store(store, {"x": rng.standard_normal((4000, 16)).astype(np.float32)}, [f"k{i}" for i in range(4000)],
                attrs={"model": "test"})
    out, logs = tmp_path / "run", tmp_path / "logs"
    code, stdout, err = run_cli("train", "--store", store, *ARGS, "--out", out, "--slurm", "--slurm-cluster", "local",
                                "--slurm-logs", logs)
    assert code == 0, err
    job = int(submitted_job(stdout))  # the local executor's job id is its controller's pid
    wait_until(lambda: _steps_logged(out) >= 300 and _children(job), "the job to train 300 steps")
    # What Slurm sends before it preempts a job or its time runs out (submitit asks for USR2).
    for task in _children(job):
        os.kill(task, signal.SIGUSR2)
    # submitit writes the result file once the job's function has returned.
    wait_until(lambda: any((logs / str(job)).glob("*_result.pkl")), "the requeued job to finish")
    log = "".join(p.read_text() for p in (logs / str(job)).glob("*_log.out"))
    assert "checkpointed at step" in log

    code, _, err = run_cli("train", "--store", store, *ARGS, "--out", tmp_path / "ref", "--quiet")
    assert code == 0, err
    got, want = load_file(out / "sae_weights.safetensors"), load_file(tmp_path / "ref" / "sae_weights.safetensors")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
