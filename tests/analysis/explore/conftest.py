"""Fixtures of the explorer's tests: a real ViT-B-32 store (random weights) of the synthetic tars, encoded,
and the explorer served by a real uvicorn on a free loopback port."""

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.conftest import wait_until


@pytest.fixture(scope="session")
def vit_encoded(shards, tmp_path_factory):
    """(store, SAE folder): ViT-B-32 resid.3 (all tokens) and embed over the shared tars (float32), resid.3 encoded
    by a TopK SAE as codes 'l3', embed by another as codes 'emb'."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract
    from tests.analysis.helpers import sae_weights, saelens_dir

    tmp = tmp_path_factory.mktemp("explore")
    store = tmp / "s.zarr"
    run_extract(ExtractConfig(ModelConfig("ViT-B-32"), ["3", "embed"], str(shards), str(store), batch_size=6,
                              dtype="float32", progress=False))
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": 4}, sae_weights(1, d=768, n=64))
    run_encode(EncodeConfig(store, sae, name="l3", hook="resid.3", progress=False))
    emb = saelens_dir(tmp / "sae-emb", {"architecture": "topk", "k": 3}, sae_weights(2, d=512, n=32))
    run_encode(EncodeConfig(store, emb, name="emb", hook="embed", progress=False))
    return store, sae


class Served:
    """A running explorer: its base URL and helpers to call it."""

    def __init__(self, url: str, explorer, token: str | None = None):
        self.url, self.explorer, self.token = url, explorer, token

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
        """(status, parsed JSON or bytes) of one request."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, body, kind = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(body) if kind.startswith("application/json") else body

    def get(self, path: str, **kw):
        return self.request(path, **kw)

    def post_json(self, path: str, obj) -> tuple:
        return self.request(path, json.dumps(obj).encode(), {"content-type": "application/json"})


def serve_in_thread(explorer, token: str | None = None):
    """Start uvicorn on a free loopback port in a thread; returns (Served, stop)."""
    import uvicorn

    from clipsae.analysis.explore.app import build_app
    from clipsae.analysis.explore.serve import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(explorer, token), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the explorer to start")

    def stop():
        server.should_exit = True
        thread.join(30)

    return Served(url_of(sock).rstrip("/"), explorer, token), stop


@pytest.fixture(scope="session")
def explorer(vit_encoded):
    """The Explorer of codes l3 and emb (indexes built)."""
    from clipsae.analysis.explore.config import ServeConfig
    from clipsae.analysis.explore.serve import open_explorer

    store, _ = vit_encoded
    return open_explorer(ServeConfig(store=str(store), codes=("l3", "emb"), device="cpu", progress=False))


@pytest.fixture(scope="session")
def served(explorer):
    """The explorer served on loopback without a token."""
    s, stop = serve_in_thread(explorer)
    yield s
    stop()


@pytest.fixture(scope="module")
def encoded_tar_store(shards, tmp_path_factory):
    """(store, {image: PIL image}): a store made from the shared tars, with each of its images as the tars hold them."""
    from clipsae.analysis.images import load_images
    from clipsae.store.reader import ActivationStore
    from tests.analysis.helpers import store_from_tars

    store = ActivationStore.open(store_from_tars(tmp_path_factory.mktemp("tars") / "s.zarr", sorted(shards.glob("*.tar"))))
    return store, load_images(store, range(store.n_images))
