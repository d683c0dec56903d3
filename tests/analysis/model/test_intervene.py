"""``clipsae analyze intervene`` on a real ViT-B-32 store (random weights) and its synthetic tars."""

import csv
import json

import numpy as np
import pytest
import torch

from clipsae.analysis.class_names import class_names
from clipsae.analysis.edits import parse_edits
from clipsae.analysis.model.intervene import Change, edit_codes, image_embeddings
from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.train.codes import SparseCodes, row_offsets
from tests.analysis.helpers import sae_weights, saelens_dir

pytestmark = pytest.mark.long_file


@pytest.fixture(scope="module")
def vit_codes(shards, tmp_path_factory):
    """ViT-B-32 resid.3 and ln_pre over the shared tars (float32), resid.3 encoded as 'sae', ln_pre as 'pre'."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract

    tmp = tmp_path_factory.mktemp("intervene")
    store = tmp / "s.zarr"
    run_extract(ExtractConfig(ModelConfig("ViT-B-32"), ["3", "ln_pre"], str(shards), str(store), batch_size=6,
                              dtype="float32", progress=False))
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": 4}, sae_weights(1, d=768, n=64))
    run_encode(EncodeConfig(store, sae, hook="resid.3", progress=False))
    run_encode(EncodeConfig(store, sae, name="pre", hook="ln_pre", progress=False))
    return store, sae


def _codes(rows, cols, vals, n_rows):
    r = torch.tensor(rows)
    return SparseCodes(r, torch.tensor(cols), torch.tensor(vals, dtype=torch.float32), row_offsets(r, n_rows))


def _dense(codes, n=6):
    return codes.to_dense(n).tolist()


def test_edits_set_scale_and_clamp_where_asked():
    # 2 images × 2 positions (0 = CLS, 1 = a patch); features 0..5.
    codes = _codes([0, 0, 1, 2, 3], [1, 2, 1, 1, 3], [1.0, 2.0, 3.0, 4.0, 5.0], 4)
    pos = torch.tensor([0, 1])
    out = edit_codes(codes, Change(tuple(parse_edits("1:x2,3=7", 6))), pos)
    assert _dense(out) == [[0, 2, 2, 7, 0, 0], [0, 6, 0, 7, 0, 0], [0, 8, 0, 7, 0, 0], [0, 0, 0, 7, 0, 0]]
    cls_only = edit_codes(codes, Change(tuple(parse_edits("1:0", 6)), "cls"), pos)
    assert _dense(cls_only)[0][1] == 0 and _dense(cls_only)[1][1] == 3 and _dense(cls_only)[2][1] == 0
    firing = edit_codes(codes, Change(tuple(parse_edits("3=7", 6)), "firing"), pos)
    assert [r[3] for r in _dense(firing)] == [0, 0, 0, 7]  # only where feature 3 was already active


def test_keep_top_keeps_each_tokens_largest():
    codes = _codes([0, 0, 0, 1], [4, 1, 2, 0], [1.0, 3.0, 2.0, 5.0], 2)
    out = edit_codes(codes, Change(keep_top=2), torch.tensor([0]))
    assert _dense(out) == [[0, 3, 2, 0, 0, 0], [5, 0, 0, 0, 0, 0]]


def _images(store, n=4):
    from clipsae.analysis.images import iter_image_batches
    from clipsae.pipeline.model import load_clip, store_model_config
    from clipsae.store.reader import ActivationStore

    s = ActivationStore.open(store)
    clip = load_clip(store_model_config(s.config, s.provenance))
    _, x = next(iter_image_batches(s, range(n), clip.vision.preprocess, n))
    return s, clip, x


def test_an_edit_that_changes_nothing_reproduces_the_model_bit_for_bit(vit_codes):
    from clipsae.train import load_sae

    store, sae_dir = vit_codes
    s, clip, x = _images(store)
    sae = load_sae(sae_dir)
    positions = np.arange(50)
    orig, edited = image_embeddings(clip.vision.visual, "resid.3", positions, sae,
                                    Change(tuple(parse_edits("5:x1", 64))), x)
    assert torch.equal(orig, edited)
    with torch.no_grad():
        assert torch.equal(orig, clip.vision.visual(x))


def test_an_ablation_equals_the_dense_reference(vit_codes):
    from clipsae.analysis.model.splice import replaced
    from clipsae.train import load_sae

    store, sae_dir = vit_codes
    s, clip, x = _images(store)
    sae = load_sae(sae_dir)
    from clipsae.pipeline.hooks import HookedForward, resolve_hooks

    visual = clip.vision.visual
    acts = HookedForward(visual, resolve_hooks(visual, ["3"], "all"), "all")(x)["resid.3"]
    feature = int(sae.encode(acts).sum((0, 1)).argmax())  # the feature most active on these images

    def plain(x_NPD):
        zz = sae.encode(x_NPD)
        edited = zz.clone()
        edited[..., feature] = 0
        return x_NPD + (sae.decode(edited) - sae.decode(zz))

    with torch.no_grad(), replaced(visual, "resid.3", np.arange(50), plain):
        ref = visual(x)
    _, got = image_embeddings(visual, "resid.3", np.arange(50), sae, Change(tuple(parse_edits(f"{feature}:0", 64))), x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def _run(run_cli, store, out, *args):
    code, stdout, err = run_cli("analyze", "intervene", "--store", store, "--codes", "sae", "--out", out, "--device",
                                "cpu", "--quiet", *args)
    assert code == 0, err
    return stdout


def test_intervene_writes_per_image_rows_a_summary_and_the_shifts(vit_codes, run_cli, tmp_path):
    store, _ = vit_codes
    out = _run(run_cli, store, tmp_path, "--edit", "3:0,7:x4,9=2.5", "--first", "6")
    with open(tmp_path / "intervene.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["image"]) for r in rows] == list(range(6)) and all(-1 <= float(r["cosine"]) <= 1 for r in rows)
    names = class_names(ActivationStore.open(store), None, None)
    assert all(r["pred_before_name"] == names[int(r["pred_before"])] and r["pred_after_name"] == names[int(r["pred_after"])]
               for r in rows)
    summary = json.loads((tmp_path / "intervene_summary.json").read_text())
    assert summary["edits"] == ["3:0", "7:x4", "9=2.5"] and summary["images"] == 6
    assert summary["zero_shot"]["classes"] == 12 and len(summary["zero_shot"]["gained"]) == 10
    assert (tmp_path / "intervene.png").read_bytes()[:4] == b"\x89PNG" and "random weights" in out


def test_the_contrast_shift_is_reported_per_attribute_group(vit_codes, run_cli, tmp_path):
    store, _ = vit_codes
    out = _run(run_cli, store, tmp_path, "--edit", "3:0", "--first", "18", "--contrast", "a red thing|a blue thing",
               "--group-by", "colour=red", "--attributes-json", "colour")
    groups = json.loads((tmp_path / "intervene_summary.json").read_text())["contrast"]["groups"]
    assert [g["value"] for g in groups] == [0.0, 1.0] and sum(g["images"] for g in groups) == 18
    assert "colour=red = 1 (" in out


def test_a_categorical_attribute_groups_by_its_values(vit_codes, run_cli, tmp_path):
    store, _ = vit_codes
    out = _run(run_cli, store, tmp_path, "--edit", "3:0", "--first", "18", "--contrast", "a red thing|a blue thing",
               "--group-by", "colour", "--attributes-json", "colour")
    groups = json.loads((tmp_path / "intervene_summary.json").read_text())["contrast"]["groups"]
    assert all(isinstance(g["value"], str) for g in groups) and sum(g["images"] for g in groups) == 18
    assert len(groups) > 1 and f"colour = {groups[0]['value']} (" in out


def test_keep_top_reports_accuracy_against_k(vit_codes, run_cli, tmp_path):
    store, _ = vit_codes
    _run(run_cli, store, tmp_path, "--keep-top", "1,4", "--first", "6")
    with open(tmp_path / "intervene_keep_top.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["k"] for r in rows] == ["1", "4"]
    assert float(rows[1]["mean_cosine"]) == 1.0 and float(rows[1]["agreement"]) == 1.0  # k = 4 keeps every code


def test_top_of_runs_the_features_best_images(vit_codes, run_cli, tmp_path):
    from clipsae.analysis.features.top_images import top_images
    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore

    store, _ = vit_codes
    codes = Codes(ActivationStore.open(store), "sae")
    top = top_images(codes, 3)
    f = int(np.nonzero(top.filled_F() == 3)[0][0])
    _run(run_cli, store, tmp_path, "--edit", f"{f}:0", "--top-of", str(f), "--first", "3")
    with open(tmp_path / "intervene.csv") as fh:
        assert sorted(int(r["image"]) for r in csv.DictReader(fh)) == sorted(top.images_FK[f].tolist())


@pytest.mark.parametrize("codes, args, message", [
    ("sae", ["--edit", "99:0"], "feature 99 is out of range"),
    ("sae", ["--edit", "3:y"], "has no number"),
    ("sae", [], "give --edit (or --ablate-probe) or --keep-top"),
    ("pre", ["--edit", "3:0"], "cannot be re-run from hook ln_pre"),
    ("sae", ["--edit", "3:0", "--contrast", "only one"], "two texts separated by |"),
    ("sae", ["--ablate-probe", "colour=red"], "run `clipsae analyze probe`"),
])
def test_bad_interventions_are_one_line(vit_codes, run_cli, tmp_path, codes, args, message):
    store, _ = vit_codes
    code, _, err = run_cli("analyze", "intervene", "--store", store, "--codes", codes, "--out", tmp_path, "--quiet", *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def _tiny_eva(**kw):
    import timm

    from clipsae.pipeline.towers.timm_common import TimmAlone

    trunk = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, global_pool="avg", **kw)
    return TimmAlone(trunk.eval(), (224, 224))


def _layout_and_codes(n_tokens, cls_token, registers, positions):
    from types import SimpleNamespace

    from clipsae.store.layout import HookLayout

    layout = HookLayout("resid.1", n_tokens, 192, cls_token=cls_token, grid=(16, 16), registers=registers)
    return (SimpleNamespace(layout=lambda hook: layout),
            SimpleNamespace(hook="resid.1", token_positions=np.asarray(positions)))


def test_where_patches_on_a_tower_without_cls_edits_every_patch_and_cls_is_refused():
    from clipsae.analysis.model.intervene import edited_positions

    visual = _tiny_eva(class_token=False)
    store, codes = _layout_and_codes(256, False, 0, range(256))
    assert list(edited_positions(visual, store, codes, "patches")) == list(range(256))
    with pytest.raises(ClipsaeError, match="--where cls: the tower has no CLS token"):
        edited_positions(visual, store, codes, "cls")


def test_where_cls_on_codes_of_patches_only_is_refused_and_their_positions_follow_the_registers():
    from clipsae.analysis.model.intervene import edited_positions

    visual = _tiny_eva(num_reg_tokens=4)  # CLS, then 4 registers, then the 16×16 patches
    store, codes = _layout_and_codes(256, False, 0, range(256))  # stored with --tokens patches
    assert list(edited_positions(visual, store, codes, "patches")) == list(range(5, 261))
    with pytest.raises(ClipsaeError, match="--where cls: the codes hold no CLS token"):
        edited_positions(visual, store, codes, "cls")
