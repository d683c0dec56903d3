"""Checkpoints written on a background thread: what is written is the state of its step, one write at a
time, and a failed write is reported."""

import json
import threading

import pytest
import torch

from clipsae.store.writer import write_store
from clipsae.train import trainer
from clipsae.train.checkpoint_writer import CheckpointWriter, host_copy
from tests.train.planted import planted_dictionary


def test_host_copy_is_not_changed_by_later_in_place_updates():
    w = torch.ones(3)
    state = {"saes": [{"W": w}], "opts": ({"m": w * 2},), "step": 4}
    copy = host_copy(state)
    w.add_(1)
    state["opts"][0]["m"].add_(1)
    assert torch.equal(copy["saes"][0]["W"], torch.ones(3))
    assert torch.equal(copy["opts"][0]["m"], torch.full((3,), 2.0))
    assert copy["step"] == 4 and isinstance(copy["opts"], tuple)


def test_writes_run_one_at_a_time_in_order_off_the_calling_thread():
    writer, order, threads = CheckpointWriter(), [], set()
    release = [threading.Event(), threading.Event()]

    def write(i):
        def run():
            release[i].wait(10)
            threads.add(threading.current_thread().name)
            order.append(i)
        return run

    writer.submit(write(0), "a")
    assert order == [] and not writer.done()  # the first write is held, and submit returned without waiting
    with pytest.raises(RuntimeError, match="uncollected"):
        writer.submit(write(1), "b")  # its result would be lost
    release[0].set()
    assert writer.wait()[0] == "a" and order == [0]
    writer.submit(write(1), "b")
    release[1].set()
    assert writer.wait()[0] == "b" and order == [0, 1]
    assert threads == {"clipsae-checkpoint"}
    assert writer.wait() is None and writer.done()


def test_a_failed_write_is_raised_where_the_writer_is_next_waited_for():
    writer = CheckpointWriter()

    def fail():
        raise OSError("No space left on device")

    writer.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert writer.wait() is None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "s.zarr"
    acts, _ = planted_dictionary(512, 2, 16, 32, mean_active=2, seed=3)
    write_store(path, {"x": acts}, [f"k{i}" for i in range(512)], attrs={"model": "planted"})
    return path


def test_a_checkpoint_written_while_training_goes_on_holds_its_own_steps_weights(store, tmp_path, run_cli,
                                                                                   monkeypatch):
    """Each write is held until the loop has taken two more steps: the file must still hold the
    weights as they were at its step (a write from the live tensors would hold later ones)."""
    steps_done, after_step, written = [0], {}, {}
    moved = threading.Condition()
    real_optimise, real_save = trainer.optimise, trainer.save_checkpoint

    def optimise(sae, *a, **kw):
        out = real_optimise(sae, *a, **kw)
        with moved:
            steps_done[0] += 1
            after_step[steps_done[0]] = sae.W_dec.detach().clone()
            moved.notify_all()
        return out

    def save(out, state):
        if state["step"] < 9:  # the last checkpoint is waited for: the loop has ended
            with moved:
                assert moved.wait_for(lambda: steps_done[0] >= state["step"] + 2, timeout=60)
        written[state["step"]] = state["saes"][0]["W_dec"].clone()
        real_save(out, state)

    monkeypatch.setattr(trainer, "optimise", optimise)
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--store", store, "--arch", "topk", "--k", "4", "--expansion", "2",
                           "--batch-size", "64", "--steps", "9", "--checkpoint-every", "3", "--out", out, "--quiet")
    assert code == 0, err
    assert sorted(written) == [0, 3, 6, 9]
    for step in (3, 6, 9):
        assert torch.equal(written[step], after_step[step])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["split"] == "checkpoint"]
    assert [r["step"] for r in logged] == [0, 3, 6, 9]
    assert all(r["write_seconds"] >= 0 and r["seconds"] >= 0 for r in logged)


def test_a_failed_checkpoint_write_stops_the_run_with_one_line(store, tmp_path, run_cli, monkeypatch):
    real_save = trainer.save_checkpoint

    def save(out, state):
        if state["step"] == 3:
            raise OSError(28, "No space left on device")
        real_save(out, state)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--store", store, "--arch", "topk", "--k", "4", "--expansion", "2",
                           "--batch-size", "64", "--steps", "9", "--checkpoint-every", "3", "--out", out, "--quiet")
    assert code != 0
    assert "No space left on device" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 0
