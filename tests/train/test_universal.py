"""Universal SAEs: one set of latents over two stores of the same images, an ordinary SAE folder per model,
the planted pair's shared atoms found in both decoders on one latent, a stopped run resumed exactly, the
refusals of what cannot be aligned; and ``analyze universal`` on the same trained pair (here rather than under
tests/analysis/, so that the pair is trained once)."""

import json

import numpy as np
import pytest
import torch

from clipsae.store.writer import write_store
from clipsae.train import load_sae
from clipsae.train.configure import configure_training
from clipsae.train.trainer import TrainingStopped, run_train
from clipsae.train.universal import UNIVERSAL_FILE
from tests.train.planted import planted_pair

SHARED = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """a.zarr (d 32) and b.zarr (d 24): 24 shared features and 8 of each model's own; b.zarr lacks 100 images
    and holds the rest in reverse order."""
    return planted_pair(tmp_path_factory.mktemp("pair"), drop_b=100)


@pytest.fixture(scope="module")
def trained(pair, tmp_path_factory):
    """Both selections trained in one data pass."""
    a, b, *_ = pair
    out = tmp_path_factory.mktemp("u") / "run"
    plan = configure_training(None, universal=f"{a}:x,{b}:x", arch="topk", k="3", expansion="4", steps=300,
                              batch_size=256, lr=3e-3, holdout=0.05, selection="global,own", out=out)
    return plan, run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held).dirs


def best_cosines(D_true, W_dec):
    W = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    return D_true @ W.T


def test_each_model_gets_an_ordinary_sae_folder_and_universal_json_names_the_stores(pair, trained):
    a, b, *_ = pair
    plan, dirs = trained
    run = dirs["topk-x4-k3"]
    info = json.loads((run / UNIVERSAL_FILE).read_text())
    assert [m["store"] for m in info["models"]] == [str(a), str(b)] and info["images"] == 4096 - 100
    assert info["selection"] == "global" and info["d_sae"] == 4 * 32  # the expansion counts the widest model
    assert np.array(info["heldout"]["cross_fvu"]).shape == (2, 2)
    for m, d in enumerate((32, 24)):
        sae = load_sae(run / "models" / str(m))
        assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == ("topk", d, 128, 3)
        assert sae.recorded("hook") == "x"
    assert "universal: 3,996 images held by all 2 stores" in plan.notes[0]


@pytest.mark.parametrize("label", ["topk-x4-k3", "topk-x4-k3-own"])
def test_the_planted_pairs_shared_atoms_are_found_in_both_decoders(pair, trained, label):
    _, _, D_a, D_b = pair
    run = trained[1][label]
    ca = best_cosines(D_a, load_sae(run / "models/0").W_dec.numpy())
    cb = best_cosines(D_b, load_sae(run / "models/1").W_dec.numpy())
    assert ca[:SHARED].max(1).mean() >= 0.9 and cb[:SHARED].max(1).mean() >= 0.9, label


def test_global_selection_puts_a_shared_atom_on_one_latent_in_both_models(pair, trained):
    """The latent whose model-A atom is nearest a shared feature carries that feature's model-B side too."""
    _, _, D_a, D_b = pair
    run = trained[1]["topk-x4-k3"]
    ca = best_cosines(D_a, load_sae(run / "models/0").W_dec.numpy())[:SHARED]
    cb = best_cosines(D_b, load_sae(run / "models/1").W_dec.numpy())[:SHARED]
    rows = np.arange(SHARED)
    assert np.mean(cb[rows, ca.argmax(1)] >= 0.8) >= 0.9 and np.mean(ca[rows, cb.argmax(1)] >= 0.8) >= 0.9


def test_a_stopped_universal_run_resumes_to_the_uninterrupted_weights(pair, tmp_path):
    a, b, *_ = pair
    args = dict(universal=f"{a}:x,{b}:x", arch="batchtopk", k="3", expansion="2", steps=60, batch_size=128,
                holdout=0.05, checkpoint_every=10)
    ref = configure_training(None, **args, out=tmp_path / "ref")
    run_train(ref.cfg, quiet=True, store=ref.store, held=ref.held)
    per_model = json.loads((tmp_path / "ref" / UNIVERSAL_FILE).read_text())["heldout"]["models"]
    assert all(0 < m["l0"] <= 3 * 3 for m in per_model), per_model  # each model's own threshold: near k a row
    plan = configure_training(None, **args, out=tmp_path / "cut")
    calls = iter(range(10**6))
    with pytest.raises(TrainingStopped):
        run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held, stop=lambda: next(calls) >= 25)
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    for m in ("0", "1"):
        x, y = load_sae(tmp_path / "ref" / "models" / m), load_sae(tmp_path / "cut" / "models" / m)
        assert x.architecture == "jumprelu"
        for k, v in x.state_dict().items():
            torch.testing.assert_close(y.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def _store(path, keys, d=8, tokens=1):
    acts = np.random.default_rng(0).standard_normal((len(keys), tokens, d)).astype(np.float32)
    write_store(path, {"x": acts}, list(keys), attrs={"model": "m"})
    return path


@pytest.mark.parametrize("case, message", [
    ("single", "at least two STORE:HOOK"),
    ("twice", "names {a}:x twice"),
    ("no hook", "has no hook 'y'"),
    ("no common keys", "share 0 image keys, fewer than the 10"),
    ("tokens", "selects different numbers of tokens per image"),
    ("arch", "trains topk, batchtopk, matryoshka SAEs, not relu"),
    ("store too", "give --store or --universal, not both"),
    ("malformed", "is not STORE:HOOK"),
])
def test_bad_universal_input_is_one_line_and_leaves_no_run_folder(tmp_path, run_cli, case, message):
    a = _store(tmp_path / "a.zarr", [f"k{i}" for i in range(64)])
    other = {"no common keys": [f"z{i}" for i in range(64)]}.get(case, [f"k{i}" for i in range(64)])
    b = _store(tmp_path / "b.zarr", other, tokens=5 if case == "tokens" else 1)
    universal = {"single": f"{a}:x", "twice": f"{a}:x,{a}:x", "no hook": f"{a}:x,{b}:y",
                 "malformed": f"{a}:x,{b}"}.get(case, f"{a}:x,{b}:x")
    extra = {"arch": ["--arch", "relu"], "store too": ["--store", a]}.get(case, [])
    code, _, err = run_cli("train", "--universal", universal, "--steps", "5", "--batch-size", "16", "--out",
                           tmp_path / "run", *extra)
    assert code == 1 and message.format(a=a) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_analyze_universal_tells_shared_latents_from_each_models_own(pair, trained, run_cli):
    """The universality score separates the latents of the shared atoms from those of one model's own atoms."""
    import csv

    from clipsae.analysis.features.universal import roc_auc

    a, b, D_a, D_b = pair
    run = trained[1]["topk-x4-k3"]
    for store, m in ((a, 0), (b, 1)):
        code, _, err = run_cli("encode", "--store", store, "--sae", run / "models" / str(m), "--name", "u", "--quiet")
        assert code == 0, err
    out = a.parent / "universal-out"
    code, stdout, err = run_cli("analyze", "universal", "--codes", f"{a}:u,{b}:u", "--out", out)
    assert code == 0, err
    assert "3996 images shared by the 2 stores" in stdout
    assert "universal_top_images.png not drawn:" in stdout  # the planted stores were not extracted from tars
    rows = list(csv.DictReader(open(out / "universal.csv")))
    assert len(rows) == 128 and {"latent", "universality", "energy_m0", "energy_m1", "cofire_m0_m1"} <= set(rows[0])
    for r in rows:
        assert float(r["energy_m0"]) + float(r["energy_m1"]) == pytest.approx(1, abs=1e-6)
    universality = np.array([float(r["universality"]) for r in rows])
    ca = best_cosines(D_a, load_sae(run / "models/0").W_dec.numpy())
    cb = best_cosines(D_b, load_sae(run / "models/1").W_dec.numpy())
    shared = set(ca[:SHARED].argmax(1)) | set(cb[:SHARED].argmax(1))
    own = (set(ca[SHARED:].argmax(1)) | set(cb[SHARED:].argmax(1))) - shared
    latents = sorted(shared | own)
    assert roc_auc(universality[latents], np.array([i in shared for i in latents])) >= 0.95
    summary = json.loads((out / "universal.json").read_text())
    cross = np.array(summary["cross_fvu"])
    assert cross[0, 0] < cross[0, 1] and cross[1, 1] < cross[1, 0]  # a model's own atoms cannot come from the other
    assert (out / "universal.png").stat().st_size > 0


def test_analyze_universal_refuses_codes_not_of_a_universal_run(pair, tmp_path, run_cli):
    a, *_ = pair
    plan = configure_training(a, hook="x", arch="topk", k="3", expansion="2", steps=5, batch_size=64, holdout=0.0,
                              out=tmp_path / "plain")
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    assert run_cli("encode", "--store", a, "--sae", tmp_path / "plain", "--name", "plain", "--quiet")[0] == 0
    code, _, err = run_cli("analyze", "universal", "--codes", f"{a}:plain,{a}:plain", "--out", tmp_path / "o")
    assert code == 1 and "not made by a universal SAE's models/<m>" in err and len(err.strip().splitlines()) == 1


def _plain_loss(sae, x, dead_C):
    """The universal loss written densely, for the sparse kernels to be checked against."""
    import torch.nn.functional as F

    from clipsae.train.universal import slices

    spec, parts = sae.spec, slices(sae.spec)
    M, n = len(parts), spec.d_sae
    z = [F.linear(x[:, s] - sae.b_dec[s], sae.W_enc[:, s], sae.b_enc[m]) for m, s in enumerate(parts)]

    def mask(sel):
        return torch.zeros(len(x), n, dtype=torch.bool).index_put_((sel[0], sel[1]), torch.tensor(True))

    if spec.selection == "global":
        masks = [mask(sae.arch.select(torch.stack([zm.detach() for zm in z]).sum(0), spec.k))] * M
    else:
        masks = [mask(sae.arch.select(zm.detach(), spec.k)) for zm in z]
    total = 0.0
    for src in range(M):
        f = F.relu(z[src]) * masks[src]
        partial, lo = sae.b_dec, 0
        for m_l, w in sae.arch.prefixes(spec):
            partial = partial + f[:, lo:m_l] @ sae.W_dec[lo:m_l]
            lo = m_l
            for s in parts:
                total = total + w * (x[:, s] - partial[:, s]).pow(2).sum() / (x[:, s] - x[:, s].mean(0)).pow(2).sum()
        e = (x - partial).detach()
        z_dead = z[src][:, dead_C]
        top = z_dead.detach().topk(min(spec.aux_k, len(dead_C)), dim=1).indices
        f_aux = torch.zeros_like(z_dead).scatter(1, top, F.relu(z_dead.gather(1, top)))
        l_aux = (e - f_aux @ sae.W_dec[dead_C]).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
        total = total + M * spec.aux_alpha * l_aux
    return total / (M * M)


@pytest.mark.parametrize("arch, selection", [("topk", "global"), ("topk", "own"), ("matryoshka", "global")])
def test_the_sparse_universal_step_equals_its_plain_dense_form(arch, selection):
    from clipsae.train.archs import get
    from clipsae.train.sae import TrainingSAE
    from clipsae.train.spec import SAESpec

    spec = get(arch).normalize(SAESpec(arch, 12 + 8, 2, k=3, blocks=(12, 8), selection=selection))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    dead = torch.tensor([1, 5, 7, 20])
    grads = []
    for forward in ("sparse", "plain"):
        sae = TrainingSAE(spec, 0)
        with torch.no_grad():
            sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
            sae.b_dec.copy_(torch.randn(20, generator=torch.Generator().manual_seed(2)) * 0.1)
        loss = sae(x, dead).loss if forward == "sparse" else _plain_loss(sae, x, dead)
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in sae.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for k in grads[1][1]:
        torch.testing.assert_close(grads[0][1][k], grads[1][1][k], rtol=1e-4, atol=1e-6, msg=k)


def test_train_universal_on_the_command_line_says_what_it_trains_and_where(pair, tmp_path, run_cli):
    a, b, *_ = pair
    code, out, err = run_cli("train", "--universal", f"{a}:x,{b}:x", "--arch", "topk", "--k", "3", "--expansion", "2",
                             "--steps", "20", "--batch-size", "128", "--out", tmp_path / "u")
    assert code == 0, err
    assert "universal over a.zarr:x (d=32), b.zarr:x (d=24) (all tokens)" in err
    assert out.startswith("topk-x2-k3: FVU ") and str(tmp_path / "u") in out
    assert (tmp_path / "u" / UNIVERSAL_FILE).is_file()


def _grid_store(path, keys, grid, d, seed):
    n = grid[0] * grid[1] + 1
    acts = np.random.default_rng(seed).standard_normal((len(keys), n, d)).astype(np.float32)
    write_store(path, {"x": acts}, list(keys), attrs={"model": "m"}, layouts={"x": {"cls_token": True, "grid": list(grid)}})
    return path, acts


def test_patches_of_unequal_grids_are_pooled_to_the_common_grid(tmp_path):
    from clipsae.train.universal_data import UniversalData

    keys = [f"k{i}" for i in range(40)]
    a, acts_a = _grid_store(tmp_path / "a.zarr", keys, (4, 4), 8, 0)
    b, acts_b = _grid_store(tmp_path / "b.zarr", keys, (2, 2), 6, 1)
    data = UniversalData.open([(str(a), "x"), (str(b), "x")], "patches", factors=[1.0, 1.0], grid=(2, 2))
    src = data.source(np.ones(40, dtype=bool))
    rows = np.concatenate([src.rows(i) for i in range(len(src.chunks))])
    assert src.n_rows == len(rows) == 40 * 4
    # A's 4×4 patches, each 2×2 block averaged, row-major: the plain reference of adaptive average pooling here.
    pooled = acts_a[:, 1:].reshape(40, 2, 2, 2, 2, 8).mean(axis=(2, 4)).reshape(40 * 4, 8)
    np.testing.assert_allclose(rows[:, :8], pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rows[:, 8:], acts_b[:, 1:].reshape(40 * 4, 6))
    plan = configure_training(None, universal=f"{a}:x,{b}:x", tokens="patches", grid="2x2", arch="topk", k="2",
                              expansion="2", steps=5, batch_size=32, holdout=0.0, out=tmp_path / "u")
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    assert json.loads((tmp_path / "u" / UNIVERSAL_FILE).read_text())["models"][0]["tokens_per_image"] == 16


@pytest.mark.parametrize("tokens, grid, message", [
    ("patches", "8x8", "finer than hook x's 4x4 grid"),
    ("all", "2x2", "--grid pools patches: give --tokens patches"),
    ("patches", "2by2", "is not ROWSxCOLS"),
])
def test_a_grid_that_cannot_pool_is_refused(tmp_path, tokens, grid, message):
    from clipsae.errors import ClipsaeError

    keys = [f"k{i}" for i in range(40)]
    a, _ = _grid_store(tmp_path / "a.zarr", keys, (4, 4), 8, 0)
    b, _ = _grid_store(tmp_path / "b.zarr", keys, (4, 4), 6, 1)
    with pytest.raises(ClipsaeError, match=message):
        configure_training(None, universal=f"{a}:x,{b}:x", tokens=tokens, grid=grid, steps=5, batch_size=32,
                           out=tmp_path / "u")
    assert not (tmp_path / "u").exists()
