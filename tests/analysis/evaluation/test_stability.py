"""Seed stability counts learned directions: over live latents only, beside the overlap the initial weights had;
compare puts the seeds of one SAE on one row with means, standard deviations and that stability."""

import csv
import re

import numpy as np
import pytest
import torch

from clipsae.analysis.evaluation.stability import matched_share, seed_stability
from clipsae.store.writer import write_store
from tests.train.planted import planted_dictionary


def _unit(n, d, seed):
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


def test_a_permuted_copy_is_fully_matched_and_random_directions_are_not():
    a = _unit(40, 64, 0)
    assert matched_share(a, a[torch.randperm(40, generator=torch.Generator().manual_seed(1))]) == 1.0
    assert matched_share(a, _unit(40, 64, 2)) == 0.0


def test_latents_left_at_a_shared_initialisation_do_not_count_as_stable():
    # Two SAEs from the same draws: 30 latents never trained (still the initial rows), 10 trained apart.
    init = _unit(40, 64, 0)
    a, b = init.clone(), init.clone()
    a[:10], b[:10] = _unit(10, 64, 1), _unit(10, 64, 2)
    live = np.zeros(40, bool)
    live[:10] = True
    assert matched_share(a, b) == 0.75  # every row: the untrained ones match themselves
    st = seed_stability([a, b], [live, live], [init, init])
    assert st == {"stability": 0.0, "stability_init": 1.0, "live": 10.0}


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """Three seeds of one TopK SAE trained in one run on a planted store, and each one's codes."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.train.configure import configure_training
    from clipsae.train.trainer import run_train

    tmp = tmp_path_factory.mktemp("seeds")
    acts, _ = planted_dictionary(1024, 2, 16, 32, mean_active=2, seed=3)
    store = tmp / "s.zarr"
    write_store(store, {"a": acts}, [f"k{i:05d}" for i in range(len(acts))], attrs={"model": "planted"})
    plan = configure_training(store, expansion="4", k="3", batch_size=128, steps=300, seed="0,1,2", out=tmp / "run")
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    for s in range(3):
        run_encode(EncodeConfig(store, tmp / "run" / f"topk-x4-k3-seed{s}", name=f"s{s}", progress=False))
    return store


def test_compare_puts_the_seeds_of_one_sae_on_one_row(seeds_run, tmp_path):
    from clipsae.analysis.commands import run_compare

    lines = run_compare([(seeds_run, f"s{s}") for s in range(3)], tmp_path, "max", 10, None, "cpu")
    with open(tmp_path / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["codes"] == "s0+s1+s2" and rows[0]["seeds"] == "3"
    assert float(rows[0]["fvu_std"]) > 0 and float(rows[0]["l0_std"]) >= 0
    stability, init = float(rows[0]["stability"]), float(rows[0]["stability_init"])
    assert stability > init and init < 0.05  # learned, not inherited from the draws
    assert any("3 seeds of one SAE in one row" in line for line in lines)
    assert " ± " in (tmp_path / "compare.md").read_text()


def test_one_seed_of_it_stays_a_row_of_its_own(seeds_run, tmp_path):
    from clipsae.analysis.commands import run_compare

    run_compare([(seeds_run, "s0")], tmp_path, "max", 10, None, "cpu")
    with open(tmp_path / "compare.csv") as fh:
        row = next(csv.DictReader(fh))
    assert row["seeds"] == "1" and row["fvu_std"] == "" and row["stability"] == ""


def test_sae_compare_says_what_two_seeds_initial_weights_shared(seeds_run, run_cli, tmp_path):
    run = seeds_run.parent / "run"
    code, out, err = run_cli("sae", "compare", run / "topk-x4-k3-seed0", run / "topk-x4-k3-seed1", "--out", tmp_path)
    assert code == 0, err
    # 64 random directions in 16 dimensions: a pair or so lands above 0.7 by chance.
    assert re.search(r"their initial weights: one-to-one matches above 0\.7: [0-4]\.\d% \(different draws", out), out
    code, out, err = run_cli("sae", "compare", run / "topk-x4-k3-seed0", run / "topk-x4-k3-seed0", "--out", tmp_path / "same")
    assert code == 0 and "their initial weights: one-to-one matches above 0.7: 100.0% (drawn from the same seed" in out
