import csv

import numpy as np
import pytest
import torch

from clipsae.analysis.features.top_images import TopImages
from clipsae.analysis.model.joint_space import directions_to_joint, text_embeddings
from clipsae.analysis.model.name_features import best_words, weighted_mean_embeddings
from clipsae.pipeline.config import ModelConfig
from clipsae.pipeline.model import load_clip
from clipsae.store.writer import write_store
from tests.analysis.helpers import saelens_dir

WORDS = ["tench", "goldfish", "red circle", "blue square", "church", "parachute"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(ModelConfig("ViT-B-32", None, init_seed=0))


@pytest.fixture(scope="module")
def text(clip):
    return text_embeddings(clip.model, clip.tokenizer, WORDS)


def test_text_embeddings_are_the_models_unit_embeddings_of_the_prompt(clip, text):
    want = clip.model.encode_text(clip.tokenizer(["a photo of a goldfish."]))
    assert torch.allclose(text[1], torch.nn.functional.normalize(want, dim=1)[0], atol=1e-5)


def test_directions_reach_the_joint_space_through_ln_post_and_proj(clip):
    v = clip.model.visual
    d = torch.randn(5, 768)
    assert torch.equal(directions_to_joint(d[:, :512], v, "embed"), d[:, :512])
    assert torch.allclose(directions_to_joint(d, v, "ln_post"), d @ v.proj, atol=1e-5)
    centred = (d - d.mean(1, keepdim=True)) * v.ln_post.weight
    assert torch.allclose(directions_to_joint(d, v, "resid.11"), centred @ v.proj, atol=1e-5)


def test_best_words_equal_a_full_cosine_ranking(text):
    x = torch.randn(9, text.shape[1])
    got = best_words(x, text, 3, block=4)
    cos = torch.nn.functional.normalize(x, dim=1) @ text.T
    assert torch.equal(got.words_FR, cos.topk(3, dim=1).indices)


def test_weighted_mean_embedding_weights_each_top_image_by_its_value():
    emb = {3: torch.tensor([1.0, 0.0]), 5: torch.tensor([0.0, 1.0])}
    top = TopImages(np.array([[3, 5], [-1, -1]]), np.array([[3.0, 1.0], [0, 0]], np.float32), np.zeros((2, 2), int))
    got = weighted_mean_embeddings(top, emb, 2)
    assert torch.allclose(got, torch.tensor([[0.75, 0.25], [0.0, 0.0]]))


def test_planted_features_are_named_by_their_word_both_ways(clip, text, tmp_path, run_cli):
    """Store of image embeddings near three words' text embeddings; an SAE whose features 0–2 read and
    write exactly those directions. Each planted feature's best word is its own, by either method."""
    rng = np.random.default_rng(0)
    planted = [2, 4, 5]
    group = np.arange(30) % 3
    acts = (5 * text[planted].numpy()[group] + 0.05 * rng.standard_normal((30, 512))).astype(np.float32)
    write_store(tmp_path / "s.zarr", {"embed": acts[:, None]}, [f"k{i:03d}" for i in range(30)],
                attrs={"model": "ViT-B-32", "pretrained": "random-init(seed=0)"}, dtype="float32", part="p0",
                layouts={"embed": {"cls_token": True, "grid": None}})
    n = 8
    W_dec = torch.nn.functional.normalize(torch.randn(n, 512), dim=1)
    W_dec[:3] = text[planted]
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 1},
                      {"W_enc": W_dec.T.contiguous(), "b_enc": torch.full((n,), -2.0), "W_dec": W_dec, "b_dec": torch.zeros(512)})
    (tmp_path / "words.txt").write_text("\n".join(WORDS) + "\n")
    assert run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", sae, "--quiet")[0] == 0
    code, out, err = run_cli("analyze", "name-features", "--store", tmp_path / "s.zarr", "--codes", "sae",
                             "--vocab", tmp_path / "words.txt", "--words", "2", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s.zarr" / "codes" / "sae-analysis" / "names.csv")))
    for f, w in enumerate(planted):
        for method in ("decoder", "top-images"):
            best = next(r for r in rows if r["feature"] == str(f) and r["method"] == method and r["rank"] == "1")
            assert best["word"] == WORDS[w] and float(best["score"]) > 0.99, (f, method, best)


def test_random_weights_are_said_and_the_stores_class_names_are_the_default_words(tmp_path, run_cli):
    from tests.analysis.helpers import sae_weights

    (tmp_path / "tars").mkdir()
    (tmp_path / "tars" / "000.tar").write_bytes(b"")  # where the store says its images came from
    (tmp_path / "tars" / "classes.json").write_text('{"0": "red square", "1": "green circle"}')
    acts = np.random.default_rng(0).standard_normal((6, 1, 512)).astype(np.float32)
    write_store(tmp_path / "s.zarr", {"embed": acts}, [f"k{i}" for i in range(6)],
                attrs={"model": "ViT-B-32", "pretrained": "random-init(seed=0)"}, dtype="float32", part="p0",
                source=str(tmp_path / "tars" / "000.tar"), layouts={"embed": {"cls_token": True, "grid": None}})
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 2}, sae_weights(0, d=512, n=16))
    assert run_cli("encode", "--store", tmp_path / "s.zarr", "--sae", sae, "--quiet")[0] == 0
    code, out, err = run_cli("analyze", "name-features", "--store", tmp_path / "s.zarr", "--codes", "sae", "--quiet")
    assert code == 0, err
    assert "2 words ('red square', …) from the store's class names" in out
    assert "warning: the model has random weights" in out
    rows = list(csv.DictReader(open(tmp_path / "s.zarr" / "codes" / "sae-analysis" / "names.csv")))
    assert rows and {r["word"] for r in rows} <= {"red square", "green circle"}
