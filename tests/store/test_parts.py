"""One classification of a group's parts (store/parts.py), the same for the reader, encode, status and verify."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.parts import (
    COMPLETE,
    DAMAGED,
    IN_PROGRESS,
    INTERRUPTED,
    GroupSchema,
    WritingPart,
    claim,
    open_group,
    scan_parts,
)
from clipsae.store.writer import write_store


def _store(tmp_path):
    rng = np.random.default_rng(0)
    for p in range(2):
        write_store(tmp_path / "s.zarr", {"h": rng.standard_normal((3, 4)).astype(np.float32)}, [f"k{p}{i}" for i in range(3)],
                    attrs={"model": "m"}, part=f"p{p}")
    return tmp_path / "s.zarr"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_each_state_is_told_apart(tmp_path):
    import socket

    store = _store(tmp_path)
    parts = store / layout.PARTS
    zb.create_group(parts / "running", {layout.COMPLETE: False, layout.STARTED_BY: {"host": "elsewhere", "pid": 1}})
    zb.create_group(parts / "died", {layout.COMPLETE: False,
                                      layout.STARTED_BY: {"host": socket.gethostname(), "pid": _dead_pid()}})
    (parts / "nometa").mkdir()
    (parts / "p1" / zb.META).write_text('{"torn')
    states = {p.name: p.state for p in scan_parts(parts)}
    assert states == {"p0": COMPLETE, "p1": DAMAGED, "running": IN_PROGRESS, "died": INTERRUPTED, "nometa": IN_PROGRESS}


def test_reader_status_and_verify_agree_on_a_damaged_part(tmp_path, run_cli):
    from clipsae.store.reader import ActivationStore
    from clipsae.store.status import store_status

    store = _store(tmp_path)
    (store / layout.PARTS / "p1" / zb.META).write_text('{"torn')
    s = ActivationStore.open(store)
    assert s.damaged_parts == ["p1"] and [p.name for p in s.parts] == ["p0"]
    assert {p["name"]: p["state"] for p in store_status(store)["parts"]} == {"p0": COMPLETE, "p1": DAMAGED}
    code, out, _ = run_cli("status", "--store", store)
    assert "1 damaged" in out and "damaged: p1" in out
    code, out, err = run_cli("store", "verify", store)
    assert code == 1 and "p1" in out + err


def test_encode_encodes_a_damaged_codes_part_again_and_says_so(tmp_path):
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.store.codes import Codes, codes_dir
    from clipsae.store.reader import ActivationStore
    from tests.analysis.helpers import make_store, sae_weights, saelens_dir
    from tests.conftest import tree_snapshot

    store = make_store(tmp_path / "c.zarr", n_parts=2, per_part=4)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 3}, sae_weights(0))
    run_encode(EncodeConfig(store, sae, progress=False))
    before = tree_snapshot(codes_dir(store, "sae"))
    meta = codes_dir(store, "sae") / layout.PARTS / "part-001" / zb.META
    meta.write_text(json.dumps({"torn": True})[:5])
    r = run_encode(EncodeConfig(store, sae, progress=False))
    assert r.damaged_redone == ["part-001"] and "encoded again (part-001)" in r.summary(store)
    assert tree_snapshot(codes_dir(store, "sae")).keys() == before.keys()
    Codes(ActivationStore.open(store), "sae").sums()  # whole again


def test_workers_claim_every_item_once_and_skip_complete_parts(tmp_path):
    store = _store(tmp_path)
    (store / layout.PARTS / "p1" / zb.META).write_text('{"torn')
    items = [f"p{i}" for i in range(7)]
    claims = [claim(items, str, store / layout.PARTS, 3, i) for i in range(3)]
    assert sorted(x for c in claims for x in c.todo + c.skipped) == items
    assert [c.skipped for c in claims] == [["p0"], [], []]
    assert claims[1].todo[0] == "p1" and claims[1].damaged == ["p1"]
    assert claims[0].todo == ["p3", "p6"]


SCHEMA = GroupSchema("thing", 3, nested=None, noun="thing", have="the thing has", verb="was", remedy="--thing")


def test_a_group_opens_again_only_with_its_identity_and_a_refusal_writes_nothing(tmp_path):
    record = open_group(tmp_path / "g", SCHEMA, {"a": 1, "b": (2, 3)}, {"by": "me"}, "thing g")
    assert record == {"format_version": 3, "a": 1, "b": [2, 3], "provenance": {"by": "me"}}
    assert open_group(tmp_path / "g", SCHEMA, {"a": 1, "b": [2, 3]}, {"by": "other"}, "thing g") == record
    before = (tmp_path / "g" / zb.META).read_bytes()
    with pytest.raises(ClipsaeError, match=r"thing g was made differently \(a: the thing has 1, this run has 2\)"):
        open_group(tmp_path / "g", SCHEMA, {"a": 2, "b": [2, 3]}, {}, "thing g")
    assert (tmp_path / "g" / zb.META).read_bytes() == before


def test_a_written_part_records_each_array_and_is_complete_only_when_closed(tmp_path):
    zb.create_root(tmp_path / "g", {}, subgroups=(layout.PARTS,))
    part = WritingPart(tmp_path / "g", "p", {"source": "x"})
    rows = part.appender("big", (2,), 3, "float32")
    rows.append(np.arange(14, dtype=np.float32).reshape(7, 2))
    part.write_small("small", np.arange(4))
    assert [s.state for s in scan_parts(tmp_path / "g" / layout.PARTS)] == [IN_PROGRESS]
    part.close({"n": 7})
    (state,) = scan_parts(tmp_path / "g" / layout.PARTS)
    assert state.state == COMPLETE and state.attrs["source"] == "x" and state.attrs["n"] == 7
    assert list(state.attrs[layout.CHUNKS]) == ["big", "small"]
    big = zb.Array(tmp_path / "g" / layout.PARTS / "p" / "big", state.attrs[layout.CHUNKS]["big"]["crc32c"])
    np.testing.assert_array_equal(big.read_all(), np.arange(14, dtype=np.float32).reshape(7, 2))
    assert big.n_chunks == 3 and state.started_by["pid"] == state.attrs["written_by"]["pid"]
