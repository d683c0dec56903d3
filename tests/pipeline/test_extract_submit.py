"""`extract --slurm-array N` through submitit's local executor: the same store as one process writes."""

import numpy as np

from clipsae.pipeline.config import ExtractConfig, ModelConfig
from clipsae.pipeline.extract import run_extract
from clipsae.store.reader import ActivationStore, complete_parts
from tests.conftest import wait_until

ARGS = ["--model", "RN50", "--layers", "layer4,attnpool", "--tokens", "all", "--batch-size", "4", "--quiet"]


def test_an_array_of_two_tasks_writes_the_store_one_process_writes(shards, tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    code, out, err = run_cli("extract", *ARGS, "--shards", shards, "--store", store, "--slurm-array", "2",
                             "--slurm-cluster", "local", "--slurm-logs", tmp_path / "logs")
    assert code == 0, err
    assert "2 array tasks" in out and str(tmp_path / "logs") in out
    # The root and the plan exist before any task has run.
    assert ActivationStore.open(store).config["model"] == "RN50"
    code, out, _ = run_cli("status", "--store", store)
    assert "of 3 parts complete" in out and "plan: 2 array tasks" in out
    wait_until(lambda: len(complete_parts(store)) == 3, "both array tasks to finish")

    ref = tmp_path / "ref.zarr"
    run_extract(ExtractConfig(ModelConfig("RN50"), ["layer4", "attnpool"], str(shards), str(ref), batch_size=4,
                              progress=False))
    a, b = ActivationStore.open(store), ActivationStore.open(ref)
    assert [p.name for p in a.parts] == [p.name for p in b.parts]
    np.testing.assert_array_equal(a.keys(), b.keys())
    for h in b.hooks:
        np.testing.assert_array_equal(a.read(h, slice(None)), b.read(h, slice(None)))
    code, out, _ = run_cli("status", "--store", store)
    assert "3 of 3 parts complete, 0 in progress, 0 interrupted, 0 missing" in out


def test_more_tasks_than_tars_is_refused_before_submitting(shards, tmp_path, run_cli):
    code, _, err = run_cli("extract", *ARGS, "--shards", shards, "--store", tmp_path / "s.zarr", "--slurm-array", "4",
                           "--slurm-cluster", "local", "--slurm-logs", tmp_path / "logs")
    assert code == 1 and "more tasks than the 3 tars" in err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "s.zarr").exists()
