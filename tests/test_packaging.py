import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_adapters_import_under_nftkit():
    mod = importlib.import_module("nftkit.adapters.image")
    assert hasattr(mod, "ImageClassificationAdapter")


def test_every_adapter_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for init in (ROOT / "adapters").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT / "adapters").parts
        assert ".".join(("nftkit", "adapters", *rel)) in listed, f"add {init.parent} to pyproject packages"


def test_engine_imports_nothing_domain_specific():
    import re

    pattern = re.compile(r"^\s*(from|import)\s+(nftkit\.adapters|\.+adapters)\b", re.M)
    for path in (ROOT / "nftkit").rglob("*.py"):
        assert not pattern.search(path.read_text()), f"{path} imports an adapter"
