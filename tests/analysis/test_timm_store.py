"""A store of a timm tower with registers (DINOv3, whose 4 registers follow CLS as DINOv2 reg4's do; at
256 px it costs a fifth of DINOv2's 518) trains, encodes and analyses end to end, its
patch overlays fall on the patches (not on CLS or the registers), and analyses that need CLIP's text
tower refuse a timm model alone in one line."""

import base64
import json

import numpy as np
import pytest

from clipsae.pipeline.synthetic import make_synthetic_shards

DINO = "timm:vit_small_patch16_dinov3"
GRID = 16
PREFIX = 5  # CLS and 4 registers


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    """(store, SAE folder) of a DINOv3 store (random weights, all tokens of its last block), a TopK SAE
    trained on it and its codes 'sae'."""
    from tests.conftest import invoke_cli

    tmp = tmp_path_factory.mktemp("dino")
    make_synthetic_shards(tmp / "tars", n_images=4, per_shard=2, seed=4, masks=False)
    store, sae = tmp / "s.zarr", tmp / "sae"

    def cli(*args):
        code, _, err = invoke_cli(*args)
        assert code == 0, err

    cli("extract", "--model", DINO, "--layers", "-1", "--tokens", "all", "--shards", tmp / "tars", "--store", store,
        "--batch-size", "2", "--quiet")
    cli("train", "--store", store, "--hook", "resid.11", "--tokens", "all", "--expansion", "2", "--k", "8",
        "--steps", "30", "--batch-size", "256", "--device", "cpu", "--out", sae, "--quiet")
    cli("encode", "--store", store, "--sae", sae, "--name", "sae", "--device", "cpu", "--quiet")
    cli("analyze", "report", "--store", store, "--codes", "sae", "--per-interval", "1", "--quiet")
    return store, sae


def test_report_overlays_fall_on_the_patches_after_the_registers(dino_run):
    from clipsae.analysis.report.siblings import report_dir

    store, _ = dino_run
    records = [json.loads(p.read_text()) for p in (report_dir(store, "sae") / "features").glob("*.json")]
    assert records and all(r["grid"] == [GRID, GRID] for r in records)
    checked = 0
    for rec in records:
        for top in rec["top"]:
            cells = np.frombuffer(base64.b64decode(top["map"]), dtype=np.uint8)
            assert len(cells) == GRID * GRID
            if top["token"] >= PREFIX:  # the image's strongest token is a patch: the map peaks on its cell
                assert cells[top["token"] - PREFIX] == cells.max() > 0
                checked += 1
    assert checked > 0


def test_token_mse_shows_the_cls_and_register_tokens_apart(dino_run, run_cli):
    store, _ = dino_run
    code, out, err = run_cli("analyze", "token-mse", "--store", store, "--codes", "sae")
    assert code == 0, err
    folder = store / "codes" / "sae-analysis"
    rows = (folder / "token_mse.csv").read_text().splitlines()
    assert rows[0] == "token,role,row,col,mse,fvu"
    roles = [r.split(",")[1] for r in rows[1:]]
    assert roles[:PREFIX] == ["cls", "register1", "register2", "register3", "register4"]
    assert set(roles[PREFIX:]) == {"patch"} and len(roles) == PREFIX + GRID * GRID


@pytest.mark.parametrize("args", [["name-features"], ["search", "--text", "a dog"]])
def test_text_tower_analyses_refuse_a_timm_model_alone_in_one_line(dino_run, run_cli, args):
    store, _ = dino_run
    code, out, err = run_cli("analyze", args[0], "--store", store, "--codes", "sae", *args[1:])
    assert code == 1 and "needs CLIP's text tower" in err
    assert len(err.strip().splitlines()) == 1


def test_splice_of_a_timm_store_reports_cosines_without_zero_shot(dino_run, run_cli):
    store, _ = dino_run
    code, out, err = run_cli("analyze", "splice", "--store", store, "--codes", "sae", "--images", "2", "--device", "cpu")
    assert code == 0, err
    assert f"no zero-shot accuracy: {DINO} has no text tower" in out
    result = json.loads((store / "codes" / "sae-analysis" / "splice.json").read_text())
    assert result["zero_shot"] is None and -1 <= result["cosine_spliced"]["mean"] <= 1
