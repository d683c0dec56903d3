import numpy as np
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from clipsae.train.data import RowSource, ShuffleStream, holdout_mask

N_IMAGES, TOKENS, D = 120, 5, 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    """Every value names its row: acts[i, t] = (i, t, i, t), in twelve parts (chunks) of ten images."""
    path = tmp_path_factory.mktemp("data") / "s.zarr"
    i, t = np.meshgrid(np.arange(N_IMAGES), np.arange(TOKENS), indexing="ij")
    acts = np.stack([i, t, i, t], -1).astype(np.float32)
    keys = [f"img{j:04d}" for j in range(N_IMAGES)]
    for p in range(12):
        sl = slice(10 * p, 10 * (p + 1))
        write_store(path, {"h": acts[sl]}, keys[sl], attrs={"model": "m"}, part=f"part-{p:05d}",
                    layouts={"h": {"cls_token": True, "grid": [2, 2]}})
    return ActivationStore.open(path)


def _source(store, tokens="all", holdout=0.0, seed=0) -> RowSource:
    held = holdout_mask(store.keys(), holdout, seed)
    return RowSource(store, "h", store.token_indices("h", tokens), ~held)


def _ids(batch: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(r[0]), int(r[1])) for r in batch]


def test_holdout_is_a_stable_seeded_split_of_keys():
    keys = np.array([f"k{i}" for i in range(20000)])
    a = holdout_mask(keys, 0.1, seed=3)
    assert np.array_equal(a, holdout_mask(keys, 0.1, seed=3))
    assert not np.array_equal(a, holdout_mask(keys, 0.1, seed=4))
    assert abs(a.mean() - 0.1) < 0.01
    # The split of a key does not depend on which other keys exist.
    assert np.array_equal(holdout_mask(keys[::7], 0.1, seed=3), a[::7])


def test_token_selection_picks_cls_patches_or_all(store):
    assert {t for _, t in _ids(torch.from_numpy(_source(store, "cls").rows(0)))} == {0}
    assert {t for _, t in _ids(torch.from_numpy(_source(store, "patches").rows(0)))} == {1, 2, 3, 4}
    assert _source(store, "all").n_rows == N_IMAGES * TOKENS


def test_stream_serves_every_training_row_and_never_a_heldout_one(store):
    src = _source(store, "patches", holdout=0.25, seed=1)
    held = holdout_mask(store.keys(), 0.25, 1)
    stream = ShuffleStream(src, batch_size=16, buffer_rows=64, seed=0)
    seen = []
    for _ in range(2 * src.n_rows // 16):
        seen += _ids(stream.next_batch())
    stream.close()
    train_rows = {(i, t) for i in np.flatnonzero(~held) for t in range(1, TOKENS)}
    assert set(seen) == train_rows
    assert not {i for i, _ in seen} & set(np.flatnonzero(held).tolist())


def test_stream_order_is_shuffled_across_chunks(store):
    stream = ShuffleStream(_source(store), batch_size=32, buffer_rows=256, seed=0)
    first = _ids(stream.next_batch())
    stream.close()
    assert len({i // 10 for i, _ in first}) > 1, "a batch should mix rows of different parts"
    assert first != sorted(first)


def test_each_epoch_has_its_own_chunk_order(store):
    stream = ShuffleStream(_source(store), batch_size=8, buffer_rows=64, seed=0)
    assert not np.array_equal(stream.order(0), stream.order(1))
    assert sorted(stream.order(1)) == list(range(len(stream.source.chunks)))


def test_resumed_stream_serves_the_same_batches(store):
    a = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    for _ in range(13):
        a.next_batch()
    state = a.state_dict()
    expected = [_ids(a.next_batch()) for _ in range(60)]
    a.close()
    b = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    b.load_state_dict(state)
    assert [_ids(b.next_batch()) for _ in range(60)] == expected
    b.close()


def test_stream_of_nothing_is_refused(store):
    src = RowSource(store, "h", np.arange(TOKENS), np.zeros(N_IMAGES, dtype=bool))
    with pytest.raises(ClipsaeError, match="no training rows"):
        ShuffleStream(src, batch_size=8, buffer_rows=64, seed=0)


def test_stream_state_names_its_rows_instead_of_copying_them(store):
    a = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    for _ in range(13):
        a.next_batch()
    state = a.state_dict()
    a.close()
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)] + state["queued_src"]
    assert all(t.dtype == torch.int64 for t in tensors if t is not state["rng"])
    assert "pool" not in state and "queued" not in state


def test_stream_resumed_from_a_checkpoint_of_rows_serves_the_same_batches(store):
    """A checkpoint written before provenance held the buffer's rows and queued batches themselves."""
    a = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    for _ in range(13):
        a.next_batch()
    state = a.state_dict()
    # The same position as an older clipsae saved it, the rows themselves (read back from this
    # consistent snapshot: the producer thread runs on as soon as state_dict returns).
    old = {k: v for k, v in state.items() if not k.endswith("_src")}
    old["pool"], old["spill"] = a.buffer.rows_at(state["pool_src"]), a.buffer.rows_at(state["spill_src"])
    old["queued"] = [a.buffer.rows_at(src) for src in state["queued_src"]]
    expected = [_ids(a.next_batch()) for _ in range(60)]
    a.close()
    b = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    b.load_state_dict(old)
    got = [_ids(b.next_batch()) for _ in range(30)]
    again = b.state_dict()
    assert "pool" in again and "queued" in again  # it keeps saving rows it cannot name
    c = ShuffleStream(_source(store), batch_size=16, buffer_rows=100, seed=5)
    c.load_state_dict(again)
    got += [_ids(c.next_batch()) for _ in range(30)]
    b.close()
    c.close()
    assert got == expected
