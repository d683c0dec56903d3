"""``clipsae serve`` as a process: the line it prints, a free port, Ctrl-C, tokens and bad options."""

import json
import os
import signal
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT


def start(*args):
    """``clipsae serve ARGS`` started as from a terminal (SIGINT at its default, see tests/clipsae/test_cli_startup.py)."""
    import subprocess

    code = "import signal, sys, os; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, sys.executable, "-m", "clipsae", "serve", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_prints_its_url_answers_and_stops_on_ctrl_c(vit_encoded):
    store, _ = vit_encoded
    proc = start("--store", store, "--codes", "l3", "--codes", f"{store}:emb", "--port", "0", "--device", "cpu")
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:") and line.endswith("/"), line + proc.stderr.read()
        with urllib.request.urlopen(line.split()[1] + "api/codes", timeout=60) as r:
            assert [c["name"] for c in json.load(r)] == ["l3", "emb"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        err = proc.stderr.read()
        assert err.strip().splitlines()[-1] == "stopped serving" and "Traceback" not in err, err
    finally:
        proc.kill()


def test_any_other_host_gets_a_generated_token_and_refuses_requests_without_it(vit_encoded):
    store, _ = vit_encoded
    proc = start("--store", store, "--codes", "l3", "--host", "0.0.0.0", "--port", "0", "--device", "cpu")
    try:
        line = proc.stdout.readline().strip()
        assert "?token=" in line, line
        port, token = line.split(":")[2].split("/")[0], line.split("?token=")[1]
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/codes", timeout=60)
        assert exc.value.code == 401
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/codes", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        proc.kill()


@pytest.mark.parametrize("args, says", [
    (["--codes", "l3"], "names no store"),
    (["--store", "{store}", "--codes", "nope"], "no codes named 'nope'"),
    (["--store", "{store}", "--codes", "l3", "--port", "70000"], "--port must be in"),
    (["--store", "{store}", "--codes", "l3", "--host", "example.org", "--token", "long-enough"], "not an IP address"),
    (["--store", "{store}", "--codes", "l3", "--token", "short"], "at least 8"),
])
def test_bad_options_get_one_line(vit_encoded, run_cli, args, says):
    store, _ = vit_encoded
    code, out, err = run_cli("serve", *[a.format(store=store) for a in args])
    assert code == 1 and says in err and len(err.strip().splitlines()) == 1, err


def test_index_only_builds_and_exits(vit_encoded, run_cli):
    store, _ = vit_encoded
    code, out, err = run_cli("serve", "--store", store, "--codes", "l3", "--index-only", "--device", "cpu")
    assert code == 0 and "ready for l3" in out
    assert (store / "codes" / "l3-analysis" / "explore-index" / "index.json").is_file()
    assert "CLIPSAE_DEBUG" not in os.environ


def test_two_processes_starting_at_once_build_the_index_once(tmp_path):
    import subprocess

    from clipsae.analysis.encode import EncodeConfig, run_encode
    from tests.analysis.helpers import make_store, sae_weights, saelens_dir

    store = make_store(tmp_path / "s.zarr", n_parts=3, per_part=6)
    run_encode(EncodeConfig(store, saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 4}, sae_weights(5)),
                            progress=False))
    procs = [subprocess.Popen([sys.executable, "-m", "clipsae", "serve", "--store", str(store), "--codes", "sae",
                               "--index-only", "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum("explore index: top" in err for _, err in results) == 1, results
    assert (store / "codes" / "sae-analysis" / "explore-index" / "index.json").is_file()
