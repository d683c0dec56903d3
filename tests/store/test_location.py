"""Stores on S3 (moto's threaded server as the endpoint): extract, verify, train and encode as on disk."""

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from clipsae.store.location import store_path
from clipsae.store.reader import ActivationStore, complete_parts
from tests.conftest import ROOT, assert_same_store, cli_process, invoke_cli, wait_until

pytestmark = pytest.mark.long_file

BUCKET = "clipsae-test"
EXTRACT = ["--model", "RN50", "--layers", "layer4,attnpool", "--tokens", "all", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint with a bucket, and the environment (kept for this module) that points at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise floods failure reports
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()


@pytest.fixture(scope="module")
def local_store(rn50_store):
    """The same extraction into a local folder: what the S3 store must equal."""
    return rn50_store


@pytest.fixture(scope="module")
def s3_store(s3, shards, local_store):
    """An S3 store written by two `clipsae extract` workers at once, checked against the local one."""
    url = f"{s3}/acts.zarr"
    procs = [cli_process("extract", *EXTRACT, "--shards", shards, "--store", url, "--num-workers", "2",
                         "--worker-index", str(i)) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert_same_store(url, local_store)
    return url


def test_extract_into_s3_writes_the_local_store_and_verifies(s3_store, run_cli):
    code, out, err = run_cli("store", "verify", s3_store)
    assert code == 0 and "\nok: 3 parts, 18 images" in out, err
    code, out, _ = run_cli("store", "info", s3_store)
    assert code == 0 and "images     18" in out
    code, out, _ = run_cli("status", "--store", s3_store)
    assert "3 parts complete, 0 in progress" in out


def test_a_part_a_killed_writer_left_on_s3_is_redone(s3, shards, local_store):
    url = f"{s3}/killed.zarr"
    p = cli_process("extract", *EXTRACT, "--shards", shards, "--store", url)

    def mid_part():
        parts = store_path(url) / "parts"
        begun = [n.name for n in parts.iterdir()] if parts.exists() else []
        return p.poll() is not None or (len(complete_parts(url)) >= 1 and len(begun) >= 2)

    wait_until(mid_part, "one part complete and the next begun", every_s=0.02)
    assert p.poll() is None, "extract ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(complete_parts(url)) < 3
    code, _, err = invoke_cli("extract", *EXTRACT, "--shards", shards, "--store", url)
    assert code == 0, err
    assert_same_store(url, local_store)


def test_training_and_encoding_from_s3_give_what_the_local_store_gives(s3_store, local_store, tmp_path, run_cli):
    args = ["--hook", "attnpool", "--expansion", "2", "--k", "4", "--steps", "20", "--batch-size", "8",
            "--holdout", "0", "--device", "cpu", "--quiet"]
    for name, store in (("remote", s3_store), ("local", local_store)):
        code, _, err = run_cli("train", "--store", store, *args, "--out", tmp_path / name)
        assert code == 0, err
    remote, local = (load_file(tmp_path / n / "sae_weights.safetensors") for n in ("remote", "local"))
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k], err_msg=k)

    for store in (s3_store, local_store):
        code, _, err = run_cli("encode", "--store", store, "--sae", tmp_path / "local", "--name", "sae", "--device", "cpu",
                               "--quiet")
        assert code == 0, err
    from clipsae.store.codes import Codes

    a, b = (Codes(ActivationStore.open(s), "sae") for s in (s3_store, local_store))
    for i in range(18):
        for x, y in zip(a.token_codes(i), b.token_codes(i)):
            np.testing.assert_array_equal(x, y)
    code, out, err = run_cli("analyze", "density", "--store", s3_store, "--codes", "sae", "--out", tmp_path / "an")
    assert code == 0, err
    assert (tmp_path / "an" / "density.csv").is_file()


def _one_line_error(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "clipsae", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    return lines[0]


def test_an_unknown_scheme_is_one_line():
    assert "unknown scheme ftp://" in _one_line_error("store", "info", "ftp://host/acts.zarr")


def test_missing_credentials_are_one_line(s3):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent"}
    assert "no credentials for s3://clipsae-test" in _one_line_error("store", "info", f"{s3}/acts.zarr", env=env)


def test_an_unreachable_endpoint_is_one_line(s3):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    assert "cannot reach s3://clipsae-test" in _one_line_error("status", "--store", f"{s3}/acts.zarr", env=env)
