"""codegen.revision: latency cache keys change when a kernel's source does."""

import shutil

from lowbit.codegen import revision as rev


def test_revision_is_a_stable_digest():
    first = rev.revision()
    assert len(first) == 16 and int(first, 16) >= 0
    rev.revision.cache_clear()
    assert rev.revision() == first


def test_an_edited_kernel_changes_the_revision(tmp_path, monkeypatch):
    copy = tmp_path / "codegen"
    shutil.copytree(rev.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(rev, "ROOT", copy)
    rev.revision.cache_clear()
    try:
        before = rev.revision()
        assert before == rev.revision.__wrapped__()
        kernel = copy / "kernels" / "int8.py"
        kernel.write_text(kernel.read_text() + "\n# edited\n")
        assert rev.revision.__wrapped__() != before
    finally:
        rev.revision.cache_clear()
