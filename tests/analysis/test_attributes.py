import numpy as np
import pytest

from clipsae.analysis.attributes import from_csv, from_tars
from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from tests.analysis.helpers import make_store, store_from_tars


@pytest.fixture
def store(tmp_path):
    return ActivationStore.open(make_store(tmp_path / "s.zarr", n_parts=1, per_part=6))


def test_csv_binary_numeric_and_categorical_columns(store, tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("image_id,Smiling,age,hair\n"
                   "img00000.jpg,1,30,black\nimg00001.jpg,-1,41,blond\nimg00002.jpg,1,,black\n"
                   "img00003.jpg,-1,25,NA\nimg00004.jpg,1,33,blond\nother.jpg,1,20,black\n")
    a = from_csv(store, csv)
    assert a.names == ["Smiling", "age", "hair=black", "hair=blond"] and a.binary.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(a.values_AI[0], [1, 0, 1, 0, 1, np.nan])  # CelebA's −1 is 0
    np.testing.assert_array_equal(a.values_AI[1], [30, 41, np.nan, 25, 33, np.nan])
    np.testing.assert_array_equal(a.values_AI[2], [1, 0, 1, np.nan, 0, np.nan])
    assert a.images_unnamed == 1 and a.entries_unused == 1
    assert a.missing_A().tolist() == [1, 2, 2, 2]
    assert "1 store images have no entry, 1 entries name images not in the store" in a.summary()[0]


def test_constant_attributes_are_left_out_and_said(store, tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("key,same,x\n" + "".join(f"img{i:05d},1,{i}\n" for i in range(6)))
    a = from_csv(store, csv)
    assert a.names == ["x"] and any("same left out" in n for n in a.notes)


@pytest.mark.parametrize("text, message", [("key,a\nimg00000,1\nimg00000,0\n", "appears twice"),
                                           ("key\nimg00000\n", "at least one attribute column"),
                                           ("key,a\nimg00000,1\n", "no attribute varies"),
                                           ("key,a\nx1,1\nx2,0\nx3,1\n",
                                            "none of its 3 keys is the key of an image in the store "
                                            "\\(its first is 'x1'; the store's first is 'img00000'\\)")])
def test_bad_csvs_are_one_line(store, tmp_path, text, message):
    csv = tmp_path / "a.csv"
    csv.write_text(text)
    with pytest.raises(ClipsaeError, match=message):
        from_csv(store, csv)


def test_json_fields_come_from_the_tars_the_store_names(shards, tmp_path):
    from clipsae.pipeline.synthetic import CLASSES

    s = ActivationStore.open(store_from_tars(tmp_path / "s.zarr", sorted(shards.glob("*.tar"))))
    a = from_tars(s, ["colour", "size"])
    assert [n for n in a.names if n.startswith("colour=")] == ["colour=blue", "colour=green", "colour=red"]
    red = a.values_AI[a.names.index("colour=red")]
    assert ((red == 1) == np.array(["red" in CLASSES[lab] for lab in s.labels()])).all()
    size = a.values_AI[a.names.index("size")]
    assert not a.binary[a.names.index("size")] and (0 < size).all() and (size < 0.5).all()
    with pytest.raises(ClipsaeError, match="no sample's .json has the field 'smiling'"):
        from_tars(s, ["smiling"])
