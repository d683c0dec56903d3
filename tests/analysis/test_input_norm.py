"""`encode --input-norm store`: the store's per-dimension mean and standard deviation standardise the
inputs of an SAE trained on standardised activations, are recorded with the codes, and are applied
again wherever the SAE is reloaded."""

import numpy as np
import torch

from clipsae.analysis.codes_sae import codes_sae
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from tests.train.formats import test_clipscope as clipscope


def _store(path):
    rng = np.random.default_rng(0)
    acts = (rng.standard_normal((12, 3, clipscope.D)) * np.linspace(0.5, 4, clipscope.D) + 3).astype(np.float32)
    write_store(path, {"resid.22": acts[:6]}, [f"a{i}" for i in range(6)], attrs={"model": "m"}, dtype="float32", part="p0")
    write_store(path, {"resid.22": acts[6:]}, [f"b{i}" for i in range(6)], attrs={"model": "m"}, dtype="float32", part="p1")
    return acts.reshape(-1, clipscope.D)


def test_codes_are_those_of_the_standardised_rows_and_reloads_apply_the_same(tmp_path, run_cli):
    sae_file, state = clipscope.clipscope_file(tmp_path / "22_resid.pt")
    x = _store(tmp_path / "s.zarr")
    code, _, err = run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", sae_file, "--input-norm", "store",
                           "--name", "std", "--quiet")
    assert code == 0, err
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    x_std = torch.from_numpy(((x - mean) / std).astype(np.float32))
    latent, _ = clipscope.reference(state, x_std)
    codes = Codes(ActivationStore.open(tmp_path / "s.zarr"), "std")
    lat, val = codes.token_codes(7)
    want = latent[7 * 3:8 * 3]
    for t in range(3):
        got = dict(zip(lat[t].tolist(), val[t].tolist()))
        top = want[t].nonzero().flatten().tolist()
        assert sorted(got) == sorted(top)
        np.testing.assert_allclose([got[j] for j in top], want[t, top].numpy(), rtol=1e-4, atol=1e-5)
    reloaded = codes_sae(codes)
    torch.testing.assert_close(reloaded.encode(torch.from_numpy(x)), latent, rtol=1e-4, atol=1e-5)


def test_without_it_the_codes_are_those_of_the_raw_rows_and_names_do_not_collide(tmp_path, run_cli):
    sae_file, state = clipscope.clipscope_file(tmp_path / "22_resid.pt")
    _store(tmp_path / "s.zarr")
    assert run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", sae_file, "--name", "c", "--quiet")[0] == 0
    code, _, err = run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", sae_file, "--name", "c",
                           "--input-norm", "store", "--quiet")
    assert code == 1 and "made differently" in err and "input_norm" in err


def test_an_sae_that_normalises_its_own_inputs_refuses_it(tmp_path, run_cli):
    from tests.train.formats import test_prisma as prisma

    path, _ = prisma.prisma_folder(tmp_path / "p", "relu", "layer_norm")
    acts = np.random.default_rng(0).standard_normal((4, 1, prisma.D)).astype(np.float32)
    write_store(tmp_path / "s.zarr", {"resid.3": acts}, [f"k{i}" for i in range(4)], attrs={"model": "m"})
    code, _, err = run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", path, "--input-norm", "store")
    assert code == 1 and "already normalises its inputs (layer_norm)" in err


def test_a_rerun_takes_the_recorded_statistics_without_another_pass(tmp_path, run_cli, monkeypatch):
    from clipsae.analysis import input_norm

    sae_file, _ = clipscope.clipscope_file(tmp_path / "22_resid.pt")
    _store(tmp_path / "s.zarr")
    args = ("encode", "--store", tmp_path / "s.zarr", "--sae", sae_file, "--input-norm", "store", "--name", "std",
            "--quiet")
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = Codes(ActivationStore.open(tmp_path / "s.zarr"), "std").token_codes(7)
    (tmp_path / "s.zarr" / "codes" / "std" / "parts" / "p1" / "zarr.json").unlink()  # one part to write again

    def no_pass(*a):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(input_norm, "store_statistics", no_pass)
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "1 parts written, 1 already done" in out
    after = Codes(ActivationStore.open(tmp_path / "s.zarr"), "std").token_codes(7)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
