"""compiler.disk_cache: the JSON caches and the numerics revision that keys sensitivities."""

import shutil

from lowbit.compiler import disk_cache as dc
from lowbit.passes.analysis import sensitivity


def test_json_cache_merges_on_save_and_survives_a_bad_file(tmp_path):
    path = tmp_path / "c.json"
    first, second = dc.JsonCache(path), dc.JsonCache(path)
    first.put("a", 1.0)
    first.save()
    second.put("b", 2.0)
    second.save()
    assert dc.JsonCache(path).entries == {"a": 1.0, "b": 2.0}
    path.write_text("{not json")
    assert dc.JsonCache(path).entries == {}


def test_an_edited_pass_changes_the_numerics_revision(tmp_path, monkeypatch):
    """Sensitivities cached before an edit to ir/ or passes/ are not read back after it."""
    for package in dc.NUMERICS_PACKAGES:
        shutil.copytree(dc.SOURCE_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(dc, "SOURCE_ROOT", tmp_path)
    dc.numerics_revision.cache_clear()
    try:
        before = dc.numerics_revision()
        assert len(before) == 16 and before == dc.numerics_revision.__wrapped__()
        key = ("m", "conv", ("w4",), "sqnr", "c", 200)
        assert f"src={before}|" in sensitivity._disk_key(key)
        source = tmp_path / "ir" / "qformats.py"
        source.write_text(source.read_text() + "\n# edited\n")
        dc.numerics_revision.cache_clear()
        assert dc.numerics_revision() != before
        assert f"src={before}|" not in sensitivity._disk_key(key)
    finally:
        dc.numerics_revision.cache_clear()
