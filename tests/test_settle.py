"""kshot.settle: which outputs a run did not write itself, and when it asks DVC at all."""

import os

from kshot import settle


def test_outputs_the_last_run_stamped_are_not_foreign_and_a_rewritten_or_new_one_is(tmp_path):
    for name in ("a.pt", "b.json"):
        (tmp_path / name).write_text(name)
    assert settle.foreign(["a.pt", "b.json"], tmp_path) == ["a.pt", "b.json"]  # no stamp yet
    settle.write_stamp(["a.pt", "b.json", "missing.csv"], tmp_path)
    assert settle.foreign(["a.pt", "b.json", "missing.csv"], tmp_path) == []
    stat = (tmp_path / "a.pt").stat()
    os.utime(tmp_path / "a.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # restored
    (tmp_path / "missing.csv").write_text("new")
    assert settle.foreign(["a.pt", "b.json", "missing.csv"], tmp_path) == ["a.pt", "missing.csv"]


def test_nothing_is_touched_without_dvc_or_when_disabled(tmp_path, monkeypatch):
    (tmp_path / "a.pt").write_text("a")
    ran = []
    monkeypatch.setattr(settle, "settle", lambda *a, **k: ran.append(a) or True)
    assert not settle.dvc_clean(tmp_path)  # no .dvc, no dvc.lock
    assert settle.agree_with_dvc(["a.pt"], "Snakefile", tmp_path) is None
    monkeypatch.setattr(settle, "dvc_clean", lambda root: True)
    monkeypatch.setenv(settle.DISABLE, "0")
    assert settle.agree_with_dvc(["a.pt"], "Snakefile", tmp_path) is None
    monkeypatch.delenv(settle.DISABLE)
    assert settle.agree_with_dvc(["a.pt"], "Snakefile", tmp_path).endswith("marked up to date")
    assert len(ran) == 1
