"""`clipsae serve` at CLIP-Scope's scale: start time, resident memory, latency of its JSON API, and load.

The issue's goals, at 65,536 features × 1M images (codes of L0 64 on the CLS token), on the CPU: the
server starts in under 10 s and holds under 2 GB resident; a feature page's JSON, the features table
page and an image's features from cached codes each in under 300 ms; an upload's features live
(ViT-B-32) and a steer each in under 2 s; 16 clients at once for a minute with no error.

The store and its codes are synthesised, not encoded (no model or SAE runs over the images): a store
of one CLS-like token per image (hook ``resid.22``, d = --d, float16) and a pooled ``embed`` hook of
the same width (so the index computes the monosemanticity score, as with a real store), keys and
labels, in --parts parts; and codes written part by part with CodesPartWriter, each image with
--l0 distinct latents out of --features drawn from a Zipf-like law (p ∝ (rank + 50)^−1.2, ranks
shuffled over the feature ids), so densities span several decades, with exact PartSums. The codes
record an SAE folder that does not exist, so the index leaves nearest features out (codes_sae finds
no SAE), and the store names no tars, so there are no thumbnails. The server runs as its own process
(``python -m clipsae serve``); its memory is read from /proc (VmRSS, VmHWM).

References, measured in the same run: an HTTP round trip of the smallest API answer (GET
/api/codes); for the features table, the sort of the index's column alone; for a feature page, the
reads of the codes it needs (the per-image values of the images it shows, for the co-firing),
straight through Codes; for an image, its token codes and per-image values through Codes; for an
upload and a steer, the bare forward of ViT-B-32's visual tower on one image (a steer runs two).
The live part serves a second, small store: ViT-B-32 (random weights) over synthetic JPEGs, its
resid.3 encoded by a TopK SAE of --live-features latents and k = --l0 (random weights).
"""

import argparse
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import scratch  # noqa: E402
from clipsae.store.codes import Codes, CodesBlock, CodesPartWriter, PartSums, open_codes  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402

CODES = "cls"
HOOK = "resid.22"
GOAL_START_S = 10.0
GOAL_RSS_BYTES = 2e9  # 2 GB
GOAL_PAGE_S = 0.3
GOAL_LIVE_S = 2.0
SORTS = ("density", "mean_top", "label_entropy", "monosemanticity", "top_label", "feature")


# -- the synthetic store and codes ------------------------------------------------------------------------
def feature_probabilities(features: int, rng: np.random.Generator) -> np.ndarray:
    """p_f ∝ (rank + 50)^−1.2, the ranks shuffled over the feature ids."""
    p = (np.arange(features) + 50.0) ** -1.2
    out = np.empty(features)
    out[rng.permutation(features)] = p / p.sum()
    return out


def part_codes(rng: np.random.Generator, cdf: np.ndarray, scale_F: np.ndarray, n: int, l0: int,
               x_ND: np.ndarray) -> tuple[CodesBlock, PartSums]:
    """The cached codes of n images of one token each, l0 distinct latents per image (fewer only where
    the draws repeat too often), and the part's sums."""
    d_sae = len(cdf)
    draws = l0 + l0 // 4 + 8
    lat = np.minimum(np.searchsorted(cdf, rng.random((n, draws)), side="right"), d_sae - 1).astype(np.int32)
    # Keep each latent's first draw in a row, then the first l0 of those.
    order = np.argsort(lat, axis=1, kind="stable")
    s = np.take_along_axis(lat, order, 1)
    dup_sorted = np.zeros(s.shape, bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    keep = np.empty_like(dup_sorted)
    np.put_along_axis(keep, order, ~dup_sorted, 1)
    keep &= np.cumsum(keep, axis=1) <= l0
    val = (scale_F[lat] * rng.gamma(2.0, 0.5, lat.shape)).astype(np.float32)
    counts = keep.sum(1).astype(np.int32)
    # Per token: the l0 largest, in descending order (−1 for none).
    by_value = np.argsort(np.where(keep, -val, np.inf), axis=1, kind="stable")[:, :l0]
    tok_keep = np.take_along_axis(keep, by_value, 1)
    tok_lat = np.where(tok_keep, np.take_along_axis(lat, by_value, 1), -1).astype(np.int32)
    tok_val = np.where(tok_keep, np.take_along_axis(val, by_value, 1), 0).astype(np.float32)
    # Per image: the latents ascending.
    by_latent = np.argsort(np.where(keep, lat, d_sae), axis=1, kind="stable")
    e_keep = np.take_along_axis(keep, by_latent, 1)
    lat_E = np.take_along_axis(lat, by_latent, 1)[e_keep]
    val_E = np.take_along_axis(val, by_latent, 1)[e_keep]
    block = CodesBlock(tok_lat, tok_val, counts, counts, lat_E, val_E, np.zeros(len(lat_E), np.int32), val_E, val_E)
    fired = np.bincount(lat_E, minlength=d_sae).astype(np.int64)
    x = x_ND.astype(np.float64)
    x_sq = float((x ** 2).sum())
    sums = PartSums(fired, fired.copy(), np.bincount(lat_E, val_E.astype(np.float64), d_sae),
                    np.bincount(lat_E, val_E.astype(np.float64) ** 2, d_sae), np.array([0.25 * x_sq]),
                    np.array([x_sq]), x.sum(0, keepdims=True), n_images=n)
    return block, sums


def make_store(path: Path, images: int, parts: int, features: int, l0: int, d: int) -> int:
    """Write the store and its codes; the number of per-image entries."""
    rng = np.random.default_rng(0)
    cdf = np.cumsum(feature_probabilities(features, rng))
    cdf /= cdf[-1]
    scale_F = rng.lognormal(0.0, 0.5, features)
    identity = {"sae": {"format": "saelens", "weights_sha256": "0" * 64, "architecture": "topk", "d_in": d,
                        "d_sae": features, "k": l0},
                "hook": HOOK, "tokens": "cls", "token_positions": [0], "width": l0, "cls_encoded": True}
    bounds = np.linspace(0, images, parts + 1).astype(int)
    entries = 0
    codes_path = None
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = int(hi - lo)
        x = rng.standard_normal((n, d), dtype=np.float32).astype(np.float16)
        e = rng.standard_normal((n, d), dtype=np.float32).astype(np.float16)
        name = f"p{i:05d}"
        write_store(path, {HOOK: x, "embed": e}, [f"img{j:08d}" for j in range(lo, hi)],
                    labels=rng.integers(0, 1000, n), attrs={"model": "ViT-L-14", "tokens": "cls"}, part=name,
                    layouts={HOOK: {"cls_token": True}})
        if codes_path is None:
            codes_path = open_codes(path, CODES, identity, {"sae_path": str(path.parent / "no-such-sae")})
        block, sums = part_codes(rng, cdf, scale_F, n, l0, x)
        writer = CodesPartWriter(codes_path, name, n, 1, l0, features, True)
        writer.append(block)
        writer.close(sums)
        entries += len(block.image_latents_E)
    return entries


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- the server as its own process ------------------------------------------------------------------------
class Server:
    """``python -m clipsae serve`` as a subprocess: its URL, start time and memory."""

    def __init__(self, codes: list[str], log: Path):
        self.log = open(log, "w")
        t = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "clipsae", "serve", *(f for c in codes for f in ("--codes", c)),
                                      "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=self.log,
                                     text=True)
        for line in self.proc.stdout:
            if line.startswith("serving http://"):
                break
        else:
            self.proc.wait()
            self.log.close()
            sys.exit(f"the server did not start (status {self.proc.returncode}):\n{log.read_text()[-3000:]}")
        self.start_s = time.perf_counter() - t
        url = line.split()[1].removeprefix("http://").rstrip("/")
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes."""
        got = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(value.split()[0]) * 1024
        return got["VmRSS"], got["VmHWM"]

    def cpu_s(self) -> float:
        """CPU-seconds the server has used."""
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one request on a kept-alive connection."""
    t = time.perf_counter()
    conn.request(method, path, body, headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, data, time.perf_counter() - t


def timed_gets(conn, paths: list[str]) -> list[float]:
    out = []
    for p in paths:
        status, data, s = request(conn, "GET", p)
        if status != 200:
            sys.exit(f"GET {p}: {status} {data[:300]!r}")
        json.loads(data)
        out.append(s)
    return out


def timed_calls(fn, args: list) -> list[float]:
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t)
    return out


# -- reporting --------------------------------------------------------------------------------------------
ROWS: list[tuple[str, str, str, str, str]] = []


def ms(s: float) -> str:
    return f"{1000 * s:.1f} ms" if s < 1 else f"{s:.2f} s"


def spread(xs: list[float]) -> str:
    return f"{ms(min(xs))} / {ms(float(np.median(xs)))} / {ms(max(xs))}"


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def row(what: str, goal: str, measured: str, verdict: str = "", reference: str = "") -> None:
    ROWS.append((what, goal, measured, verdict, reference))
    print(f"  {what}: {measured}" + (f" (goal {goal}: {verdict})" if goal else "") +
          (f"; reference {reference}" if reference else ""), flush=True)


def latency_row(what: str, xs: list[float], ref: list[float], ref_what: str) -> None:
    med, ref_med = float(np.median(xs)), float(np.median(ref))
    row(f"{what} (min / median / max of {len(xs)})", f"< {ms(GOAL_PAGE_S)}", spread(xs), met(max(xs) < GOAL_PAGE_S),
        f"{ref_what} {ms(ref_med)} (median): ×{med / ref_med:.1f}")


def gib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy (user, nice, system, irq, softirq, steal) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU-seconds of this process and its waited-for children (the servers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- load --------------------------------------------------------------------------------------------------
def load_test(server: Server, threads: int, duration: float, make_path) -> dict:
    """``threads`` clients, each on its own kept-alive connection, asking ``make_path(rng)`` for ``duration`` s."""
    stop_at = time.perf_counter() + duration
    results = {"n": 0, "errors": 0, "first_errors": [], "by": {}}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = server.connect()
        while time.perf_counter() < stop_at:
            kind, path = make_path(rng)
            try:
                status, data, s = request(conn, "GET", path)
                ok = status == 200
                if ok:
                    json.loads(data)
                err = None if ok else f"{status} {data[:200]!r}"
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                conn.close()
                conn = server.connect()
                s, err = float("nan"), f"{type(exc).__name__}: {exc}"
            with lock:
                results["n"] += 1
                results["by"].setdefault(kind, []).append(s)
                if err:
                    results["errors"] += 1
                    if len(results["first_errors"]) < 5:
                        results["first_errors"].append(f"{path}: {err}")
        conn.close()

    t = time.perf_counter()
    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    results["seconds"] = time.perf_counter() - t
    return results


# -- the live part: a ViT-B-32 store ------------------------------------------------------------------------
def make_live(tmp: Path, features: int, l0: int, images: int, tokens: str) -> Path:
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract
    from clipsae.pipeline.synthetic import make_synthetic_shards
    from tests.analysis.helpers import sae_weights, saelens_dir

    make_synthetic_shards(tmp / "tars", n_images=images, per_shard=max(1, images // 2), seed=1)
    store = tmp / "vit.zarr"
    run_extract(ExtractConfig(ModelConfig("ViT-B-32"), ["3", "embed"], str(tmp / "tars"), str(store), batch_size=6,
                              device="cpu", dtype="float32", progress=False))
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": l0}, sae_weights(1, d=768, n=features))
    run_encode(EncodeConfig(store, sae, name="l3", hook="resid.3", tokens=tokens, device="cpu", progress=False))
    return store


def upload_jpeg(size: tuple[int, int] = (1024, 768)) -> bytes:
    """A photo-sized JPEG: smooth colour gradients with noise."""
    from PIL import Image

    rng = np.random.default_rng(3)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1) + rng.normal(0, 20, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = "clipsaebench" + os.urandom(8).hex()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def live_part(tmp: Path, a, big: str) -> None:
    import torch
    from PIL import Image

    from clipsae.analysis.explore.live import LiveModel

    t = time.perf_counter()
    shutil.rmtree(tmp / "live", ignore_errors=True)
    store = make_live(tmp / "live", a.live_features, a.l0, a.live_images, a.live_tokens)
    print(f"live store: ViT-B-32 (random weights) over {a.live_images} synthetic JPEGs, resid.3 ({a.live_tokens} "
          f"tokens) encoded by a TopK SAE of {a.live_features:,} latents, k = {a.l0}, in {time.perf_counter() - t:.0f} s",
          flush=True)
    # The big codes are served beside, so that the memory with the model loaded is a whole server's.
    server = Server([big, f"{store}:l3"], tmp / "live-serve.log")
    try:
        conn = server.connect()
        jpeg = upload_jpeg()
        body, headers = multipart("image", "upload.jpg", jpeg)

        def encode():
            status, data, s = request(conn, "POST", "/api/codes/l3/encode", body, headers)
            if status != 200:
                sys.exit(f"POST encode: {status} {data[:300]!r}")
            return json.loads(data), s

        first, first_s = encode()
        rss_model, _ = server.memory()
        status, data, _ = request(conn, "GET", "/api/codes/l3/images/img0000000")
        feats = [x["feature"] for x in json.loads(data)["features"]] or [0]
        steer_body = json.dumps({"key": "img0000000", "edits": [{"feature": feats[0], "op": "scale", "value": 5}]})

        def steer():
            status, data, s = request(conn, "POST", "/api/codes/l3/steer", steer_body.encode(),
                                      {"content-type": "application/json"})
            if status != 200:
                sys.exit(f"POST steer: {status} {data[:300]!r}")
            return s

        first_steer = steer()
        enc = [encode()[1] for _ in range(a.live_requests)]
        st = [steer() for _ in range(a.live_requests)]
        _, hwm = server.memory()
        # Reference: the bare visual forward of the same model on one preprocessed image, in this process, in a
        # thread other than the main one, as the server runs it (on this machine a main thread's 2-thread forward
        # ran 10× slower than a worker thread's while another process kept a core busy).
        lm = LiveModel(Codes(ActivationStore.open(store), "l3"), "cpu")
        _, clip, _, _ = lm._load()
        x = clip.vision.preprocess(Image.open(io.BytesIO(jpeg)).convert("RGB")).unsqueeze(0)
        fwd = []

        def forwards():
            with torch.no_grad():
                clip.vision.visual(x)
                fwd.extend(timed_calls(lambda _: clip.vision.visual(x), range(a.live_requests)))

        worker = threading.Thread(target=forwards)
        worker.start()
        worker.join()
    finally:
        server.stop()
    f_med = float(np.median(fwd))
    row("live: the first upload after start (loads ViT-B-32 and the SAE)", f"< {ms(GOAL_LIVE_S)}", ms(first_s),
        met(first_s < GOAL_LIVE_S), f"{len(first['features'])} features")
    row("live: first steer (class texts embedded)", "", ms(first_steer))
    row(f"live: upload's features, POST /encode of a 1024×768 JPEG (min / median / max of {len(enc)})",
        f"< {ms(GOAL_LIVE_S)}", spread(enc), met(max(enc) < GOAL_LIVE_S),
        f"bare ViT-B-32 visual forward {ms(f_med)}: ×{np.median(enc) / f_med:.1f}")
    row(f"live: steer, one feature scaled ×5 (min / median / max of {len(st)})", f"< {ms(GOAL_LIVE_S)}", spread(st),
        met(max(st) < GOAL_LIVE_S), f"bare ViT-B-32 visual forward {ms(f_med)}: ×{np.median(st) / f_med:.1f}")
    row("live: server's RSS with the model and SAE loaded / peak (the big codes served too)", "< 2 GB",
        f"{gib(rss_model)} / {gib(hwm)}", met(hwm < GOAL_RSS_BYTES))


# -- main ----------------------------------------------------------------------------------------------------
@contextmanager
def workdir(path: str | None):
    if path is None:
        with scratch("clipsae-bench-serve-") as tmp:
            yield tmp
    else:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--parts", type=int, default=10)
    ap.add_argument("--l0", type=int, default=64)
    ap.add_argument("--d", type=int, default=16, help="Width of the synthetic hooks.")
    ap.add_argument("--requests", type=int, default=30, help="Requests per endpoint for the latencies.")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds of the concurrent clients (60: the issue's).")
    ap.add_argument("--live-features", type=int, default=None, help="Latents of the live SAE (default: --features).")
    ap.add_argument("--live-images", type=int, default=12)
    ap.add_argument("--live-tokens", default="cls", choices=("cls", "all"))
    ap.add_argument("--live-requests", type=int, default=5)
    ap.add_argument("--no-live", action="store_true", help="Skip the upload and steer (no model).")
    ap.add_argument("--reuse-index", action="store_true", help="Keep an index already built (no first-start row).")
    ap.add_argument("--dir", default=None, help="Work folder, kept (a store made there is reused); default: a temp dir")
    a = ap.parse_args()
    a.live_features = a.live_features or a.features
    rng = random.Random(0)
    wall, busy, own = time.perf_counter(), busy_cpu_s(), own_cpu_s()
    with workdir(a.dir) as tmp:
        store = tmp / "s.zarr"
        made = tmp / "made.json"
        sizes = {k: getattr(a, k) for k in ("features", "images", "parts", "l0", "d")}
        if not (made.is_file() and json.loads(made.read_text()) == sizes):
            shutil.rmtree(store, ignore_errors=True)
            t = time.perf_counter()
            entries = make_store(store, a.images, a.parts, a.features, a.l0, a.d)
            made.write_text(json.dumps(sizes))
            print(f"made a store of {a.images:,} images in {a.parts} parts and codes of {a.features:,} features, "
                  f"{entries:,} per-image entries, in {time.perf_counter() - t:.0f} s", flush=True)
        from clipsae.analysis.explore.index import index_dir, load_index

        codes = Codes(ActivationStore.open(store), CODES)
        # The references read whole chunks of a few MiB through numpy. glibc serves an allocation that size with
        # a fresh mmap (page faults on every read: 4× slower here) until a block that size has been freed once,
        # which a server process has long done by the time it answers; so has this one, from here on.
        del_me = np.ones(2**20)
        del del_me
        folder = index_dir(codes)
        if not a.reuse_index:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"store and codes on disk: {gib(folder_size(store))}; serving {a.features:,} features × {a.images:,} "
              f"images, L0 {a.l0}", flush=True)

        # First start: the index is built.
        if not (a.reuse_index and folder.is_dir()):
            server = Server([f"{store}:{CODES}"], tmp / "serve-1.log")
            rss, hwm = server.memory()
            server.stop()
            row("first start, the index built: time; peak RSS", "< 2 GB", f"{ms(server.start_s)}; {gib(hwm)}",
                met(hwm < GOAL_RSS_BYTES), f"RSS after it {gib(rss)}")
        index = load_index(folder, codes.fingerprint())
        row("index on disk", "", gib(folder_size(folder)), "",
            f"nearest features: {'left out (' + index.meta['nearest_missing'][:60] + '…)' if index.meta['nearest'] is None else 'kept'}")
        dead = np.asarray(index.stats["dead"])
        live = np.nonzero(~dead)[0]
        dens = np.asarray(index.stats["density_images"])
        print(f"  features: {len(live):,} live, {int(dead.sum()):,} dead, {int(np.asarray(index.stats['dense']).sum()):,} "
              f"dense; image density {dens[live].min():.2g} – {dens[live].max():.2g}", flush=True)

        # Second start: the index is reused.
        server = Server([f"{store}:{CODES}"], tmp / "serve-2.log")
        try:
            rss, hwm = server.memory()
            row("start, index reused", f"< {GOAL_START_S:.0f} s", ms(server.start_s), met(server.start_s < GOAL_START_S))
            row("RSS after start", "< 2 GB", gib(rss), met(rss < GOAL_RSS_BYTES), f"peak so far {gib(hwm)}")
            conn = server.connect()
            base = f"/api/codes/{CODES}"
            n = a.requests
            floor = timed_gets(conn, ["/api/codes"] * (n + 1))[1:]
            row("HTTP floor: GET /api/codes (median)", "", ms(float(np.median(floor))))

            # The features table.
            timed_gets(conn, [f"{base}/features?sort=density&desc=1&limit=50"])  # first touch of the columns
            table = timed_gets(conn, [f"{base}/features?sort=density&desc=1&limit=50&offset={rng.randrange(0, 1000)}"
                                      for _ in range(n)])
            col = np.asarray(index.stats["density_images"])

            def sort_alone(_):
                order = live[np.lexsort((live, -col[live]))]
                return [float(col[f]) for f in order[:50]]

            latency_row("features table, sort=density desc, 50 rows", table, timed_calls(sort_alone, range(n)),
                        "the column's sort alone")
            for sort in SORTS[1:]:
                xs = timed_gets(conn, [f"{base}/features?sort={sort}&desc=1&limit=50"] * max(3, n // 5))
                row(f"features table, sort={sort} desc (median of {len(xs)}; max)", f"< {ms(GOAL_PAGE_S)}",
                    f"{ms(float(np.median(xs)))}; {ms(max(xs))}", met(max(xs) < GOAL_PAGE_S))

            # A feature's page.
            feats = [int(f) for f in rng.sample(list(live), n)]
            page = timed_gets(conn, [f"{base}/features/{f}" for f in feats])

            def feature_reads(f):
                imgs = np.concatenate([index.top.images_FK[f, :12], index.samples.images_FQS[f].ravel()])
                for img in np.unique(imgs[imgs >= 0]):
                    codes.image_values(int(img))

            feature_reads(feats[0])
            latency_row("feature page JSON, random live features", page, timed_calls(feature_reads, feats),
                        "Codes reads of its images")

            # An image's features from the cached codes.
            imgs = rng.sample(range(a.images), n)
            image = timed_gets(conn, [f"{base}/images/img{i:08d}" for i in imgs])

            def image_reads(i):
                codes.token_codes(i)
                codes.image_values(i)

            latency_row("image's features from cached codes, random keys", image,
                        timed_calls(image_reads, [rng.randrange(a.images) for _ in range(n)]),
                        "Codes token_codes + image_values")

            # Many clients at once.
            def mixed(r: random.Random) -> tuple[str, str]:
                kind = r.randrange(3)
                if kind == 0:
                    return "table", (f"{base}/features?sort={r.choice(SORTS)}&desc={r.randrange(2)}&limit=50"
                                     f"&offset={r.randrange(0, 2000)}")
                if kind == 1:
                    return "feature", f"{base}/features/{int(live[r.randrange(len(live))])}"
                return "image", f"{base}/images/img{r.randrange(a.images):08d}"

            cpu = server.cpu_s()
            res = load_test(server, a.clients, a.duration, mixed)
            rate = res["n"] / res["seconds"]
            cores = (server.cpu_s() - cpu) / res["seconds"]
            by = "; ".join(f"{k} {len(v)} (median {ms(float(np.nanmedian(v)))}, p95 {ms(float(np.nanpercentile(v, 95)))}, "
                           f"max {ms(float(np.nanmax(v)))})" for k, v in sorted(res["by"].items()))
            row(f"{a.clients} clients for {res['seconds']:.0f} s, mixed table / feature / image",
                "no error", f"{res['n']:,} requests, {rate:.1f}/s, {res['errors']} errors", met(res["errors"] == 0),
                f"{by}; the server used {cores:.2f} cores")
            for e in res["first_errors"]:
                print(f"    error: {e}")
            rss, hwm = server.memory()
            row("RSS after the clients / peak since the start", "< 2 GB", f"{gib(rss)} / {gib(hwm)}",
                met(hwm < GOAL_RSS_BYTES))
            conn.close()
        finally:
            server.stop()

        if not a.no_live:
            live_part(tmp, a, f"{store}:{CODES}")
        if a.dir is not None:
            shutil.rmtree(tmp / "live", ignore_errors=True)

    wall, other = time.perf_counter() - wall, (busy_cpu_s() - busy) - (own_cpu_s() - own)
    print(f"\nother processes on this machine used {max(other, 0):.0f} CPU-seconds during the {wall:.0f} s run "
          f"({max(other, 0) / wall:.2f} of the {os.cpu_count()} cores on average)")
    print("\n| what | goal | measured | | reference, same run |\n|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
