"""The wheel holds every package: pyproject's list matches the folders inside the packages (those with an
__init__.py, and folders of data such as the report's assets, which setuptools counts as packages too)."""

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
            found |= {".".join([package, *rel.parts, d.name]) for d in init.parent.iterdir()
                      if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()}
    assert set(tool["packages"]) == found
    data = tool["package-data"]["clipsae.analysis.report.assets"]
    assets = ROOT / "analysis" / "report" / "assets"
    assert {f.name for f in assets.iterdir()} == {f.name for p in data for f in assets.glob(p)}
