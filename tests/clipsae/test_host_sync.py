"""Reads back to the host, watched on the CPU: the hot loops (a training step of every architecture,
encode's batches, extraction's batches) make none outside a declared point."""

import pytest
import torch

from clipsae.host_sync import SyncWatch, declared
from clipsae.train import archs
from clipsae.train.sae import TrainingSAE, optimise


def _undeclared(w: SyncWatch) -> list[str]:
    return [f"{r.op} at {r.where}" for r in w.undeclared]


@pytest.mark.parametrize("code, op", [
    (lambda t: t.sum().item(), "_local_scalar_dense"),
    (lambda t: bool(t.any()), "_local_scalar_dense"),
    (lambda t: t.nonzero(), "nonzero"),
    (lambda t: t[t > 0], "index"),
    (lambda t: torch.unique(t), "_unique2"),
    (lambda t: torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3])), "repeat_interleave"),
    (lambda t: torch.bincount(torch.tensor([1, 3])), "bincount"),
    (lambda t: t.masked_select(t > 0), "masked_select"),
])
def test_the_watch_sees_each_kind_of_read_back(code, op):
    t = torch.randn(8)
    with SyncWatch() as w:
        code(t)
    assert [r.op.split("::")[-1].split(".")[0] for r in w.undeclared][-1:] == [op]


def test_the_watch_leaves_ops_of_known_size_alone():
    t = torch.randn(4, 8)
    with SyncWatch() as w:
        t.topk(3, dim=1)
        t.masked_fill(t > 0, 0.0)
        torch.arange(4).repeat_interleave(3)
        torch.bincount(torch.tensor([1, 3]), minlength=8)
        torch.where(t > 0, t, 0.0).sum()
    assert w.reads == []


def test_a_declared_read_is_recorded_with_its_reason():
    with SyncWatch() as w, declared("the test needs it"):
        torch.ones(2).sum().item()
    assert w.undeclared == [] and [r.why for r in w.reads] == ["the test needs it"]


def _trained_sae(name: str):
    arch = archs.get(name)
    spec = arch.spec(16, 1 if name in ("pca", "kmeans", "nmf") else 4, k=4, l1=1e-3)
    return arch, TrainingSAE(spec, 0)


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka", "relu"])
@pytest.mark.parametrize("dead", ["none", "a third"])
def test_a_training_step_reads_nothing_back(name, dead):
    _, sae = _trained_sae(name)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)  # as the trainer makes it
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    dead_C = torch.arange(0, sae.spec.d_sae, 3) if dead == "a third" else None
    optimise(sae, opt, x, dead_C, 1.0)  # Adam's state is made on the first step
    with SyncWatch() as w:
        out = optimise(sae, opt, x, dead_C, 1.0)
    assert _undeclared(w) == []
    if dead == "a third" and sae.arch.revives_with_auxk:
        assert float(out.aux) > 0  # AuxK ran


@pytest.mark.parametrize("name", ["pca", "kmeans", "nmf", "random"])
def test_a_baselines_fit_step_reads_nothing_back_once_started(name):
    arch, sae = _trained_sae(name)
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    arch.fit_step(sae, x)  # k-means seeds from its first rows: a declared read until it has
    with SyncWatch() as w:
        out = arch.fit_step(sae, x)
        sae.track_firing(out.fired_N, len(x))
    assert _undeclared(w) == []


def test_the_watch_fails_a_step_with_an_item_added(monkeypatch):
    from clipsae.train.archs.sparse_family import SparseFamily

    monkeypatch.setattr(SparseFamily, "after_step", lambda self, sae, codes: codes.vals.sum().item())
    _, sae = _trained_sae("topk")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    x = torch.randn(64, 16)
    with SyncWatch() as w:
        optimise(sae, opt, x, None, 1.0)
    assert [r.op for r in w.undeclared] == ["aten::_local_scalar_dense"]
    assert "test_host_sync.py" in w.undeclared[0].where


def test_an_encode_batch_reads_back_only_where_its_codes_go_to_the_host():
    from clipsae.analysis.encode import encode_batch
    from clipsae.train.model import SparseAutoencoder

    g = torch.Generator().manual_seed(0)
    for arch in ("topk", "standard"):
        sae = SparseAutoencoder(arch, torch.randn(64, 16, generator=g), torch.zeros(64), torch.randn(64, 16, generator=g),
                                torch.zeros(16), k=4 if arch == "topk" else None)
        with torch.no_grad(), SyncWatch() as w:
            block, _ = encode_batch(sae, torch.randn(3, 5, 16, generator=g), torch.arange(5), 4, 0)
        assert _undeclared(w) == [] and w.reads  # the codes' reads are there, and declared
        assert block.token_latents_RK.shape == (15, 4)


@pytest.mark.parametrize("model, layers", [("ViT-B-32", ["3", "ln_post", "embed"]), ("RN50", ["layer4", "attnpool"])])
def test_an_extraction_batch_reads_nothing_back(model, layers):
    from clipsae.pipeline.config import ModelConfig
    from clipsae.pipeline.extract import device_batch
    from clipsae.pipeline.hooks import HookedForward, resolve_hooks
    from clipsae.pipeline.model import load_model
    from clipsae.pipeline.preprocess import split_preprocess

    loaded = load_model(ModelConfig(model))
    forward = HookedForward(loaded.visual, resolve_hooks(loaded.visual, layers, "all"), "all")
    images = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), SyncWatch() as w:
        out = device_batch(images, split_preprocess(loaded.preprocess), forward, torch.device("cpu"), "fp32", torch.float16)
    assert _undeclared(w) == []
    assert all(f"{h.name}\0stats" in out for h in forward.hooks)
