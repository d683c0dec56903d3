"""overcomplete's SAEs, built by overcomplete itself and saved as its users save them (the module's state
dict, or the whole module), load and code as the module's own eval-mode encode and decode do."""

import importlib.util
import sys
import types

import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import load_sae

D, N = 16, 64


@pytest.fixture(scope="module")
def oc():
    """overcomplete.sae, imported without the package's top level: it imports the library's plotting code,
    which needs OpenCV's system libraries and matplotlib's removed ``cm.get_cmap``, and no SAE uses it."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None:
        pytest.skip("overcomplete is not installed (it installs on Python < 3.13)")
    if "overcomplete" not in sys.modules:
        pkg = types.ModuleType("overcomplete")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["overcomplete"] = pkg
    import overcomplete.sae as sae

    return sae


def trained(model, steps=3, seed=0):
    """``model`` after a few optimiser steps (parameters off their initial values: the dictionary's rows no
    longer unit norm, the batch norm's statistics moved), then switched to eval mode as its users encode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.randn(128, D, generator=g) * 2 + 0.5
        _, _, x_hat = model(x)
        loss = (x - x_hat).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def own_codes(model, x):
    with torch.no_grad():
        _, codes = model.encode(x)
        return codes, model.decode(codes)


def check_equal(model, ours, x):
    codes, x_hat = own_codes(model, x)
    with torch.no_grad():
        mine = ours.encode(x)
        assert torch.equal(mine != 0, codes != 0)
        torch.testing.assert_close(mine, codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(mine), x_hat, rtol=1e-5, atol=1e-5)


def save_state(model, path):
    torch.save(model.state_dict(), path)
    return path


def inputs(seed=1):
    return torch.randn(200, D, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


@pytest.mark.parametrize("encoder", ["linear", "mlp_bn_1"])
def test_topk_state_dict_codes_equal_overcompletes_own(oc, tmp_path, encoder):
    torch.manual_seed(0)
    model = trained(oc.TopKSAE(D, N, top_k=5, encoder_module=encoder))
    path = save_state(model, tmp_path / "sae.pt")
    ours = load_sae(path, sae_options="class=TopKSAE,top_k=5")
    assert ours.identity["format"] == "overcomplete" and ours.architecture == "topk"
    assert ours.identity["options"] == {"class": "TopKSAE", "top_k": 5}
    check_equal(model, ours, inputs())


def test_plain_sae_state_dict_reads_as_relu(oc, tmp_path):
    torch.manual_seed(1)
    model = trained(oc.SAE(D, N, encoder_module="mlp_bn_1"))
    ours = load_sae(save_state(model, tmp_path / "sae.pt"), sae_options="class=SAE")
    assert ours.architecture == "standard"
    check_equal(model, ours, inputs())


def test_jump_state_dict_thresholds_are_read_as_logs(oc, tmp_path):
    torch.manual_seed(2)
    model = oc.JumpSAE(D, N, bandwidth=1e-3)
    with torch.no_grad():
        model.thresholds.copy_(torch.linspace(-3, 0.5, N))  # from 0.05 to 1.6: some codes cut, some kept
    model = trained(model)
    ours = load_sae(save_state(model, tmp_path / "sae.pt"))
    assert ours.architecture == "jumprelu"
    torch.testing.assert_close(ours.threshold, torch.exp(model.thresholds.detach()))
    codes, _ = own_codes(model, inputs())
    assert 0 < (codes != 0).float().mean() < 0.9
    check_equal(model, ours, inputs())


def test_mp_state_dict_runs_the_same_pursuit(oc, tmp_path):
    torch.manual_seed(3)
    model = trained(oc.MpSAE(D, N, k=4, dictionary_params={"use_multiplier": True}))
    ours = load_sae(save_state(model, tmp_path / "sae.pt"), sae_options="class=MpSAE,k=4")
    assert ours.architecture == "mp" and ours.k == 4
    check_equal(model, ours, inputs())


@pytest.mark.parametrize("cls, options", [("RATopKSAE", "top_k=6,delta=0.3"), ("RAJumpSAE", "delta=0.3")])
def test_archetypal_state_dict_projects_w_and_relaxation_as_eval_does(oc, tmp_path, cls, options):
    torch.manual_seed(4)
    points = torch.randn(40, D) * 2
    kwargs = {"top_k": 6} if cls == "RATopKSAE" else {}
    model = getattr(oc, cls)(D, N, points=points, delta=0.3, **kwargs)
    if cls == "RAJumpSAE":
        with torch.no_grad():
            model.thresholds.fill_(-2.0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.5)  # large steps: W leaves the simplex, Λ leaves the δ-ball
    for _ in range(3):
        x = inputs(5)
        loss = (x - model(x)[2]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.dictionary.Relax.detach().norm(dim=-1).max() > 0.3 or (model.dictionary.W.detach() < 0).any()
    path = save_state(model, tmp_path / "sae.pt")  # saved before eval(), as after a training loop
    ours = load_sae(path, sae_options=options)
    check_equal(model.eval(), ours, inputs())


@pytest.mark.parametrize("cls, kwargs", [("TopKSAE", {"top_k": 7, "encoder_module": "mlp_bn_1"}),
                                         ("MpSAE", {"k": 3}), ("JumpSAE", {})])
def test_whole_pickled_module_reads_without_options(oc, tmp_path, cls, kwargs):
    torch.manual_seed(5)
    model = trained(getattr(oc, cls)(D, N, **kwargs))
    torch.save(model, tmp_path / "model.pt")
    ours = load_sae(tmp_path / "model.pt")
    assert ours.cfg["class"] == cls
    check_equal(model, ours, inputs())


def test_whole_pickled_module_runs_none_of_its_code(oc, tmp_path, monkeypatch):
    model = trained(oc.TopKSAE(D, N, top_k=3))
    torch.save(model, tmp_path / "model.pt")
    ran = []
    monkeypatch.setattr(oc.TopKSAE, "__setstate__", lambda self, state: ran.append(state), raising=False)
    load_sae(tmp_path / "model.pt")
    assert ran == []


def test_whole_pickled_batchtopk_reads_its_running_threshold(oc, tmp_path):
    torch.manual_seed(6)
    model = oc.BatchTopKSAE(D, N, top_k=4)
    model.train()
    model(inputs(7))
    model.eval()
    torch.save(model, tmp_path / "model.pt")
    ours = load_sae(tmp_path / "model.pt")
    assert ours.architecture == "jumprelu"
    check_equal(model, ours, inputs())


def test_batchtopk_state_dict_is_refused_with_the_reason(oc, tmp_path):
    path = save_state(oc.BatchTopKSAE(D, N, top_k=4), tmp_path / "sae.pt")
    with pytest.raises(ClipsaeError, match="running_threshold.*state_dict.*torch.save\\(model\\)"):
        load_sae(path, sae_options="class=BatchTopKSAE")


def test_state_dict_whose_class_its_keys_leave_open_asks_for_it(oc, tmp_path):
    path = save_state(oc.TopKSAE(D, N, top_k=4), tmp_path / "sae.pt")
    with pytest.raises(ClipsaeError, match="SAE or TopKSAE or BatchTopKSAE.*class=NAME"):
        load_sae(path)
    with pytest.raises(ClipsaeError, match="does not record top_k.*default.*= 6"):
        load_sae(path, sae_options="class=TopKSAE")
    with pytest.raises(ClipsaeError, match="not a MpSAE"):
        load_sae(path, sae_options="class=MpSAE")


def test_archetypal_state_dict_without_delta_is_refused(oc, tmp_path):
    path = save_state(oc.RATopKSAE(D, N, points=torch.randn(20, D), top_k=4), tmp_path / "sae.pt")
    with pytest.raises(ClipsaeError, match="does not record delta"):
        load_sae(path, sae_options="top_k=4")


@pytest.mark.parametrize("encoder, match", [("mlp_ln_1", "LayerNorm"), ("mlp_bn_3", "layers before its last")])
def test_encoders_no_linear_map_equals_are_refused(oc, tmp_path, encoder, match):
    path = save_state(oc.TopKSAE(D, N, top_k=4, encoder_module=encoder), tmp_path / "sae.pt")
    with pytest.raises(ClipsaeError, match=match):
        load_sae(path, sae_options="class=TopKSAE,top_k=4")


def test_sae_options_a_format_does_not_take_are_refused(oc, tmp_path):
    path = save_state(oc.TopKSAE(D, N, top_k=4), tmp_path / "sae.pt")
    with pytest.raises(ClipsaeError, match="does not take it"):
        load_sae(path, sae_options="class=TopKSAE,top_k=4,width=3")
    with pytest.raises(ClipsaeError, match="not an integer"):
        load_sae(path, sae_options="class=TopKSAE,top_k=four")
    with pytest.raises(ClipsaeError, match="not KEY=VALUE"):
        load_sae(path, sae_options="class")


def test_state_dict_options_go_through_encode_and_the_analyses_that_reload_it(oc, tmp_path, run_cli):
    from tests.analysis.helpers import make_store

    torch.manual_seed(7)
    path = save_state(trained(oc.TopKSAE(D, N, top_k=4)), tmp_path / "sae.pt")
    store = make_store(tmp_path / "s.zarr", n_parts=2, per_part=6, d=D)
    code, _, err = run_cli("encode", "--store", store, "--sae", path, "--hook", "blocks.0", "--quiet")
    assert code == 1 and "class=NAME" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("sae", "info", path, "--sae-options", "class=TopKSAE,top_k=4")
    assert code == 0 and "format: overcomplete" in out and "k: 4" in out, err
    code, out, err = run_cli("encode", "--store", store, "--sae", path, "--sae-options", "class=TopKSAE,top_k=4",
                             "--hook", "blocks.0", "--name", "oc", "--quiet")
    assert code == 0 and "encoded 12 images" in out, err
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.store import ActivationStore
    from clipsae.store.codes import Codes

    reloaded = codes_sae(Codes(ActivationStore.open(store), "oc"))
    assert reloaded.architecture == "topk" and reloaded.k == 4
