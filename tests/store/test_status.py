"""`clipsae status`: each part complete, in progress, interrupted or missing, and the task that owns it."""

import socket
import subprocess
import sys

import numpy as np

from clipsae.store import zarr_backend as zb
from clipsae.store.layout import HookLayout
from clipsae.store.plan import record_plan
from clipsae.store.status import format_status, store_status
from clipsae.store.writer import PartWriter, write_store

HOOK = HookLayout("blocks.0", 1, 4)


def _store(path):
    for name in ("a", "c"):
        write_store(path, {"blocks.0": np.ones((2, 4), np.float32)}, [f"{name}{i}" for i in range(2)],
                    attrs={"model": "test"}, dtype="float32", part=name)
    return path


def _states(s):
    return {p["name"]: (p["state"], p["task"]) for p in s["parts"]}


def test_parts_are_complete_in_progress_interrupted_or_missing(tmp_path):
    store = _store(tmp_path / "s.zarr")
    record_plan(store, {"command": "extract", "n_tasks": 2, "logs": "logs", "parts": ["a", "b", "c", "d", "e"]})
    PartWriter(store, "b", "b.tar", [HOOK], "float32")  # begun by this process, which runs: in progress
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    PartWriter(store, "d", "d.tar", [HOOK], "float32")
    zb.update_attributes(store / "parts" / "d", {"started_by": {"host": socket.gethostname(), "pid": int(dead.stdout), "time": 0}})
    s = store_status(store)
    assert _states(s) == {"a": ("complete", 0), "b": ("in progress", 1), "c": ("complete", 0),
                          "d": ("interrupted", 1), "e": ("missing", 0)}
    text = format_status(s)
    assert "2 of 5 parts complete, 1 in progress, 1 interrupted, 1 missing" in text
    assert "task 0: 2 of 3 parts complete" in text and "task 1: 0 of 2 parts complete" in text


def test_without_a_plan_parts_not_begun_are_unknown_unless_the_tars_are_named(tmp_path):
    store = _store(tmp_path / "s.zarr")
    s = store_status(store)
    assert _states(s) == {"a": ("complete", None), "c": ("complete", None)}
    assert "parts not begun are unknown" in format_status(s)
    assert _states(store_status(store, ["a", "b", "c"]))["b"] == ("missing", None)


def test_codes_parts_are_expected_for_every_complete_store_part(encoded, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], store)
    shutil.rmtree(store / "codes" / "sae" / "parts" / "part-002")
    zb.update_attributes(store / "codes" / "sae" / "parts" / "part-001", {"complete": False})
    parts = {p["name"]: p["state"] for p in store_status(store)["codes"]["sae"]["parts"]}
    assert parts == {"part-000": "complete", "part-001": "in progress", "part-002": "missing", "part-003": "complete"}
    assert "codes sae: 2 of 4 parts complete" in format_status(store_status(store))


def test_status_of_a_folder_that_is_no_store_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("status", "--store", tmp_path / "nothing.zarr")
    assert code == 1 and "not a store" in err and len(err.strip().splitlines()) == 1
