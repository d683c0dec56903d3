"""Training with torchrun: two processes (gloo, CPU) train what one process trains on the same global batches,
a store's SAEs and a universal SAE's alike."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsae.store.writer import write_store
from clipsae.train.configure import configure_training
from clipsae.train.data import ShuffleStream
from clipsae.train.trainer import Run
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.long_file

STEPS, BATCH = 120, 128
UNIVERSAL_STEPS = 60  # past the first logging step (50), where the dead latents AuxK revives are first found
ARGS = ["--expansion", "4", "--k", "4", "--l1", "0.5", "--steps", str(STEPS), "--batch-size", str(BATCH),
        "--checkpoint-every", "20", "--device", "cpu", "--threads", "1", "--holdout", "0.05", "--lr", "3e-3", "--quiet"]


def _torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "clipsae", "train", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Six parts (six chunks) of 700 images × 4 tokens, d = 16."""
    path = tmp_path_factory.mktemp("ranks") / "s.zarr"
    rng = np.random.default_rng(0)
    for p in range(6):
        write_store(path, {"x": rng.standard_normal((700, 4, 16)).astype(np.float32)},
                    [f"k{p}-{i}" for i in range(700)], attrs={"model": "test"}, part=f"p{p}")
    return path


# One sweep of both: TopK normalises by the batch's total variance, relu by its row count, and both must be
# the global batch's.
SWEEP = ["--arch", "topk,relu"]


@pytest.fixture(scope="module")
def two_processes(store, tmp_path_factory) -> Path:
    """The run directory of an uninterrupted two-process run of the sweep."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    p = _torchrun("--store", store, *ARGS, *SWEEP, "--out", out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return out


def _saes(out: Path) -> list[dict]:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["saes"]


def _one_process(plan) -> list[dict]:
    """The state dicts of the plan's SAEs trained by one process on the global batches of two: each step
    process 0's share, then process 1's."""
    run = Run(plan.cfg, plan.store, plan.held)
    run.initialise()
    shares = [ShuffleStream(run.train_source, BATCH // 2, plan.cfg.buffer_rows, plan.cfg.seed, rank=r, world=2)
              for r in range(2)]
    sums = [{} for _ in run.saes]
    try:
        for _ in range(plan.cfg.steps):
            run.train_step(torch.cat([s.next_batch() for s in shares]).float() * run.scale, sums)
            run.step += 1
            if run.step % plan.cfg.log_every == 0:  # where the trainer finds the dead latents AuxK revives
                run.refresh_dead()
    finally:
        for s in shares:
            s.close()
        run.stream.close()
    return [sae.state_dict() for sae in run.saes]


def _assert_same_weights(one: list[dict], two: list[dict]) -> None:
    assert len(one) == len(two)
    for mine, theirs in zip(one, two):
        for name, value in mine.items():
            torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def test_two_processes_train_what_one_trains_on_the_same_global_batches(store, two_processes, tmp_path):
    plan = configure_training(store, arch="topk,relu", expansion="4", k="4", l1="0.5", steps=STEPS,
                              batch_size=BATCH, device="cpu", holdout=0.05, lr=3e-3, out=tmp_path / "one")
    assert sorted(s.arch for s in plan.cfg.saes) == ["relu", "topk"]
    _assert_same_weights(_one_process(plan), _saes(two_processes))
    assert sorted(p.name for p in two_processes.glob("stream-*")) == [f"stream-rank0-step{STEPS}.pt",
                                                                      f"stream-rank1-step{STEPS}.pt"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """a.zarr (d 16) in six parts and b.zarr (d 12) in two, of the same 1,800 images × 2 tokens; b holds them in
    reverse order, so that every row of b is found by key."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(1)
    keys = [f"k{i:04d}" for i in range(1800)]
    x_a = rng.standard_normal((1800, 2, 16)).astype(np.float32)
    x_b = (x_a[..., :12] + 0.5 * rng.standard_normal((1800, 2, 12))).astype(np.float32)
    for p in range(6):
        write_store(root / "a.zarr", {"x": x_a[p * 300:(p + 1) * 300]}, keys[p * 300:(p + 1) * 300],
                    attrs={"model": "test-a"}, part=f"p{p}")
    for p in range(2):
        rows = np.arange(1800)[::-1][p * 900:(p + 1) * 900]
        write_store(root / "b.zarr", {"x": x_b[rows]}, [keys[i] for i in rows], attrs={"model": "test-b"},
                    part=f"p{p}")
    return root / "a.zarr", root / "b.zarr"


# The universal loss divides each model's errors by that model's total variance over the global batch; both
# selections are swept in the one pass.
def test_two_processes_train_a_universal_sae_as_one_process_does(pair, tmp_path):
    a, b = pair
    out = tmp_path / "two"
    p = _torchrun("--universal", f"{a}:x,{b}:x", "--arch", "topk", "--expansion", "4", "--k", "3",
                  "--selection", "global,own", "--steps", UNIVERSAL_STEPS, "--batch-size", BATCH, "--checkpoint-every", 40,
                  "--device", "cpu", "--threads", 1, "--holdout", 0.05, "--lr", 3e-3, "--quiet", "--out", out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    plan = configure_training(None, universal=f"{a}:x,{b}:x", arch="topk", expansion="4", k="3",
                              selection="global,own", steps=UNIVERSAL_STEPS, batch_size=BATCH, device="cpu", holdout=0.05,
                              lr=3e-3, out=tmp_path / "one")
    assert len(plan.cfg.saes) == 2
    _assert_same_weights(_one_process(plan), _saes(out))
    for label in ("topk-x4-k3", "topk-x4-k3-own"):
        assert (out / label / "universal.json").is_file() and (out / label / "models" / "1").is_dir()


def _rank_pids(agent: int) -> dict[int, int]:
    """{rank: pid} of the training processes torchrun's agent ``agent`` started (Linux /proc)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == agent:
            ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
            if ranks:
                found[ranks[0]] = int(d.name)
    return found


def _checkpoint_step(out: Path) -> int:
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return max((json.loads(x)["step"] for x in lines if '"checkpoint"' in x), default=0)


def test_kill_9_of_one_process_resumes_with_the_same_command_and_no_other_count(store, two_processes, tmp_path, run_cli):
    out = tmp_path / "run"
    p = _torchrun("--store", store, *ARGS, *SWEEP, "--out", out)
    wait_until(lambda: p.poll() is not None or (_checkpoint_step(out) >= 40 and len(_rank_pids(p.pid)) == 2),
               "the two processes to checkpoint step 40")
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(_rank_pids(p.pid)[1], signal.SIGKILL)
    p.communicate(timeout=300)
    assert p.returncode != 0
    assert _checkpoint_step(out) < STEPS

    code, _, err = run_cli("train", "--store", store, *ARGS, *SWEEP, "--out", out)
    said = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert code == 1 and "checkpointed by 2 training processes" in err and len(said) == 1

    p = _torchrun("--store", store, *ARGS, *SWEEP, "--out", out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert len(_saes(out)) == len(_saes(two_processes)) == 2
    for resumed, clean in zip(_saes(out), _saes(two_processes)):
        for name in clean:
            torch.testing.assert_close(resumed[name], clean[name], rtol=0, atol=0, msg=name)
