import os

import pytest

from clipsae.files import atomic_write, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "run.json", "old")

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_files_get_the_umasks_permissions_whatever_the_writer_chose(tmp_path):
    def private(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "w.safetensors", private)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_json_round_trips(tmp_path):
    import json

    assert json.loads(write_json(tmp_path / "a.json", {"x": [1, 2]}).read_text()) == {"x": [1, 2]}
