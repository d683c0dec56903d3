import random
import tarfile

import pytest

from clipsae.errors import ClipsaeError
from clipsae.pipeline.folder_shards import make_shards_from_folder
from clipsae.pipeline.shards import expand_shards, name_parts
from clipsae.pipeline.synthetic import draw


def _touch(paths):
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_brace_pattern_directory_and_list_file_name_the_same_tars(tmp_path):
    _touch([tmp_path / f"{i:03d}.tar" for i in range(3)])
    (tmp_path / "list.txt").write_text("000.tar\n001.tar\n002.tar\n")
    by_pattern = expand_shards(str(tmp_path / "{000..002}.tar"))
    assert by_pattern == expand_shards(str(tmp_path)) == expand_shards(str(tmp_path / "list.txt"))


def test_a_missing_shard_in_the_pattern_is_named(tmp_path):
    _touch([tmp_path / "000.tar"])
    with pytest.raises(ClipsaeError, match="1 of 2 shards"):
        expand_shards(str(tmp_path / "{000..001}.tar"))


def test_part_names_use_parent_folders_only_when_stems_repeat(tmp_path):
    _touch([tmp_path / "train" / "0.tar", tmp_path / "val" / "0.tar"])
    names = [s.part for s in name_parts([str(tmp_path / "val" / "0.tar"), str(tmp_path / "train" / "0.tar")])]
    assert names == ["train__0", "val__0"]
    assert [s.part for s in name_parts([str(tmp_path / "train" / "0.tar")])] == ["0"]


def test_shards_make_labels_by_sorted_class_folder(tmp_path, run_cli):
    rng = random.Random(0)
    for cls, n in (("n02_dog", 3), ("n01_cat", 2)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            draw(0, rng).save(tmp_path / "src" / cls / f"{i}.JPEG")
    code, out, err = run_cli("shards", "make", "--from-folder", tmp_path / "src", "--out", tmp_path / "tars", "--per-shard", "4")
    assert code == 0, err
    tars = sorted((tmp_path / "tars").glob("*.tar"))
    assert len(tars) == 2
    labels = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".cls"):
                    labels[m.name] = int(tf.extractfile(m).read())
    assert sorted(labels.values()) == [0, 0, 1, 1, 1]
    assert (tmp_path / "tars" / "classes.json").read_text().count("n01_cat") == 1


def test_shards_make_refuses_a_folder_without_classes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsaeError, match="no class folders"):
        make_shards_from_folder(str(tmp_path / "empty"), str(tmp_path / "out"))
