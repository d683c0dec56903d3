"""Options of the Slurm submissions: times, extra sbatch options, and what is refused before submitting."""

import sys

import pytest

from clipsae.errors import ClipsaeError
from clipsae.slurm import SlurmConfig, parse_extra, parse_time


@pytest.mark.parametrize("text, minutes", [("90", 90), ("4:00:00", 240), ("0:30:01", 31), ("1-12:00:00", 2160),
                                           ("30:00", 30), ("2-0", 2880)])
def test_time_limits_read_as_slurm_writes_them(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "4h", "0", "1:2:3:4"])
def test_a_time_limit_slurm_would_not_read_is_refused(text):
    with pytest.raises(ClipsaeError, match="--slurm-time"):
        parse_time(text)


def test_extra_sbatch_options_are_key_value_pairs():
    assert parse_extra(["mem=64G", "--constraint=h100", "gres-flags=enforce-binding"]) == (
        ("mem", "64G"), ("constraint", "h100"), ("gres_flags", "enforce-binding"))
    with pytest.raises(ClipsaeError, match="key=value"):
        parse_extra(["exclusive"])


def test_an_unknown_cluster_or_a_zero_throttle_is_refused():
    with pytest.raises(ClipsaeError, match="--slurm-cluster"):
        SlurmConfig(cluster="pbs")
    with pytest.raises(ClipsaeError, match="--slurm-parallel"):
        SlurmConfig(parallel=0)


def test_submitting_without_sbatch_says_where_to_run(shards, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, and none on this machine anyway
    code, _, err = run_cli("extract", "--model", "RN50", "--layers", "attnpool", "--shards", shards,
                           "--store", tmp_path / "s.zarr", "--slurm-array", "2")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert "sbatch and srun are not on PATH" in err and "--slurm-cluster local" in err


def test_missing_submitit_names_the_extra_to_install(shards, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what `import submitit` sees where it is not installed
    code, _, err = run_cli("extract", "--model", "RN50", "--layers", "attnpool", "--shards", shards,
                           "--store", tmp_path / "s.zarr", "--slurm-array", "2", "--slurm-cluster", "local")
    assert code == 1
    assert "pip install 'clipsae[slurm]'" in err


def test_the_sbatch_script_carries_every_slurm_option(tmp_path, run_cli, monkeypatch):
    """Through submitit's real Slurm executor up to sbatch, which here is a stand-in that keeps the script."""
    from tests.analysis.helpers import make_store, sae_weights, saelens_dir

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; nothing here runs it
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    store = make_store(tmp_path / "s.zarr", n_parts=3, per_part=2)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 4}, sae_weights(1))
    code, out, err = run_cli("encode", "--store", store, "--sae", sae, "--slurm-array", "3", "--slurm-partition", "gpu",
                             "--slurm-time", "1:30:00", "--slurm-gpus", "1", "--slurm-cpus", "8", "--slurm-parallel", "2",
                             "--slurm-account", "lab", "--slurm-extra", "mem=64G", "--slurm-extra", "constraint=h100",
                             "--slurm-logs", tmp_path / "logs")
    assert code == 0, err
    assert "submitted job 4242: 3 array tasks" in out and str(tmp_path / "logs" / "4242") in out
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--array=0-2%2",
                 "--account=lab", "--mem=64G", "--constraint=h100", "--job-name=clipsae-encode"):
        assert f"#SBATCH {line}\n" in script, line
