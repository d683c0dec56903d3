"""Text embeddings: asked again with the same model, prompt and words, they are those made the first time."""

import torch

from clipsae.analysis.model import joint_space
from clipsae.pipeline.config import ModelConfig
from clipsae.pipeline.model import load_clip


def test_text_embeddings_asked_again_equal_fresh_ones_and_are_not_recomputed(monkeypatch):
    clip = load_clip(ModelConfig("RN50"))
    words = ["red circle", "blue square"]
    first = joint_space.text_embeddings(clip.model, clip.tokenizer, words)
    joint_space._TEXT.clear()
    fresh = joint_space.text_embeddings(clip.model, clip.tokenizer, words)
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)
    first.zero_()  # a caller's change to what it was given is not kept

    calls = []
    encode = clip.model.encode_text
    monkeypatch.setattr(clip.model, "encode_text", lambda t: calls.append(t) or encode(t))
    again = joint_space.text_embeddings(clip.model, clip.tokenizer, words)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    assert calls == []
    joint_space.text_embeddings(clip.model, clip.tokenizer, words, prompt="{}")
    assert len(calls) == 1  # another prompt is another text
