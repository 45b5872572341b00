import json
import zipfile

import pytest

from pipeline.stages.archive import inspect_archive
from pipeline.errors import ArchiveError


def _mar(path, manifest=True, files=("m.pt", "h.py")):
    with zipfile.ZipFile(path, "w") as zf:
        if manifest:
            zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
                {"model": {"modelName": "m", "serializedFile": "m.pt", "handler": "h.py"}}))
        for f in files:
            zf.writestr(f, b"x" * 1000)
    return path


def test_good_archive(tmp_path):
    manifest, config, members = inspect_archive(_mar(tmp_path / "m.mar"))
    assert manifest["model"]["serializedFile"] == "m.pt" and config == {}
    assert members == ("MAR-INF/MANIFEST.json", "h.py", "m.pt")


def test_truncated_archive(tmp_path):
    p = _mar(tmp_path / "m.mar")
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(ArchiveError, match="not a valid zip.*truncated"):
        inspect_archive(p)


def test_archive_without_manifest(tmp_path):
    with pytest.raises(ArchiveError, match="no MAR-INF/MANIFEST.json"):
        inspect_archive(_mar(tmp_path / "m.mar", manifest=False))


def test_manifest_names_missing_file(tmp_path):
    with pytest.raises(ArchiveError, match=r"lacks them"):
        inspect_archive(_mar(tmp_path / "m.mar", files=("h.py",)))


def test_sha256_mismatch_names_both_hashes(tmp_path):
    p = _mar(tmp_path / "m.mar")
    with pytest.raises(ArchiveError) as e:
        inspect_archive(p, expected_sha256="0" * 64)
    assert "0" * 64 in str(e.value) and "expected" in str(e.value)
