"""Every architecture clipsae saves as a SAELens folder is loaded by SAELens itself and encodes and decodes as
clipsae does: the files researchers hand to SAELens-based tools mean the same there."""

import pytest
import torch

from clipsae.store.writer import write_store
from clipsae.train import load_sae
from clipsae.train.configure import configure_training
from clipsae.train.trainer import run_train
from tests.train.planted import planted_dictionary

D = 16
# Each architecture saved in SAELens's layout, and the SAELens class that must read it.
SAELENS_CLASSES = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "matryoshka": "JumpReLUSAE",
                   "jumprelu": "JumpReLUSAE", "gated": "JumpReLUSAE", "archetypal": "TopKSAE",
                   "archetypal_jumprelu": "JumpReLUSAE"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One sweep of every SAELens-saved architecture, trained together on a planted store."""
    root = tmp_path_factory.mktemp("saelens")
    acts, _ = planted_dictionary(512, 2, D, 32, mean_active=2, seed=4)
    write_store(root / "s.zarr", {"a": acts}, [f"k{i:04d}" for i in range(len(acts))], attrs={"model": "planted"})
    plan = configure_training(root / "s.zarr", out=root / "run", arch=",".join(SAELENS_CLASSES), expansion="4", k="3",
                              candidates=16, batch_size=128, steps=40, holdout=0.0)
    dirs = run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held).dirs
    return {label.split("-")[0]: path for label, path in dirs.items()}


@pytest.mark.parametrize("arch", list(SAELENS_CLASSES))
def test_saelens_loads_the_export_and_codes_as_clipsae_does(runs, arch):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(runs[arch]), device="cpu")
    assert type(theirs).__name__ == SAELENS_CLASSES[arch]
    ours = load_sae(runs[arch])
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        f_theirs, f_ours = theirs.encode(x), ours.encode(x)
        assert (f_ours != 0).any(dim=1).float().mean() > 0.5  # codes that say something, not all zeros
        assert torch.equal(f_theirs != 0, f_ours != 0)
        torch.testing.assert_close(f_theirs, f_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(f_theirs), ours.decode(f_ours), rtol=1e-5, atol=1e-5)
