"""`encode --slurm-array N` through submitit's local executor: the codes one process writes."""

import numpy as np

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.store import codes as codes_store
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.parts import complete_names
from tests.analysis.helpers import make_store, sae_weights, saelens_dir
from tests.conftest import wait_until

TOPK = {"architecture": "topk", "k": 4}


def _arrays(path):
    return {str(f.parent.relative_to(path)): zb.Array(f.parent).read_all() for f in sorted(path.rglob("zarr.json"))
            if zb.read_metadata(f.parent).get("node_type") == "array"}


def test_an_array_of_two_tasks_writes_the_codes_one_process_writes(tmp_path, run_cli):
    store = make_store(tmp_path / "s.zarr", n_parts=3, per_part=5)
    sae = saelens_dir(tmp_path / "sae", TOPK, sae_weights(1))
    code, out, err = run_cli("encode", "--store", store, "--sae", sae, "--device", "cpu", "--slurm-array", "2",
                             "--slurm-cluster", "local", "--slurm-logs", tmp_path / "logs")
    assert code == 0, err
    assert "2 array tasks" in out
    path = codes_store.codes_dir(store, "sae")
    wait_until(lambda: len(complete_names(path / layout.PARTS)) == 3, "both array tasks to finish")
    run_encode(EncodeConfig(store, sae, name="one", device="cpu", progress=False))
    got, want = _arrays(path), _arrays(codes_store.codes_dir(store, "one"))
    assert got.keys() == want.keys() and got
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    code, out, _ = run_cli("status", "--store", store)
    assert "codes sae: 3 of 3 parts complete" in out and "codes one: 3 of 3 parts complete" in out


def test_more_tasks_than_parts_is_refused_before_submitting(tmp_path, run_cli):
    store = make_store(tmp_path / "s.zarr", n_parts=2, per_part=3)
    sae = saelens_dir(tmp_path / "sae", TOPK, sae_weights(1))
    code, _, err = run_cli("encode", "--store", store, "--sae", sae, "--slurm-array", "3", "--slurm-cluster", "local",
                           "--slurm-logs", tmp_path / "logs")
    assert code == 1 and "more tasks than the 2 store parts" in err
    assert not (tmp_path / "logs").exists() and codes_store.codes_names(store) == []
