"""``clipsae encode`` caches exactly what the SAE computes, resumes after kill -9, and shares work."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.errors import ClipsaeError
from clipsae.store import zarr_backend as zb
from clipsae.store.codes import Codes, codes_dir
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from tests.analysis.helpers import N_LATENTS, N_TOKENS, make_store, reference_codes, sae_weights, saelens_dir
from tests.conftest import ROOT, cli_process, invoke_cli, tree_snapshot

TOPK = {"architecture": "topk", "k": 3}


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.zarr")


def _sae(tmp_path, cfg=TOPK, seed=0, name="sae", **extra):
    w = {**sae_weights(seed), **extra}
    return saelens_dir(tmp_path / name, cfg, w), w


def _dense(store, cfg, w, positions):
    """(images, positions, latents) codes by SAELens's formula on every stored token."""
    s = ActivationStore.open(store)
    x = torch.from_numpy(s.read("blocks.0", slice(None))[:, positions]).float()
    return reference_codes(cfg, w, x).numpy()


def _per_image(codes, n_images):
    """{(image, latent): value} for every positive per-image value."""
    out = {}
    for b in codes:
        for img, lat, val, tok in zip(b.image_of_E, b.latents_E, b.values_E, b.tokens_E):
            out[int(img), int(lat)] = (float(val), int(tok))
    return out


@pytest.mark.parametrize("cfg, extra", [
    (TOPK, {}),
    ({"architecture": "jumprelu"}, {"threshold": torch.full((N_LATENTS,), 0.2)}),
    ({"architecture": "standard"}, {}),
])
def test_cached_codes_are_the_saelens_formula_on_every_token(store, tmp_path, cfg, extra):
    sae, w = _sae(tmp_path, cfg, **extra)
    run_encode(EncodeConfig(store, sae, max_active=N_LATENTS, progress=False))
    f = _dense(store, cfg, w, slice(None))
    c = Codes(ActivationStore.open(store), "sae")
    for image in (0, 9, 20):
        lat, val = c.token_codes(image)
        got = np.zeros((N_TOKENS, N_LATENTS), np.float32)
        for t in range(N_TOKENS):
            got[t, lat[t][lat[t] >= 0]] = val[t][lat[t] >= 0]
            assert (np.diff(val[t]) <= 0).all()  # largest first
        np.testing.assert_allclose(got, f[image], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("by", ["max", "cls", "mean"])
def test_per_image_values_match_a_dense_reference(store, tmp_path, by):
    sae, w = _sae(tmp_path)
    run_encode(EncodeConfig(store, sae, progress=False))
    f = _dense(store, TOPK, w, slice(None))
    want = {"max": f.max(1), "cls": f[:, 0], "mean": f.mean(1)}[by]
    got = _per_image(Codes(ActivationStore.open(store), "sae").iter_images(by), len(f))
    assert set(got) == {(int(i), int(j)) for i, j in zip(*np.nonzero(want > 0))}
    for (i, j), (val, tok) in got.items():
        assert val == pytest.approx(want[i, j], rel=1e-5)
        if by != "cls":
            assert tok == int(np.argmax(f[i, :, j]))  # the first token holding the maximum


def test_sums_match_a_dense_reference(store, tmp_path):
    sae, w = _sae(tmp_path)
    run_encode(EncodeConfig(store, sae, progress=False))
    f = _dense(store, TOPK, w, slice(None))
    s = Codes(ActivationStore.open(store), "sae").sums()
    np.testing.assert_array_equal(s.latent_tokens_fired, (f > 0).sum((0, 1)))
    np.testing.assert_array_equal(s.latent_images_fired, (f > 0).any(1).sum(0))
    np.testing.assert_allclose(s.latent_sum, f.sum((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(s.latent_sumsq, (f.astype(np.float64) ** 2).sum((0, 1)), rtol=1e-5)
    x = ActivationStore.open(store).read("blocks.0", slice(None)).astype(np.float64)
    x_hat = f @ w["W_dec"].numpy() + w["b_dec"].numpy()
    np.testing.assert_allclose(s.position_sq_err, ((x - x_hat) ** 2).sum((0, 2)), rtol=1e-5)
    np.testing.assert_allclose(s.position_x_sq, (x**2).sum((0, 2)), rtol=1e-6)  # row norms in float32
    np.testing.assert_allclose(s.position_x_sum, x.sum(0), rtol=1e-9, atol=1e-9)


def test_patch_tokens_only_are_encoded_when_asked(store, tmp_path):
    sae, w = _sae(tmp_path)
    run_encode(EncodeConfig(store, sae, tokens="patches", progress=False))
    c = Codes(ActivationStore.open(store), "sae")
    assert c.token_positions.tolist() == [1, 2, 3, 4] and not c.has_cls
    f = _dense(store, TOPK, w, slice(1, None))
    got = _per_image(c.iter_images("max"), len(f))
    for (i, j), (val, tok) in got.items():
        assert val == pytest.approx(f[i, :, j].max(), rel=1e-5) and tok == 1 + int(np.argmax(f[i, :, j]))
    with pytest.raises(ClipsaeError, match="CLS"):
        next(c.iter_images("cls"))


def test_cap_keeps_the_largest_codes_and_counts_the_tokens_it_cut(store, tmp_path):
    sae, w = _sae(tmp_path, {"architecture": "standard"})
    r = run_encode(EncodeConfig(store, sae, max_active=2, progress=False))
    f = _dense(store, {"architecture": "standard"}, w, slice(None))
    assert r.tokens_capped == int(((f > 0).sum(2) > 2).sum()) > 0
    lat, val = Codes(ActivationStore.open(store), "sae").token_codes(4)
    np.testing.assert_allclose(val, -np.sort(-f[4], axis=1)[:, :2], rtol=1e-5)
    # per-image values use every active latent, not only the kept ones
    got = _per_image(Codes(ActivationStore.open(store), "sae").iter_images("max"), len(f))
    assert len(got) == int((f.max(1) > 0).sum())


def test_rerun_skips_finished_parts_and_changes_nothing(store, tmp_path):
    sae, _ = _sae(tmp_path)
    run_encode(EncodeConfig(store, sae, progress=False))
    before = tree_snapshot(codes_dir(store, "sae"))
    r = run_encode(EncodeConfig(store, sae, progress=False))
    assert r.parts_written == [] and len(r.parts_skipped) == 3
    assert tree_snapshot(codes_dir(store, "sae")) == before


def test_a_different_sae_under_the_same_name_is_refused_naming_the_difference(store, tmp_path, run_cli):
    sae, _ = _sae(tmp_path)
    other, _ = _sae(tmp_path, seed=1, name="other")
    assert run_cli("encode", "--store", store, "--sae", sae, "--quiet")[0] == 0
    before = tree_snapshot(store)
    code, _, err = run_cli("encode", "--store", store, "--sae", other, "--name", "sae", "--quiet")
    assert code == 1 and "weights_sha256" in err and err.count("\n") == 1
    assert tree_snapshot(store) == before


@pytest.mark.parametrize("args, message", [
    (["--hook", "nope"], "hook 'nope' is not in"),
    (["--max-active", "0"], "--max-active must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--name", "../x"], "not a usable codes name"),
    (["--worker-index", "3", "--num-workers", "2"], "--worker-index must be in 0..1"),
])
def test_bad_input_gets_one_line_and_exit_1(store, tmp_path, run_cli, args, message):
    sae, _ = _sae(tmp_path)
    code, _, err = run_cli("encode", "--store", store, "--sae", sae, "--quiet", *args)
    assert code == 1 and message in err and err.count("\n") == 1


def test_an_sae_of_the_wrong_width_is_refused(store, tmp_path, run_cli):
    sae = saelens_dir(tmp_path / "wide", TOPK, sae_weights(d=16))
    code, _, err = run_cli("encode", "--store", store, "--sae", sae, "--hook", "blocks.0", "--quiet")
    assert code == 1 and "16-dimensional" in err and "d=8" in err


def _big_store(path, n_parts, per_part, d=64):
    rng = np.random.default_rng(0)
    for p in range(n_parts):
        write_store(path, {"h": rng.standard_normal((per_part, N_TOKENS, d)).astype(np.float16)},
                    [f"k{p:03d}-{i:04d}" for i in range(per_part)], attrs={"model": "m"}, part=f"p{p:03d}",
                    layouts={"h": {"cls_token": True, "grid": [2, 2]}})
    return path


def _all_arrays(path):
    return {str(f.relative_to(path)): zb.Array(f).read_all() for f in sorted(path.rglob("zarr.json"))
            if zb.read_metadata(f.parent).get("node_type") == "array" for f in [f.parent]}


def test_kill_9_then_the_same_command_ends_with_the_uninterrupted_codes(tmp_path):
    store = _big_store(tmp_path / "s.zarr", n_parts=12, per_part=400)
    sae = saelens_dir(tmp_path / "sae", TOPK, sae_weights(d=64, n=256))
    args = ("encode", "--store", store, "--sae", sae, "--batch-size", "64", "--device", "cpu", "--quiet")
    proc = cli_process(*args)
    parts = codes_dir(store, "sae") / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        written = [p for p in parts.glob("*") if (zb.read_attributes(p) or {}).get("complete")] if parts.is_dir() else []
        if len(written) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "encode ended before it could be killed; make the store bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert invoke_cli(*args)[0] == 0
    assert invoke_cli(*args, "--name", "again")[0] == 0
    killed, clean = _all_arrays(codes_dir(store, "sae")), _all_arrays(codes_dir(store, "again"))
    assert killed.keys() == clean.keys() and len(killed) > 12
    for name in killed:
        np.testing.assert_array_equal(killed[name], clean[name], err_msg=name)


def test_two_workers_encode_every_image_exactly_once(tmp_path):
    store = _big_store(tmp_path / "s.zarr", n_parts=5, per_part=30)
    sae = saelens_dir(tmp_path / "sae", TOPK, sae_weights(d=64, n=256))
    procs = [cli_process("encode", "--store", store, "--sae", sae, "--num-workers", "2", "--worker-index", str(i),
                         "--device", "cpu", "--quiet") for i in range(2)]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    assert results == [(0, ""), (0, "")]
    by = {}
    for part in (p for p in (codes_dir(store, "sae") / "parts").iterdir() if p.is_dir()):
        by.setdefault(zb.read_attributes(part)["written_by"]["pid"], []).append(part.name)
    assert sorted(map(len, by.values())) == [2, 3]
    c = Codes(ActivationStore.open(store), "sae")
    seen = np.concatenate([b.images_I for b in c.iter_images()])
    np.testing.assert_array_equal(seen, np.arange(150))


def _peak_rss_mib(store, sae, name):
    code = ("import resource, sys; from clipsae.analysis.encode import EncodeConfig, run_encode; "
            f"run_encode(EncodeConfig({str(store)!r}, {str(sae)!r}, name={name!r}, batch_size=512, device='cpu', progress=False)); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(p.stdout.split()[-1]) / 1024


def test_memory_stays_flat_on_a_store_many_times_the_batch(tmp_path):
    # 4,000 images × 5 tokens × d=1024 in float16 is 41 MiB stored, 82 MiB as float32: 40× the batch.
    small = _big_store(tmp_path / "small.zarr", n_parts=1, per_part=400, d=1024)
    big = _big_store(tmp_path / "big.zarr", n_parts=2, per_part=2000, d=1024)
    sae = saelens_dir(tmp_path / "sae", TOPK, sae_weights(d=1024, n=2048))
    grow = _peak_rss_mib(big, sae, "m") - _peak_rss_mib(small, sae, "m")
    assert grow < 25, f"peak RSS grew by {grow:.0f} MiB on a store 10x larger"


@pytest.fixture
def resid_store(tmp_path):
    """A store holding resid.3 and ln_post, both of the SAEs' width."""
    rng = np.random.default_rng(0)
    path = tmp_path / "r.zarr"
    write_store(path, {"resid.3": rng.standard_normal((6, N_TOKENS, 8)).astype(np.float32),
                       "ln_post": rng.standard_normal((6, 8)).astype(np.float32)}, [f"i{i}" for i in range(6)],
                attrs={"model": "m"})
    return path


def test_an_sae_trained_on_a_hook_the_store_lacks_is_refused(resid_store, tmp_path, run_cli):
    sae = saelens_dir(tmp_path / "sae", {**TOPK, "hook_name": "resid.5"}, sae_weights(0))
    code, _, err = run_cli("encode", "--store", resid_store, "--sae", sae, "--quiet")
    assert code == 1 and "trained on resid.5, which" in err and "pass --hook" in err
    assert len(err.strip().splitlines()) == 1


def test_encoding_another_hook_than_the_sae_was_trained_on_warns(resid_store, tmp_path, run_cli):
    sae = saelens_dir(tmp_path / "sae", {**TOPK, "hook_name": "resid.5"}, sae_weights(0))
    code, _, err = run_cli("encode", "--store", resid_store, "--sae", sae, "--hook", "resid.3", "--quiet")
    assert code == 0 and "warning: the SAE was trained on resid.5; encoding resid.3" in err


def test_a_hook_name_of_another_tool_warns_and_the_width_decides(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    store = tmp_path / "w.zarr"
    write_store(store, {"resid.3": rng.standard_normal((6, N_TOKENS, 8)).astype(np.float32),
                        "embed": rng.standard_normal((6, 5)).astype(np.float32)}, [f"i{i}" for i in range(6)],
                attrs={"model": "m"})
    sae = saelens_dir(tmp_path / "sae", {**TOPK, "hook_name": "vision_model.encoder.layers.3"}, sae_weights(0))
    code, out, err = run_cli("encode", "--store", store, "--sae", sae, "--quiet")
    assert code == 0, err
    assert "'vision_model.encoder.layers.3', which names no store hook; encoding resid.3" in err
    assert "of hook resid.3" in out


def test_threads_sets_torchs_cpu_threads_and_zero_is_refused(store, tmp_path):
    sae, _ = _sae(tmp_path)
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # not the count torch already has
    try:
        run_encode(EncodeConfig(store, sae, threads=want, progress=False))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ClipsaeError, match="--threads must be at least 1, not 0"):
        EncodeConfig(store, sae, threads=0)
