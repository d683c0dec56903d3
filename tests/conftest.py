"""Shared fixtures: small synthetic webdataset tars and an in-process CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

# Under pytest-xdist the suite runs up to four processes on the machine's cores: a torch op that starts an
# OpenMP thread per core in each of them oversubscribes the cores, and OpenMP's threads spin while they wait.
# One thread per worker (and per command it starts, which inherit it) ran tests/train in 166 s instead of 194 s
# on 2 cores. Set before torch is first imported; a run of one process keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from clipsae.pipeline.synthetic import make_synthetic_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """The files marked ``long_file`` first, each file's tests kept together and in order: with the long ones
    started first, no worker is left running one alone at the end of the run while the others are idle."""
    items.sort(key=lambda item: item.get_closest_marker("long_file") is None)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Three tars of six labelled synthetic JPEGs each."""
    out = tmp_path_factory.mktemp("shards")
    make_synthetic_shards(out, n_images=18, per_shard=6, seed=1)
    return out


def invoke_cli(*args: str) -> tuple[int, str, str]:
    """Run ``clipsae ARGS`` in this process; returns (exit code, stdout, stderr). Usable in fixtures of any scope."""
    import contextlib
    import io

    from clipsae.cli import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    # A command's --threads sets torch's thread count for the whole process; a later test in this
    # process must not inherit it (a convolution's float sums depend on it).
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    sys.argv = ["clipsae", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
            else:
                raise AssertionError("clipsae's main() returned instead of exiting with a code")
    finally:
        sys.argv = argv
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run_cli():
    """Run ``clipsae ARGS`` in-process; returns (exit code, stdout, stderr)."""
    return invoke_cli


def cli_process(*args: str, **kw) -> subprocess.Popen:
    """Start ``python -m clipsae ARGS`` as its own process (for kill -9 and concurrency tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "clipsae", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="session")
def rn50_store(shards, tmp_path_factory) -> Path:
    """What one local process extracts from :func:`shards` (RN50 layer4 and attnpool, all tokens,
    batch 2): the store that parallel, remote and Slurm extractions must equal."""
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract

    path = tmp_path_factory.mktemp("rn50") / "ref.zarr"
    run_extract(ExtractConfig(ModelConfig("RN50"), ["layer4", "attnpool"], str(shards), str(path), batch_size=2,
                              progress=False))
    return path


def assert_same_store(a, b, *, made_elsewhere: bool = False) -> None:
    """Two stores hold the same parts, hooks, keys, labels and activations.

    Activations computed on this machine in this run compare bit for bit. ``made_elsewhere``: one
    store's activations were computed on another CPU (a checked-in fixture), whose float32 kernels sum
    in another order, so a value may round to a neighbouring float16: each value then agrees within
    two float16 units in its last place, or, near zero where float32's cancellation dominates, within
    1e-4 of the hook's largest magnitude.
    """
    import numpy as np

    from clipsae.store.reader import ActivationStore

    sa, sb = ActivationStore.open(a), ActivationStore.open(b)
    assert [p.name for p in sa.parts] == [p.name for p in sb.parts] and sa.hooks == sb.hooks
    np.testing.assert_array_equal(sa.keys(), sb.keys())
    np.testing.assert_array_equal(sa.labels(), sb.labels())
    for h in sa.hooks:
        xa, xb = sa.read(h, slice(None)), sb.read(h, slice(None))
        if not made_elsewhere:
            np.testing.assert_array_equal(xa, xb)
            continue
        assert xa.shape == xb.shape and xa.dtype == xb.dtype
        big = np.maximum(np.abs(xa), np.abs(xb))
        tol = np.maximum(2 * np.spacing(big).astype(np.float32), 1e-4 * float(big.max()))
        worst = np.abs(xa.astype(np.float32) - xb.astype(np.float32)) - tol
        assert worst.max() <= 0, f"{h}: {(worst > 0).sum()} values differ beyond float16 rounding"


def tree_snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: to show that nothing changed."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """(store path, SAE weights): a 4-part, 40-image token store encoded by a TopK SAE as codes 'sae'."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from tests.analysis.helpers import make_store, sae_weights, saelens_dir

    tmp = tmp_path_factory.mktemp("encoded")
    store = make_store(tmp / "s.zarr", n_parts=4, per_part=10, labels_mod=3)
    w = sae_weights(3)
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": 4}, w)
    run_encode(EncodeConfig(store, sae, progress=False))
    return store, w


@pytest.fixture
def codes(encoded):
    """The codes of :func:`encoded`, opened."""
    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore

    return Codes(ActivationStore.open(encoded[0]), "sae")


def wait_until(predicate, what: str, limit_s: float = 300.0, every_s: float = 0.1):
    """Poll ``predicate`` until it holds; fail naming ``what`` if it still does not after ``limit_s``.

    The limit only bounds a hung test; no assertion depends on how long anything took.
    """
    import time

    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(every_s)


def submitted_job(stdout: str) -> str:
    """The job id a ``--slurm…`` submission printed."""
    import re

    m = re.search(r"submitted job ([\d,]+)", stdout)
    assert m, stdout
    return m.group(1)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm cluster (tests/slurm_cluster.py) for the session; skipped, saying why,
    where Slurm is not installed or does not start."""
    from tests.slurm_cluster import SlurmCluster

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm") / "cluster").start()
    if cluster.why_not:
        pytest.skip(cluster.why_not)
    yield cluster
    cluster.stop()


@pytest.fixture
def on_slurm(slurm_cluster, monkeypatch):
    """The cluster, with SLURM_CONF set so that submitit's sbatch (and the jobs it starts) use it."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
