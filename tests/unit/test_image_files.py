"""Every image file of an ImageFolder is accounted for: symlinked folders and files are read, loops and
broken links are input errors naming them, and the files of other suffixes are counted, not hidden."""

import os
from types import SimpleNamespace

import pytest
from PIL import Image

from pipeline.errors import DatasetError
from pipeline.inputs.image import folder_images
from pipeline.report.builder import _dataset_block
from pipeline.spec import load_spec
from pipeline.stages.dataset import load_dataset
from tests.helpers import make_project


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    return path


def _folder_spec(tmp_path, root):
    return load_spec(make_project(tmp_path / "p", spec_overrides={
        "dataset": {"kind": "image", "path": str(root)},
        "model": {"factory": "tiny_model.py:build", "weights": "weights.pt", "num_classes": 3}}))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a_one", "b_two", "c_three"):
        _png(root / c / "0.png")
    return root


def test_symlinked_folders_and_files_are_read_and_counted(tmp_path, folder):
    elsewhere = tmp_path / "elsewhere"
    _png(elsewhere / "x.png")
    _png(elsewhere / "deeper" / "y.png")
    os.symlink(elsewhere, folder / "c_three" / "more")  # a linked folder, with a folder inside
    _png(tmp_path / "single" / "z.png")
    os.symlink(tmp_path / "single" / "z.png", folder / "a_one" / "z.png")
    (folder / "b_two" / "README.txt").write_text("notes")
    (folder / "b_two" / "photo.heic").write_bytes(b"not read")
    result = load_dataset(_folder_spec(tmp_path, folder))
    rows = result.rows
    assert "c_three/more/x.png" in rows.ids and "c_three/more/deeper/y.png" in rows.ids and "a_one/z.png" in rows.ids
    assert len(rows) == 6 and rows.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert rows.image_files == 6 and dict(rows.other_files) == {".heic": 1, ".txt": 1}
    block = _dataset_block(SimpleNamespace(dataset=result))
    assert block["image_files"] == 6 and block["rows"] == 6 and block["other_files"] == {".heic": 1, ".txt": 1}
    assert block["rows_sent"] is None  # no replay ran
    assert any(".heic" in n and "not read" in n for n in rows.notes)
    assert "6 image file(s) found under the 3 class folder(s)" in " ".join(rows.notes)


def test_init_counts_the_same_files(tmp_path, folder):
    """init and the dataset stage share one walk: a linked folder's images count in both."""
    import pipeline.scaffold as scaffold

    _png(tmp_path / "extra" / "e.png")
    os.symlink(tmp_path / "extra", folder / "b_two" / "linked")
    assert scaffold._image_folder(folder).image_count == 4
    assert len(load_dataset(_folder_spec(tmp_path, folder)).rows) == 4


def test_a_folder_linked_into_two_classes_is_named(tmp_path, folder):
    os.symlink(folder / "a_one", folder / "b_two" / "linked")
    with pytest.raises(DatasetError) as e:
        load_dataset(_folder_spec(tmp_path, folder))
    assert "b_two/linked" in str(e.value) and "already read as a_one" in str(e.value)


def test_a_folder_link_loop_is_an_input_error_naming_it(tmp_path, folder):
    os.symlink(folder / "c_three", folder / "c_three" / "again")
    with pytest.raises(DatasetError) as e:
        load_dataset(_folder_spec(tmp_path, folder))
    assert "c_three/again" in str(e.value) and "loop" in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("make", ["dangling", "looping"])
def test_a_broken_image_link_is_an_input_error_naming_it(tmp_path, folder, make):
    link = folder / "b_two" / "bad.png"
    if make == "dangling":
        os.symlink(tmp_path / "nowhere.png", link)
    else:
        os.symlink(link, link)
    with pytest.raises(DatasetError) as e:
        load_dataset(_folder_spec(tmp_path, folder))
    assert "b_two/bad.png" in str(e.value)
    assert ("does not exist" if make == "dangling" else "loop") in str(e.value)


def test_an_image_entry_that_is_not_a_file_is_an_input_error_naming_it(tmp_path, folder):
    os.mkfifo(folder / "a_one" / "pipe.png")  # reading it would block: never opened
    with pytest.raises(DatasetError) as e:
        load_dataset(_folder_spec(tmp_path, folder))
    assert "a_one/pipe.png" in str(e.value) and "not a regular file" in str(e.value)


def test_a_manifest_entry_that_is_not_a_file_is_named_as_such(tmp_path):
    """Before, a FIFO (or any non-file) named by a manifest was said not to exist."""
    from tests.imaging import make_image_project

    spec = make_image_project(tmp_path, per_class=1)
    (tmp_path / "img" / "red-00.png").unlink()
    os.mkfifo(tmp_path / "img" / "red-00.png")
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    assert "id red-00" in str(e.value) and "red-00.png: not a regular file" in str(e.value)
