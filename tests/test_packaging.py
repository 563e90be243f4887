"""pyproject's explicit package list covers every sub-package (a wheel must not drop one)."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("ir", "compiler", "passes", "codegen", "runtime")


def test_every_subpackage_is_listed():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(conf["tool"]["setuptools"]["packages"])
    found = {"lowbit"}
    for top in SOURCE_DIRS:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("lowbit",) + rel))
    assert found - listed == set(), f"add to pyproject [tool.setuptools] packages: {found - listed}"
    assert listed - found == set(), f"listed but missing on disk: {listed - found}"
