"""Data flows one way: pipeline → store → train → analysis; the command group sits on top of all."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# What each stage must never import, directly or through anything it imports.
FORBIDDEN = {
    "clipsae.store": ("clipsae.cli", "clipsae.pipeline", "clipsae.train"),
    "clipsae.pipeline": ("clipsae.cli", "clipsae.train"),
    "clipsae.train": ("clipsae.cli", "clipsae.pipeline"),
    # Analysis uses the store and the inference SAE, never the trainer.
    "clipsae.analysis": ("clipsae.cli", "clipsae.train.trainer", "clipsae.train.sae", "clipsae.train.data",
                         "clipsae.train.archs", "clipsae.train.configure"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_stage_imports_no_later_stage_nor_the_command_group(package):
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        f"for m in pkgutil.walk_packages(pkg.__path__, {package!r} + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[package]))
    assert bad == []
