"""The wheel holds every package: pyproject's list matches the folders that hold an __init__.py."""

import tomllib

from tests.conftest import ROOT


def test_pyproject_lists_every_package_folder():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {"clipsae": "clipsae", **tool["package-dir"]}
    found = set()
    for package, folder in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert set(tool["packages"]) == found
