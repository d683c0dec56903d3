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


# Stages imported one after another in one process: each is checked on what it added, since those before it
# were checked clean of what it must not import. pipeline and train forbid each other: two chains.
CHAINS = [("clipsae.store", "clipsae.pipeline", "clipsae.analysis"), ("clipsae.train",)]


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "+".join(p.removeprefix("clipsae.") for p in c))
def test_stage_imports_no_later_stage_nor_the_command_group(chain):
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for package in {list(chain)!r}:\n"
        "    pkg = importlib.import_module(package)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, package + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "    print(json.dumps([package, sorted(sys.modules)]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    for line in p.stdout.strip().splitlines()[-len(chain):]:
        package, loaded = json.loads(line)
        bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[package]))
        assert bad == [], package
    assert sorted(p for c in CHAINS for p in c) == sorted(FORBIDDEN)
