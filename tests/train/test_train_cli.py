"""``clipsae train`` end to end on planted dictionaries written as real stores."""

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from clipsae.train import load_sae
from tests.conftest import cli_process, invoke_cli, tree_snapshot
from tests.train.planted import planted_dictionary, recovery, write_planted_store

pytestmark = pytest.mark.long_file

D = 64


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """4,096 images × 8 tokens of x = Σ a_j D_j + noise, 128 power-law features in 64 dimensions."""
    return write_planted_store(tmp_path_factory.mktemp("planted") / "planted.zarr")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small planted store with two hooks and CLS-first token layout."""
    path = tmp_path_factory.mktemp("small") / "small.zarr"
    acts, _ = planted_dictionary(512, 3, 16, 32, mean_active=2, seed=1)
    write_store(path, {"a": acts, "b": acts[:, :1] * 2}, [f"k{i}" for i in range(512)], attrs={"model": "planted"},
                layouts={"a": {"cls_token": True, "grid": [1, 2]}})
    return path


QUALITY = {
    "topk": ["--expansion", "4", "--k", "6", "--steps", "500"],
    "batchtopk": ["--expansion", "4", "--k", "6", "--steps", "500"],
    "relu": ["--expansion", "4", "--l1", "1", "--steps", "500"],
    "matryoshka": ["--expansion", "8", "--k", "6", "--steps", "1200"],
}


@pytest.mark.parametrize("arch", list(QUALITY))
def test_planted_dictionary_is_recovered(arch, planted, tmp_path, run_cli):
    store, dictionary = planted
    out = tmp_path / arch
    code, stdout, err = run_cli("train", "--store", store, "--arch", arch, *QUALITY[arch], "--batch-size", "1024",
                                "--lr", "3e-3", "--holdout", "0.05", "--out", out, "--quiet")
    assert code == 0, err
    sae = load_sae(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert recovery(dictionary, sae.W_dec.detach().numpy()) >= 0.9
    assert metrics["fvu"] <= 0.1
    assert f"FVU {metrics['fvu']:.4f}" in stdout


def _train(store, out, *extra, seed="0"):
    return ["train", "--store", store, "--hook", "a", "--expansion", "4", "--k", "4", "--batch-size", "128",
            "--steps", "60", "--holdout", "0.1", "--seed", seed, "--out", out, "--quiet", *extra]


def test_sweep_trains_every_combination_on_the_same_batches(small, tmp_path, run_cli):
    code, _, err = run_cli(*_train(small, tmp_path / "sweep", "--expansion", "2,4", "--k", "4,8"))
    assert code == 0, err
    labels = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert labels == ["topk-x2-k4", "topk-x2-k8", "topk-x4-k4", "topk-x4-k8"]
    # One member trained alone ends with the same weights: it saw the same batches.
    code, _, err = run_cli(*_train(small, tmp_path / "alone", "--expansion", "4", "--k", "8"))
    assert code == 0, err
    a = load_file(tmp_path / "sweep" / "topk-x4-k8" / "sae_weights.safetensors")
    b = load_file(tmp_path / "alone" / "sae_weights.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _lines(path, split):
    """Records of one split; a line still being written (no newline yet) is left out."""
    complete = path.read_text().split("\n")[:-1]
    return [r for r in map(json.loads, complete) if r["split"] == split]


def test_kill_9_then_same_command_ends_with_the_uninterrupted_weights(small, tmp_path):
    args = ["train", "--store", small, "--hook", "a", "--arch", "batchtopk", "--expansion", "4", "--k", "4",
            "--batch-size", "64", "--steps", "800", "--holdout", "0.1", "--checkpoint-every", "25", "--quiet",
            "--snapshot-every", "6400"]
    code, _, err = invoke_cli(*args, "--out", tmp_path / "ref")
    assert code == 0, err
    out = tmp_path / "killed"
    p = cli_process(*args, "--out", out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        log = out / "metrics.jsonl"
        if log.exists() and any(r["step"] >= 150 for r in _lines(log, "train")):
            break
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "cfg.json").exists(), "the run should have been killed before it finished"
    assert (out / "snapshots" / "06400" / "cfg.json").is_file(), "a snapshot should have been written before the kill"
    code, _, err = invoke_cli(*args, "--out", out)
    assert code == 0, err
    assert "resumed from step " in err  # said even with --quiet
    a = load_file(tmp_path / "ref" / "sae_weights.safetensors")
    b = load_file(out / "sae_weights.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    # Zero-padded to the width of the run's 51,200 tokens, so that they list in training order.
    names = [f"{6400 * i:05d}" for i in range(1, 9)]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == names
    assert not list((out / "snapshots").rglob("*.tmp"))
    for n in names:
        a = load_file(tmp_path / "ref" / "snapshots" / n / "sae_weights.safetensors")
        b = load_file(out / "snapshots" / n / "sae_weights.safetensors")
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a), n
    for split in ("train", "heldout"):
        ref_lines, lines = _lines(tmp_path / "ref" / "metrics.jsonl", split), _lines(out / "metrics.jsonl", split)
        assert [r["step"] for r in lines] == [r["step"] for r in ref_lines], "nothing lost, nothing twice"
        assert lines[-1]["loss" if split == "train" else "fvu"] == pytest.approx(
            ref_lines[-1]["loss" if split == "train" else "fvu"], rel=1e-4)


def test_snapshots_are_loadable_exports_that_leave_the_run_unchanged(small, tmp_path, run_cli):
    assert run_cli(*_train(small, tmp_path / "plain"))[0] == 0
    code, _, err = run_cli(*_train(small, tmp_path / "snap", "--snapshot-every", "2500"))
    assert code == 0, err
    snaps = tmp_path / "snap" / "snapshots"
    # 128 tokens a step: steps 20, 40 and 59 are the first to reach 2,500, 5,000 and 7,500 tokens.
    assert sorted(int(p.name) for p in snaps.iterdir()) == [20 * 128, 40 * 128, 59 * 128]
    for p in snaps.iterdir():
        cfg = json.loads((p / "cfg.json").read_text())
        assert cfg["clipsae"]["tokens_trained"] == int(p.name) and cfg["clipsae"]["steps"] == int(p.name) // 128
        assert "fvu" in json.loads((p / "metrics.json").read_text())
        assert load_sae(p).d_sae == 64
    final = load_file(tmp_path / "snap" / "sae_weights.safetensors")
    assert all(torch.equal(final[k], v) for k, v in load_file(tmp_path / "plain" / "sae_weights.safetensors").items())
    early = load_file(snaps / "2560" / "sae_weights.safetensors")
    assert not torch.equal(early["W_dec"], final["W_dec"])


def test_snapshots_smaller_than_a_batch_are_refused_and_the_count_is_said(small, tmp_path, run_cli):
    code, _, err = run_cli(*_train(small, tmp_path / "every", "--snapshot-every", "1"))
    assert code == 1 and "--snapshot-every 1 is less than one batch of 128 tokens" in err
    assert not (tmp_path / "every").exists()
    code, _, err = run_cli(*_train(small, tmp_path / "three", "--snapshot-every", "2500"))
    assert code == 0 and "note: --snapshot-every 2500: 3 snapshots of each SAE under snapshots/" in err


def test_rerun_of_a_finished_run_changes_nothing(small, tmp_path, run_cli):
    out = tmp_path / "done"
    assert run_cli(*_train(small, out))[0] == 0
    before = tree_snapshot(out)
    code, stdout, _ = run_cli(*_train(small, out))
    assert code == 0 and "already trained" in stdout
    assert tree_snapshot(out) == before


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small, tmp_path, run_cli):
    out = tmp_path / "nan"
    code, _, err = run_cli(*_train(small, out, "--lr", "1e38", "--checkpoint-every", "1"))
    assert code == 1
    said = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(said) == 1 and "non-finite" in err and "last good checkpoint" in err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for s in ckpt["saes"] for v in s.values() if v.is_floating_point())


def test_mp_without_k_is_refused_in_one_line(small, tmp_path, run_cli):
    code, _, err = run_cli("train", "--store", small, "--hook", "a", "--arch", "mp", "--out", tmp_path / "mp")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--arch mp needs --k" in err
    assert not (tmp_path / "mp").exists()


@pytest.mark.parametrize("extra, message", [
    (["--snapshot-every", "1.5"], "--snapshot-every must be a whole number of tokens"),
    (["--hook", "nope"], "hook 'nope' is not in"),
    (["--k", "64"], "--k 64 must be between 1 and"),
    (["--arch", "sparsemax"], "--arch 'sparsemax' is not one of"),
    (["--tokens", "patches", "--hook", "b"], "no patches"),
    (["--holdout", "1"], "--holdout must be in"),
    (["--device", "cuda"], "no CUDA device"),
    (["--eval-every", "-3"], "--eval-every must be at least 0"),
    (["--k", "4,,8"], "--k '4,,8' has an empty item"),
    (["--expansion", "0"], "--expansion must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--tokens", "cls", "--batch-size", "4096"], "--batch-size 4096 is more than the 4"),
    (["--tokens-total", "1000"], "give --steps or --tokens-total, not both"),
])
def test_bad_input_gets_one_line_and_exit_1(extra, message, small, tmp_path, run_cli):
    code, _, err = run_cli(*_train(small, tmp_path / "bad"), *extra)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bad").exists()


def test_out_holding_a_different_run_is_refused_and_left_intact(small, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli(*_train(small, out))[0] == 0
    before = tree_snapshot(out)
    code, _, err = run_cli(*_train(small, out, seed="1"))
    assert code == 1 and "holds a different run" in err and "seed" in err
    assert tree_snapshot(out) == before


def test_store_with_no_complete_images_is_refused(small, tmp_path, run_cli):
    empty = tmp_path / "empty.zarr"
    write_store(empty, {"a": np.zeros((2, 1, 4), np.float32)}, ["x", "y"], attrs={"model": "m"})
    zarr_json = empty / "parts" / "part-00000" / "zarr.json"
    zarr_json.write_text(zarr_json.read_text().replace('"complete": true', '"complete": false'))
    code, _, err = run_cli("train", "--store", empty, "--out", tmp_path / "o")
    assert code == 1 and "no complete images" in err


def test_card_command_works_with_defaults_on_a_one_hook_store(planted, tmp_path, run_cli, monkeypatch):
    store, _ = planted
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli("train", "--store", store, "--quiet")
    assert code == 0, err
    out = tmp_path / "runs" / "planted-x-all"
    sae = load_sae(out)
    assert (sae.architecture, sae.d_sae, sae.k) == ("topk", 16 * D, 32)
    assert (out / "density.png").stat().st_size > 0


def test_sae_info_prints_what_it_is_and_its_heldout_metrics(small, tmp_path, run_cli):
    out = tmp_path / "info"
    assert run_cli(*_train(small, out, "--arch", "batchtopk"))[0] == 0
    code, stdout, _ = run_cli("sae", "info", out)
    assert code == 0
    assert "jumprelu" in stdout and "batchtopk" in stdout and "fvu" in stdout and "threshold" in stdout
    code, stdout, _ = run_cli("sae", "info", out, "--json")
    info = json.loads(stdout)
    assert info["d_sae"] == 64 and info["hook"] == "a" and 0 < info["heldout"]["l0"]
    assert ActivationStore.open(small).n_images == 512


def test_held_out_metrics_on_too_few_tokens_are_said_to_be_noisy(small, tmp_path, run_cli):
    code, out, err = run_cli(*_train(small, tmp_path / "few"))
    assert code == 0, err
    held = json.loads((tmp_path / "few" / "metrics.json").read_text())["heldout_tokens"]
    assert 0 < held < 10_000 and f"held-out metrics rest on {held:,} tokens, fewer than 10,000: noisy" in out
    code, out, _ = run_cli("sae", "info", tmp_path / "few")
    assert code == 0 and f"held-out metrics rest on {held:,} tokens" in out


def test_sae_info_on_a_directory_without_an_sae_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("sae", "info", tmp_path)
    assert code == 1 and "is not an SAE directory" in err


def test_sweep_file_lists_the_saes_to_train(small, tmp_path, run_cli):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"arch": "topk", "k": 2}, {"arch": "relu", "l1": 0.5, "expansion": 2}]))
    code, _, err = run_cli(*_train(small, tmp_path / "run", "--sweep", sweep))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["relu-x2-l1_0.5", "topk-x4-k2"]
    sweep.write_text(json.dumps([{"arch": "topk", "kk": 2}]))
    code, _, err = run_cli(*_train(small, tmp_path / "other", "--sweep", sweep))
    assert code == 1 and "unknown keys ['kk']" in err


def test_wandb_logging_works_offline(small, tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    p = cli_process(*_train(small, tmp_path / "run", "--wandb", "clipsae-test"), env=env)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_resume_on_a_store_that_has_grown_is_refused(tmp_path, run_cli):
    store = tmp_path / "grow.zarr"
    acts, _ = planted_dictionary(64, 2, 8, 16, mean_active=2, seed=3)
    write_store(store, {"a": acts[:32]}, [f"k{i}" for i in range(32)], attrs={"model": "m"}, part="part-00000")
    out = tmp_path / "run"
    args = ["train", "--store", store, "--expansion", "2", "--k", "2", "--batch-size", "16", "--steps", "5",
            "--holdout", "0", "--out", out, "--quiet"]
    assert run_cli(*args)[0] == 0
    write_store(store, {"a": acts[32:]}, [f"k{i}" for i in range(32, 64)], attrs={"model": "m"}, part="part-00001")
    code, _, err = run_cli(*args)
    assert code == 1 and "store_images: it has 32, this command has 64" in err


def test_relu_resampling_is_logged(small, tmp_path, run_cli):
    out = tmp_path / "relu"
    code, _, err = run_cli(*_train(small, out, "--arch", "relu", "--l1", "50", "--lr", "0.03", "--resample-every", "10",
                                   "--dead-tokens", "128"))
    assert code == 0, err
    resampled = sum(r.get("resampled", 0) for r in _lines(out / "metrics.jsonl", "train"))
    assert resampled > 0


def _run_without_steps(store, out, *extra):
    return ["train", "--store", store, "--hook", "a", "--expansion", "4", "--k", "4", "--out", out, *extra]


def test_tokens_total_below_one_batch_is_refused(small, tmp_path, run_cli):
    code, _, err = run_cli(*_run_without_steps(small, tmp_path / "r", "--tokens-total", "1e3", "--batch-size", "1024"))
    assert code == 1 and "--tokens-total 1000 is less than one batch of 1024" in err
    assert not (tmp_path / "r").exists()


def test_rounded_tokens_total_and_no_holdout_are_announced(small, tmp_path, run_cli):
    code, _, err = run_cli(*_run_without_steps(small, tmp_path / "r", "--tokens-total", "1000", "--batch-size", "128",
                                               "--holdout", "0", "--quiet"))
    assert code == 0, err
    assert "note: --tokens-total 1000 rounded up to 8 whole batches: 1,024 tokens" in err
    assert "note: --holdout 0: no image is held out, so there is no held-out evaluation" in err


def test_sae_info_on_a_sweep_directory_lists_its_saes(small, tmp_path, run_cli):
    assert run_cli(*_train(small, tmp_path / "sweep", "--k", "2,4"))[0] == 0
    code, out, err = run_cli("sae", "info", tmp_path / "sweep")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2, err
    assert lines[0].startswith(str(tmp_path / "sweep" / "topk-x4-k2") + ": topk  d_sae 64 k 2  FVU ")
    assert lines[1].startswith(str(tmp_path / "sweep" / "topk-x4-k4") + ": topk  d_sae 64 k 4  FVU ")
    code, out, _ = run_cli("sae", "info", tmp_path / "sweep", "--json")
    assert code == 0 and [i["k"] for i in json.loads(out)] == [2, 4]


def test_run_files_share_the_permissions_of_every_other_file(small, tmp_path, run_cli):
    out = tmp_path / "perm"
    assert run_cli(*_train(small, out))[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()}
    assert modes["sae_weights.safetensors"] == modes["sparsity.safetensors"] == modes["cfg.json"] == 0o666 & ~umask


def test_a_run_too_short_to_mean_anything_is_said_with_what_would_be_enough(small, tmp_path, run_cli):
    code, _, err = run_cli("train", "--store", small, "--hook", "b", "--steps", "5", "--batch-size", "64",
                           "--expansion", "2", "--k", "2", "--out", tmp_path / "short")
    assert code == 0, err
    assert "note: 5 steps is too short to mean anything" in err and "--steps 1,000 or more" in err
    assert "warms up over its first 1," in err  # a tenth of 5 steps, at least one
    code, out, err = run_cli("train", "--store", small, "--hook", "b", "--steps", "5", "--batch-size", "64",
                             "--expansion", "2", "--k", "2", "--out", tmp_path / "short")
    assert code == 0 and "already trained (5 steps)" in out and "note:" not in err, err


def test_an_sae_worse_than_the_mean_is_said_so():
    from types import SimpleNamespace

    from clipsae.train.report import format_result

    metrics = {"fvu": 1.27, "cosine": 0.1, "l0": 3.0, "dead": 0, "dense": 0}
    worse, fine = (format_result(SimpleNamespace(dirs={"a": "run/a"}, metrics={"a": {**metrics, "fvu": f}}))[0]
                   for f in (1.27, 0.4))
    assert "worse than predicting the mean: FVU > 1" in worse and "worse" not in fine


def test_sae_info_says_when_the_heldout_fvu_is_above_one():
    from clipsae.train.report import format_sae_info

    info = {"path": "run", "heldout": {"fvu": 19.9}}
    assert "worse than predicting the mean" in format_sae_info(info)
    assert "worse" not in format_sae_info({**info, "heldout": {"fvu": 0.2}})


def test_threads_sets_torchs_cpu_threads_first(small, tmp_path, run_cli, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    code, _, err = run_cli(*_train(small, tmp_path / "o", "--threads", "1"))
    assert code == 0, err
    assert calls[0] == 1


def test_a_damaged_store_stops_a_new_run_without_leaving_it_behind(small, tmp_path, run_cli):
    import shutil

    store = tmp_path / "damaged.zarr"
    shutil.copytree(small, store)
    chunk = next(p for p in sorted((store / "parts").rglob("*")) if p.is_file() and "/acts/a/c/" in str(p))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    code, _, err = run_cli("train", "--store", store, "--hook", "a", "--steps", "30", "--batch-size", "64",
                           "--expansion", "2", "--k", "2", "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "was altered after it was written (CRC32C differs)" in err
    assert not (tmp_path / "run").exists()


def test_a_seed_list_trains_each_sae_once_per_seed_in_one_run(small, tmp_path, run_cli):
    from dataclasses import replace

    from clipsae.train.init import initial_decoder
    from clipsae.train.spec import SAESpec

    code, out, err = run_cli(*_train(small, tmp_path / "seeds", "--seed", "0,1,2"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir() if p.is_dir()) == \
        ["topk-x4-k4-seed0", "topk-x4-k4-seed1", "topk-x4-k4-seed2"]
    run = json.loads((tmp_path / "seeds" / "run.json").read_text())["identity"]
    assert run["seed"] == 0 and [s["seed"] for s in run["saes"]] == [0, 1, 2]
    w = [load_file(tmp_path / "seeds" / f"topk-x4-k4-seed{s}" / "sae_weights.safetensors")["W_dec"] for s in range(3)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    # Seed 1's SAE starts where a run with --seed 1 alone starts.
    spec = SAESpec("topk", 16, 4, k=4)
    assert torch.equal(initial_decoder(replace(spec, seed=1), 0), initial_decoder(spec, 1))
    code, _, err = run_cli(*_train(small, tmp_path / "twice", "--seed", "1,1"))
    assert code == 1 and "names a seed twice" in err


def test_one_seed_keeps_the_run_as_it_was(small, tmp_path, run_cli):
    assert run_cli(*_train(small, tmp_path / "one", "--seed", "3"))[0] == 0
    run = json.loads((tmp_path / "one" / "run.json").read_text())["identity"]
    assert run["seed"] == 3 and "seed" not in run["saes"][0] and (tmp_path / "one" / "sae_weights.safetensors").is_file()
