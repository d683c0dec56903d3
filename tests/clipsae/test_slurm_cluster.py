"""Submissions against a real one-node Slurm cluster (tests/slurm_cluster.py): arrays equal one local
process, a killed task is finished by the same command, a signalled training job is requeued by Slurm
and ends exactly, a universal SAE's job writes what a local run writes, and a submission sbatch refuses
leaves nothing behind."""

import json
import math
import os
import signal
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.store import codes as codes_store
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.parts import complete_names
from clipsae.store.reader import complete_parts
from clipsae.store.writer import write_store
from tests.analysis.helpers import make_store, sae_weights, saelens_dir
from tests.conftest import assert_same_store, submitted_job, wait_until
from tests.train.planted import planted_pair

pytestmark = pytest.mark.long_file

# One cluster per test process: pytest-xdist's --dist loadfile (pyproject.toml) runs this file on one worker.
EXTRACT = ["--model", "RN50", "--layers", "layer4,attnpool", "--tokens", "all", "--batch-size", "2", "--quiet"]


def _job_gone_or_done(cluster, job: str) -> bool:
    states = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.split()
    return not any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") for s in states)


def test_an_extract_array_of_two_tasks_equals_one_local_process(on_slurm, shards, rn50_store, tmp_path, run_cli,
                                                                monkeypatch):
    store = tmp_path / "s.zarr"
    code, out, err = run_cli("extract", *EXTRACT, "--shards", shards, "--store", store, "--slurm-array", "2",
                             "--slurm-logs", tmp_path / "logs")
    assert code == 0, err
    job = submitted_job(out)
    wait_until(lambda: len(complete_parts(store)) == 3, "both Slurm array tasks to finish")
    wait_until(lambda: _job_gone_or_done(on_slurm, job), "the array to leave the queue")
    assert_same_store(store, rn50_store)
    monkeypatch.chdir(tmp_path.parent)  # the plan names its logs absolutely: status reads the same from anywhere
    code, out, _ = run_cli("status", "--store", store)
    assert f"plan: 2 array tasks of job {job}, logs in {tmp_path / 'logs' / job}" in out


def test_a_task_killed_mid_part_is_finished_by_the_same_command(on_slurm, shards, rn50_store, tmp_path, run_cli):
    store, args = tmp_path / "s.zarr", ["extract", *EXTRACT, "--shards", shards]
    args += ["--store", str(tmp_path / "s.zarr"), "--slurm-array", "1", "--slurm-logs", str(tmp_path / "logs")]
    code, out, err = run_cli(*args)
    assert code == 0, err
    first = store / "parts" / "00000"

    def writer_pid():
        attrs = zb.read_attributes(first) or {}
        return None if attrs.get("complete") is not False else attrs["started_by"]["pid"]

    wait_until(lambda: writer_pid() is not None, "the task to begin its first part", every_s=0.01)
    os.kill(writer_pid(), signal.SIGKILL)
    wait_until(lambda: _job_gone_or_done(on_slurm, submitted_job(out)), "Slurm to end the killed task")
    assert len(complete_parts(store)) < 3
    code, status, _ = run_cli("status", "--store", store)
    assert "1 interrupted" in status and "00000" in status

    code, out, err = run_cli(*args)
    assert code == 0, err
    wait_until(lambda: len(complete_parts(store)) == 3, "the second submission to finish the store")
    wait_until(lambda: _job_gone_or_done(on_slurm, submitted_job(out)), "the second task to leave the queue")
    assert_same_store(store, rn50_store)


TRAIN = ["--expansion", "4", "--k", "4", "--steps", "2500", "--batch-size", "64", "--checkpoint-every", "100",
         "--device", "cpu", "--threads", "1"]


def _steps_logged(out) -> int:
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return max((json.loads(x)["step"] for x in lines if x.strip()), default=0)


def test_a_training_job_signalled_by_scancel_is_requeued_and_ends_exactly(on_slurm, tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    write_store(store, {"x": rng.standard_normal((4000, 16)).astype(np.float32)}, [f"k{i}" for i in range(4000)],
                attrs={"model": "test"})
    out, logs = tmp_path / "run", tmp_path / "logs"
    code, stdout, err = run_cli("train", "--store", store, *TRAIN, "--out", out, "--slurm", "--slurm-logs", logs)
    assert code == 0, err
    job = submitted_job(stdout)
    wait_until(lambda: _steps_logged(out) >= 300, "the job to train 300 steps")
    # What Slurm sends ahead of a preemption or the time limit, sent as an operator would.
    on_slurm.run("scancel", "--signal=USR2", job)

    def pending_after_requeue() -> bool:
        got = on_slurm.run("squeue", "-h", "-j", job, "-o", "%T %r", check=False).stdout.split()
        return got[:1] == ["PENDING"]

    wait_until(pending_after_requeue, "Slurm to requeue the job")
    # A requeued job waits in BeginTime for minutes; an operator may release it. Not within the second
    # of the requeue: slurmd revokes the killed run's credential by the second, and a new start inside
    # that second is refused as "Job credential revoked" and the job ended.
    requeued_at = time.time()
    wait_until(lambda: time.time() > math.floor(requeued_at) + 1.5, "the second of the requeue to pass")
    on_slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_until(lambda: (out / "sae_weights.safetensors").is_file() and _job_gone_or_done(on_slurm, job),
               "the requeued job to finish")
    log = "".join(p.read_text() for p in (logs / job).glob(f"{job}_*_log.*"))
    assert "checkpointed at step" in log and "resumed from step" in log

    code, _, err = run_cli("train", "--store", store, *TRAIN, "--out", tmp_path / "ref", "--quiet")
    assert code == 0, err
    got, want = load_file(out / "sae_weights.safetensors"), load_file(tmp_path / "ref" / "sae_weights.safetensors")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_universal_training_job_writes_what_a_local_run_writes(on_slurm, tmp_path, run_cli):
    a, b, *_ = planted_pair(tmp_path, n_images=1024, drop_b=24)
    args = ["--universal", f"{a}:x,{b}:x", "--arch", "batchtopk", "--expansion", "2", "--k", "3", "--steps", "200",
            "--batch-size", "64", "--device", "cpu", "--threads", "1"]
    out, logs = tmp_path / "run", tmp_path / "logs"
    code, stdout, err = run_cli("train", *args, "--out", out, "--slurm", "--slurm-logs", logs)
    assert code == 0, err
    job = submitted_job(stdout)
    wait_until(lambda: _job_gone_or_done(on_slurm, job), "the universal job to leave the queue")
    assert (out / "universal.json").is_file(), "".join(p.read_text() for p in (logs / job).glob(f"{job}_*_log.err"))
    code, _, err = run_cli("train", *args, "--out", tmp_path / "ref", "--quiet")
    assert code == 0, err
    got, want = json.loads((out / "universal.json").read_text()), json.loads((tmp_path / "ref" / "universal.json").read_text())
    assert got["models"] == want["models"] and got["images"] == want["images"] == 1000
    for m in ("0", "1"):
        got, want = (load_file(d / "models" / m / "sae_weights.safetensors") for d in (out, tmp_path / "ref"))
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"model {m}: {name}")


def test_an_encode_array_equals_a_local_encode(on_slurm, tmp_path, run_cli):
    store = make_store(tmp_path / "s.zarr", n_parts=3, per_part=5)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 4}, sae_weights(1))
    code, out, err = run_cli("encode", "--store", store, "--sae", sae, "--device", "cpu", "--slurm-array", "2",
                             "--slurm-logs", tmp_path / "logs")
    assert code == 0, err
    path = codes_store.codes_dir(store, "sae")
    wait_until(lambda: len(complete_names(path / layout.PARTS)) == 3, "both Slurm array tasks to finish")
    wait_until(lambda: _job_gone_or_done(on_slurm, submitted_job(out)), "the array to leave the queue")
    run_encode(EncodeConfig(store, sae, name="one", device="cpu", progress=False))
    want_path = codes_store.codes_dir(store, "one")
    arrays = [f.parent for f in sorted(want_path.rglob("zarr.json")) if zb.read_metadata(f.parent)["node_type"] == "array"]
    assert arrays
    for a in arrays:
        rel = a.relative_to(want_path)
        np.testing.assert_array_equal(zb.Array(path / rel).read_all(), zb.Array(a).read_all(), err_msg=str(rel))


@pytest.mark.parametrize("extra, refusal", [
    (["--slurm-partition", "nope"], "invalid partition specified: nope"),
    (["--slurm-gpus", "1"], "Invalid generic resource (gres) specification"),
    (["--slurm-extra", "mem=100000000"], "Requested node configuration is not available"),
])
def test_a_submission_sbatch_refuses_leaves_no_store_and_says_so_once(on_slurm, shards, tmp_path, run_cli,
                                                                      extra, refusal):
    store = tmp_path / "s.zarr"
    code, out, err = run_cli("extract", *EXTRACT, "--shards", shards, "--store", store, "--slurm-array", "2",
                             "--slurm-logs", tmp_path / "logs", *extra)
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: the submission failed")
    assert refusal.lower() in err.lower()
    said = err.split("sbatch: error:")[1:]
    assert said and len(set(said)) == len(said)  # each of sbatch's lines once, nothing repeated
    assert not store.exists()


def test_an_encode_submission_sbatch_refuses_leaves_no_codes(on_slurm, tmp_path, run_cli):
    store = make_store(tmp_path / "s.zarr", n_parts=2, per_part=3)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 4}, sae_weights(1))
    code, _, err = run_cli("encode", "--store", store, "--sae", sae, "--slurm-array", "2", "--slurm-partition", "nope",
                           "--slurm-logs", tmp_path / "logs")
    assert code == 1 and "invalid partition" in err.lower()
    assert not codes_store.codes_dir(store, "sae").exists()
