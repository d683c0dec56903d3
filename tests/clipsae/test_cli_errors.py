"""Bad input: one line on stderr, exit status 1, and an existing store left byte-for-byte as it was."""

import pytest

from tests.conftest import tree_snapshot


@pytest.fixture(scope="module")
def existing_store(shards, tmp_path_factory):
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract

    path = tmp_path_factory.mktemp("existing") / "acts.zarr"
    run_extract(ExtractConfig(model=ModelConfig("ViT-B-32"), layers=["1"], tokens="cls", shards=str(shards),
                              store=str(path), batch_size=6, progress=False))
    return path


def _extract(shards, store, *extra):
    base = {"--model": "ViT-B-32", "--layers": "1", "--tokens": "cls", "--shards": str(shards), "--store": str(store)}
    for k, v in zip(extra[::2], extra[1::2]):
        base[k] = v
    return ["extract", "--quiet", *[x for kv in base.items() for x in kv]]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--model", "ViT-Q-99"), "unknown model 'ViT-Q-99'"),
        (("--model", "ViT-L-14", "--layers", "30"), "layer 30 is out of range: the model has 24 blocks"),
        (("--model", "RN50", "--layers", "attnpool", "--tokens", "patches"), "pooled vector with no patch tokens"),
        (("--model", "RN50", "--layers", "attnpool"), "store acts.zarr was made differently (hooks: "),
        (("--model", "RN50", "--layers", "attnpool"), "model: store has 'ViT-B-32', this run has 'RN50'"),
        (("--layers", "2"), "hooks: store has ['resid.1'], this run has ['resid.2']"),
        (("--tokens", "all"), "tokens: store has 'cls', this run has 'all'"),
        (("--dtype", "float32"), "dtype: store has 'float16', this run has 'float32'"),
        (("--seed", "1"), "pretrained: store has 'random-init(seed=0)'"),
        (("--shards", "/nonexistent/{000..003}.tar"), "no shards match"),
        (("--pretrained", "no_such_tag"), "'no_such_tag' is not a pretrained tag of ViT-B-32"),
        (("--pretrained", "/nonexistent/ckpt.pt"), "checkpoint file /nonexistent/ckpt.pt does not exist"),
        (("--worker-index", "3", "--num-workers", "2"), "--worker-index must be in 0..1"),
    ],
)
def test_bad_extract_input_gets_one_line_and_leaves_store_untouched(shards, existing_store, run_cli, extra, message):
    before = tree_snapshot(existing_store)
    code, _, err = run_cli(*_extract(shards, existing_store, *extra))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message.replace("acts.zarr", str(existing_store)) in err
    assert tree_snapshot(existing_store) == before


def test_store_path_that_is_a_file_is_refused(shards, tmp_path, run_cli):
    f = tmp_path / "acts.zarr"
    f.write_text("keep me")
    code, _, err = run_cli(*_extract(shards, f))
    assert code == 1 and "is a file" in err and f.read_text() == "keep me"


def test_directory_that_is_not_a_store_is_refused(shards, tmp_path, run_cli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    code, _, err = run_cli(*_extract(shards, tmp_path / "d"))
    assert code == 1 and "not a Zarr store" in err


def test_checkpoint_for_another_architecture_is_refused(shards, tmp_path, run_cli):
    import open_clip
    import torch

    ckpt = tmp_path / "rn50.pt"
    torch.save(open_clip.create_model("RN50").state_dict(), ckpt)
    code, _, err = run_cli(*_extract(shards, tmp_path / "s.zarr", "--pretrained", str(ckpt)))
    assert code == 1 and f"could not load checkpoint {ckpt}" in err and len(err.strip().splitlines()) == 1


def test_store_info_on_a_missing_store_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("store", "info", tmp_path / "nope.zarr")
    assert code == 1 and err.strip() == f"error: {tmp_path / 'nope.zarr'} is not an activation store (no zarr.json)"


def test_failed_weight_download_is_reported_not_hidden(shards, existing_store):
    import os

    from tests.conftest import cli_process

    before = tree_snapshot(existing_store)
    # Offline mode makes huggingface_hub fail at once instead of after its network retries.
    p = cli_process(*_extract(shards, existing_store, "--pretrained", "laion2b_s34b_b79k"),
                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.wait(timeout=120) == 1
    err = p.stderr.read()
    assert err.startswith("error: could not load pretrained weights 'laion2b_s34b_b79k' for ViT-B-32")
    assert len(err.strip().splitlines()) == 1
    assert tree_snapshot(existing_store) == before
