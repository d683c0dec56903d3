import pytest

from clipsae.errors import ClipsaeError
from clipsae.workers import worker_slot


def test_slurm_array_with_ids_from_one(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    assert worker_slot(None, None) == (4, 3)


def test_options_win_over_slurm(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert worker_slot(2, 1) == (2, 1)


def test_worker_index_out_of_range_is_refused():
    with pytest.raises(ClipsaeError, match="0..1"):
        worker_slot(2, 2)
