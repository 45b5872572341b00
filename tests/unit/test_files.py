import pytest

from pipeline.files import write_atomic


def test_write_atomic_replaces_whole_file(tmp_path):
    p = tmp_path / "report.json"
    write_atomic(p, "old")
    write_atomic(p, "new")
    assert p.read_text() == "new" and [f.name for f in tmp_path.iterdir()] == ["report.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "report.json"
    write_atomic(p, "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(p, "\udcff not encodable")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["report.json"]
