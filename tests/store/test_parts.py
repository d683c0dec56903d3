"""One classification of a group's parts (store/parts.py), the same for the reader, encode, status and verify."""

import json
import subprocess
import sys

import numpy as np

from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.parts import COMPLETE, DAMAGED, IN_PROGRESS, INTERRUPTED, scan_parts
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
