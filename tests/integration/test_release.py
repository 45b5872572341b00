"""A real run whose disk fills while its record is written: exit 3, the previous release intact, nothing new published."""

import errno
import json

from pipeline.report import writer
from pipeline.run.options import RunOptions
from pipeline.run.runner import run_validation
from tests.helpers import make_project


def test_a_full_disk_while_the_record_is_written_keeps_the_previous_release(no_leftovers, monkeypatch):
    tmp = no_leftovers
    store = tmp / "store"
    store.mkdir()
    (store / "tiny.mar").write_bytes(b"the previous release")
    real = writer.write_atomic

    def full(path, data):
        if path.name == "report.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(writer, "write_atomic", full)
    out = run_validation(RunOptions(spec_path=make_project(tmp / "p", rows=40), reports_dir=tmp / "reports",
                                    model_store=store, force=True))
    assert out.exit_code == 3 and type(out.error).__name__ == "RecordError", out.error
    assert "report.md" in out.error.message and "MiB free" in out.error.message
    assert (store / "tiny.mar").read_bytes() == b"the previous release"
    assert sorted(p.name for p in store.iterdir()) == [".tiny.mar.lock", "tiny.mar"]
    rep = json.loads((out.run_dir / "report.json").read_text())
    assert rep["status"] == "error" and rep["published"] is None
    assert rep["gate"]["passed"] is True, "the gate passed: only the record failed"
