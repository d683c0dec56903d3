"""The baselines: PCA equal to an SVD of the same rows, k-means finding planted clusters and resuming
where it was stopped, an untrained SAE exactly its initial weights; all read by encode as SAEs are."""

import numpy as np
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.store.writer import write_store
from clipsae.train import load_sae
from clipsae.train.configure import configure_training
from clipsae.train.init import initial_decoder
from clipsae.train.spec import SAESpec
from clipsae.train.trainer import TrainingStopped, run_train

D = 16


def _store(path, acts):
    write_store(path, {"a": acts}, [f"k{i:05d}" for i in range(len(acts))], attrs={"model": "planted"},
                dtype="float32")
    return path


def _train(store, out, stop=None, **options):
    plan = configure_training(store, out=out, holdout=0.0, batch_size=128, **options)
    return run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held, stop=stop)


@pytest.fixture(scope="module")
def correlated(tmp_path_factory):
    """512 images × 2 tokens of correlated Gaussian rows with distinct variances: 1,024 rows, 8 batches of 128."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((D, D)) * np.linspace(3, 0.2, D)[:, None]
    acts = (rng.standard_normal((512, 2, D)) @ mix + rng.standard_normal(D)).astype(np.float32)
    return _store(tmp_path_factory.mktemp("pca") / "s.zarr", acts), acts.reshape(-1, D)


def _rows_seen(store, steps: int) -> np.ndarray:
    """The rows the run's data stream served in ``steps`` batches: the same seeded stream, read again."""
    from clipsae.store.reader import ActivationStore
    from clipsae.train.data import RowSource, ShuffleStream

    plan = configure_training(store, out=None, holdout=0.0, batch_size=128, steps=steps)
    s = ActivationStore.open(store)
    src = RowSource(s, "a", s.token_indices("a", "all"), ~plan.held)
    stream = ShuffleStream(src, 128, plan.cfg.buffer_rows, plan.cfg.seed, plan.cfg.loader_threads)
    try:
        return np.concatenate([stream.next_batch().double().numpy() for _ in range(steps)])
    finally:
        stream.close()


def test_pca_directions_equal_an_svd_of_the_same_rows_up_to_sign(correlated, tmp_path):
    store, rows = correlated
    out = _train(store, tmp_path / "pca", arch="pca", expansion="1", k=str(D), steps=8).dirs["pca-k16"]
    sae = load_sae(out)
    x = _rows_seen(store, 8)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    cos = np.abs((sae.W_dec.double().numpy() * vt).sum(1))  # component i against singular vector i
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    np.testing.assert_allclose(sae.b_dec.double().numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
    z = sae.encode(torch.from_numpy(rows[:5]))
    np.testing.assert_allclose(z.numpy(), (rows[:5] - x.mean(0)) @ sae.W_dec.double().numpy().T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae(torch.from_numpy(rows)).numpy(), rows, atol=1e-3)  # all d components: exact


def test_pca_keeps_the_k_projections_of_largest_magnitude_with_their_sign(correlated, tmp_path):
    store, rows = correlated
    sae = load_sae(_train(store, tmp_path / "pca2", arch="pca", expansion="1", k="3", steps=8).dirs["pca-k3"])
    full = (torch.from_numpy(rows[:20]).double() - sae.b_dec.double()) @ sae.W_enc.double().T
    codes = sae.encode(torch.from_numpy(rows[:20])).double()
    keep = full.abs().topk(3, dim=1).indices
    assert torch.allclose(codes.gather(1, keep), full.gather(1, keep), atol=1e-4)
    assert ((codes != 0).sum(1) == 3).all() and (codes < 0).any()


@pytest.mark.parametrize("options, message", [({"expansion": "2"}, "use --expansion 1 .* or --latents N .*, not --expansion 2"),
                                              ({"expansion": "1", "k": "17"}, "--k 17 must be between 1 and the 16 components")])
def test_pca_width_and_k_are_checked(correlated, tmp_path, options, message):
    with pytest.raises(ClipsaeError, match=message):
        configure_training(correlated[0], arch="pca", out=tmp_path / "x", **options)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """16 well-separated centres, each token one of them plus small noise."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((16, D)) * 6
    which = rng.integers(0, 16, (1024, 2))
    acts = (centres[which] + 0.05 * rng.standard_normal((1024, 2, D))).astype(np.float32)
    return _store(tmp_path_factory.mktemp("kmeans") / "s.zarr", acts), acts.reshape(-1, D), centres


def test_kmeans_finds_planted_clusters_and_codes_each_token_by_one_centroid(clustered, tmp_path):
    store, rows, centres = clustered
    # Twice as many centroids as clusters, so that the seeding rows hold every cluster.
    sae = load_sae(_train(store, tmp_path / "km", arch="kmeans", expansion="2", steps=16).dirs["kmeans-x2"])
    x = torch.from_numpy(rows)
    codes = sae.encode(x)
    assert ((codes != 0).sum(1) == 1).all() and set(codes.unique().tolist()) == {0.0, 1.0}
    fvu = float(((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < 0.01
    nearest = torch.cdist(torch.from_numpy(centres).float(), sae.W_dec).min(1).values
    assert (nearest < 0.5).all()  # every planted centre has a centroid on it


def test_kmeans_stopped_and_resumed_ends_where_it_would_have(clustered, tmp_path):
    store, _, _ = clustered
    whole = load_sae(_train(store, tmp_path / "whole", arch="kmeans", expansion="1", steps=16).dirs["kmeans-x1"])
    asked = iter(range(100))
    with pytest.raises(TrainingStopped):
        _train(store, tmp_path / "split", stop=lambda: next(asked) >= 5, arch="kmeans", expansion="1", steps=16)
    resumed = load_sae(_train(store, tmp_path / "split", arch="kmeans", expansion="1", steps=16).dirs["kmeans-x1"])
    assert torch.equal(whole.W_dec, resumed.W_dec)


def test_an_untrained_sae_is_its_initial_weights(clustered, tmp_path):
    import json

    store, _, _ = clustered
    out = _train(store, tmp_path / "rand", arch="random", expansion="2", k="3", steps=4, seed="7").dirs["random-x2-k3"]
    sae = load_sae(out)
    scale = json.loads((out / "cfg.json").read_text())["clipsae"]["scale"]
    start = initial_decoder(SAESpec("random", D, 2, k=3, l1=0.0), 7)
    assert torch.allclose(sae.W_dec * scale, start, atol=1e-6) and (sae.architecture, sae.k) == ("topk", 3)


def test_baselines_go_through_encode_and_the_analyses(clustered, tmp_path, run_cli):
    store, _, _ = clustered
    run = _train(store, tmp_path / "b", arch="pca,kmeans", expansion="1", k="4", steps=16)
    for name, path in run.dirs.items():
        code, out, err = run_cli("encode", "--store", store, "--sae", path, "--name", name, "--quiet")
        assert code == 0, err
        code, _, err = run_cli("analyze", "top-images", "--store", store, "--codes", name, "-k", "3",
                               "--out", tmp_path / name)
        assert code == 0, err


def test_nmf_codes_are_saevs_semi_nmf_solution_and_reconstruct(correlated, tmp_path):
    from clipsae.train.model import SEMINMF_ITERATIONS, seminmf_solve

    store, rows = correlated
    sae = load_sae(_train(store, tmp_path / "nmf", arch="nmf", expansion="2", steps=200).dirs["nmf-x2"])
    x = torch.from_numpy(rows[:200])
    codes = sae.encode(x)
    assert (codes >= 0).all() and sae.architecture == "seminmf" and sae.max_active == 2 * D
    # The code is saev's semi-NMF solution against the saved dictionary, dense.
    assert torch.allclose(codes, seminmf_solve(x @ sae.W_dec.T, sae.W_dec, SEMINMF_ITERATIONS), rtol=1e-4, atol=1e-6)
    fvu = float(((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < 0.05


def test_the_nmf_solver_lowers_the_error_and_keeps_codes_positive():
    from clipsae.train.model import seminmf_solve

    g = torch.Generator().manual_seed(0)
    dictionary, x = torch.randn(12, D, generator=g), torch.randn(30, D, generator=g)
    errors = [float((x - (z := seminmf_solve(x @ dictionary.T, dictionary, it)) @ dictionary).pow(2).sum())
              for it in (0, 10, 100)]
    assert errors[0] >= errors[1] >= errors[2] and (z >= 0).all()


def test_latents_sets_the_width_directly_for_a_few_components_or_concepts(correlated, tmp_path):
    store, rows = correlated
    run = _train(store, tmp_path / "n", arch="pca,nmf", latents="4", k="2", steps=8)
    pca, nmf = load_sae(run.dirs["pca-n4-k2"]), load_sae(run.dirs["nmf-n4"])
    assert pca.d_sae == nmf.d_sae == 4
    full = load_sae(_train(store, tmp_path / "all", arch="pca", expansion="1", k="2", steps=8).dirs["pca-k2"])
    torch.testing.assert_close(pca.W_dec, full.W_dec[:4])  # the top 4 components of the same fit
    with pytest.raises(ClipsaeError, match="--latents 17 must be between 1 and d_in = 16 for --arch pca"):
        configure_training(store, arch="pca", latents="17", out=tmp_path / "x")
