"""The explorer's JSON API over a real server on loopback: every endpoint, and every error it answers."""

import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image

from clipsae.analysis.images import load_images
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore


def multipart(field: str, data: bytes, filename: str = "x.png") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def codes(vit_encoded):
    return Codes(ActivationStore.open(vit_encoded[0]), "l3")


def test_codes_lists_every_served_codes(served):
    status, body = served.get("/api/codes")
    assert status == 200
    assert [(c["name"], c["hook"], c["n_features"], c["n_images"], c["grid"]) for c in body] == [
        ("l3", "resid.3", 64, 18, [7, 7]), ("emb", "embed", 32, 18, None)]


def test_features_table_sorts_filters_and_pages(served, explorer):
    st = explorer.served["l3"].index.stats
    live = np.nonzero(~np.asarray(st["dead"]))[0]
    status, body = served.get("/api/codes/l3/features?sort=density&desc=1&limit=5")
    assert status == 200 and body["total"] == len(live)
    dens = [r["density"] for r in body["rows"]]
    assert dens == sorted(dens, reverse=True) and dens[0] == pytest.approx(float(st["density_images"][live].max()), rel=1e-2)
    _, page2 = served.get("/api/codes/l3/features?sort=feature&offset=5&limit=5")
    assert [r["feature"] for r in page2["rows"]] == live[5:10].tolist()
    _, dead = served.get("/api/codes/l3/features?state=dead&limit=100")
    assert [r["feature"] for r in dead["rows"]] == np.nonzero(np.asarray(st["dead"]))[0].tolist()
    label = body["rows"][0]["top_label"]
    _, filtered = served.get(f"/api/codes/l3/features?label={label.replace(' ', '%20')}&limit=100")
    assert filtered["total"] >= 1 and all(label in r["top_label"] for r in filtered["rows"])
    _, dense_cut = served.get("/api/codes/l3/features?min_density=0.5&limit=100")
    assert all(r["density"] >= 0.5 for r in dense_cut["rows"])


def test_feature_record_top_images_are_each_images_maximum_over_its_tokens(served, codes):
    _, table = served.get("/api/codes/l3/features?limit=1")
    f = table["rows"][0]["feature"]
    status, rec = served.get(f"/api/codes/l3/features/{f}")
    assert status == 200 and rec["feature"] == f
    values = [x["value"] for x in rec["top"]]
    assert values == sorted(values, reverse=True) and values
    for x in rec["top"]:
        lat, val = codes.image_values(x["image"])
        assert x["value"] == pytest.approx(float(val[lat == f][0]), rel=1e-3)
        lat_TK, val_TK = codes.token_codes(x["image"])
        assert float(val[lat == f][0]) == pytest.approx(float((val_TK * (lat_TK == f)).max()), rel=1e-6)
    assert {"intervals", "neighbours", "cofiring", "labels", "density"} <= set(rec)
    assert [n["feature"] for n in rec["neighbours"]] and all(c["feature"] != f for c in rec["cofiring"])


def test_feature_page_is_the_reports_page_with_live_links(served):
    status, html = served.get("/features/l3/5")
    assert status == 200
    text = html.decode()
    assert '<script src="/assets/feature.js">' in text
    rec = json.loads(text.split('<script id="feature-data" type="application/json">')[1].split("</script>")[0])
    assert rec["links"]["thumb"] == "/thumbs/l3/{image}.jpg" and rec["links"]["feature"] == "/features/l3/{feature}"


def test_image_features_over_all_tokens_and_over_patches(served, codes):
    status, body = served.get("/api/codes/l3/images/img0000003?limit=500")
    assert status == 200 and body["image"] == 3 and body["label_name"]
    lat, val = codes.image_values(3)
    got = {x["feature"]: x["value"] for x in body["features"]}
    assert sorted(got) == sorted(lat.tolist())
    assert [x["value"] for x in body["features"]] == sorted(got.values(), reverse=True)
    # Patches 0 and 8 of the 7×7 grid: stored positions 1 and 9 (CLS is token 0).
    _, sel = served.get("/api/codes/l3/images/img0000003?patches=0,8&limit=500")
    lat_TK, val_TK = codes.token_codes(3)
    rows = np.nonzero(np.isin(codes.token_positions, [1, 9]))[0]
    want = {}
    for g, v in zip(lat_TK[rows].ravel(), val_TK[rows].ravel()):
        if g >= 0 and v > 0:
            want[int(g)] = max(want.get(int(g), 0.0), float(v))
    assert {x["feature"]: x["value"] for x in sel["features"]} == {g: pytest.approx(v, rel=1e-3) for g, v in want.items()}
    assert sel["patches"] == [0, 8]


def test_upload_of_a_store_image_gives_its_cached_codes(served, vit_encoded, codes):
    image = load_images(codes.store, [4])[4]
    body, headers = multipart("image", png(image))
    status, ans = served.request("/api/codes/l3/encode", body, headers)
    assert status == 200, ans
    lat, val = codes.image_values(4)
    got = {x["feature"]: x["value"] for x in ans["features"]}
    top = np.argsort(-val, kind="stable")[:len(got)]
    assert got == {int(lat[j]): pytest.approx(float(val[j]), rel=1e-3) for j in top}
    # The upload's patches can be selected as a store image's.
    status, sel = served.get(f"/api/codes/l3/uploads/{ans['upload']}?patches=3")
    _, stored = served.get("/api/codes/l3/images/img0000004?patches=3")
    assert status == 200 and [x["feature"] for x in sel["features"]] == [x["feature"] for x in stored["features"]]


def test_steer_without_edits_leaves_the_probabilities(served):
    status, r = served.post_json("/api/codes/l3/steer", {"key": "img0000003", "edits": []})
    assert status == 200 and r["after"] == r["before"] and r["cosine"] == pytest.approx(1.0)
    assert len(r["before"]) == 12 and sum(p["prob"] for p in r["before"]) == pytest.approx(1.0)


def test_steer_equals_analyze_intervene(served, vit_encoded, run_cli, tmp_path):
    store, _ = vit_encoded
    _, img = served.get("/api/codes/l3/images/img0000003")
    f = img["features"][0]["feature"]
    status, r = served.post_json("/api/codes/l3/steer", {"key": "img0000003", "edits": [{"feature": f, "op": "scale", "value": 4}],
                                                         "classes": ["red circle", "blue square", "green cross"]})
    assert status == 200
    code, out, err = run_cli("analyze", "intervene", "--store", store, "--codes", "l3", "--edit", f"{f}:x4",
                             "--images", "img0000003", "--out", tmp_path, "--device", "cpu", "--quiet")
    assert code == 0, err
    row = next(iter(__import__("csv").DictReader(open(tmp_path / "intervene.csv"))))
    assert r["cosine"] == pytest.approx(float(row["cosine"]), abs=1e-5)
    assert r["cosine"] < 1


def test_text_search_ranks_live_features(served, explorer):
    status, r = served.get("/api/codes/l3/search?text=a%20red%20circle&n=5")
    assert status == 200 and len(r["features"]) == 5
    scores = [x["score"] for x in r["features"]]
    assert scores == sorted(scores, reverse=True)
    assert not any(explorer.served["l3"].index.stats["dead"][x["feature"]] for x in r["features"])


def test_game_round_hides_its_image_and_scores_a_guess(served):
    _, r = served.get("/api/codes/l3/game?round=7")
    assert len(r["choices"]) == 4 and r["features"]
    _, reveal = served.post_json("/api/codes/l3/game/guess?round=7", {"image": None})
    choices = [c["image"] for c in r["choices"]]
    assert reveal["answer"] in choices
    assert all(t["image"] not in choices for f in r["features"] for t in f["top"])
    assert served.post_json("/api/codes/l3/game/guess?round=7", {"image": True})[0] == 400
    assert served.post_json("/api/codes/l3/game/guess", {"image": None})[0] == 400
    _, right = served.post_json("/api/codes/l3/game/guess?round=7", {"image": reveal["answer"]})
    assert right["correct"] is True


def test_compare_shows_the_image_in_every_served_codes(served):
    status, r = served.get("/api/compare/img0000003")
    assert status == 200 and [c["codes"] for c in r["codes"]] == ["l3", "emb"]
    assert all(c["held"] and c["features"] for c in r["codes"])


@pytest.mark.parametrize("path, status", [
    ("/api/codes/nope/features", 404), ("/api/codes/l3/features/64", 404), ("/api/codes/l3/features/x", 400),
    ("/api/codes/l3/images/no-such-key", 404), ("/api/codes/l3/images/..%2F..%2Fzarr.json", 404),
    ("/thumbs/l3/..%2F..%2Fzarr.json", 404), ("/features/l3/..%2F..%2Fzarr.json", 404), ("/api/codes/l3/images/img0000003?patches=49", 400),
    ("/api/codes/l3/features?sort=colour", 400), ("/api/codes/l3/features?limit=0", 400),
    ("/api/codes/emb/images/img0000003?patches=0", 400), ("/api/codes/l3/uploads/nope", 404),
    ("/assets/..%2F..%2Fbuild.py", 404), ("/assets/site.py", 404), ("/thumbs/l3/99.jpg", 404),
    ("/api/codes/l3/search?text=", 400), ("/api/codes/l3/features?min_density=nan", 400),
    ("/compare/%3C%2Ftitle%3E%3Cscript%3E", 200),
])
def test_bad_requests_get_one_line_json_errors(served, path, status):
    got, body = served.get(path)
    if status == 200:  # a page: whatever the path holds is text in it, never markup
        assert got == 200 and b"<script>" not in body.split(b"<script id=")[0], body[:300]
        return
    assert got == status and isinstance(body, dict) and "\n" not in body["error"], body


@pytest.mark.parametrize("body, why", [
    ({"key": "img0000003", "edits": [{"feature": 1, "op": "scale", "value": 21}]}, "within"),
    ({"key": "img0000003", "edits": [{"feature": 1, "op": "clamp", "value": "inf"}]}, "finite"),
    ({"key": "img0000003", "edits": [{"feature": 1, "op": "twist", "value": 1}]}, "op must be"),
    ({"key": "img0000003", "edits": [{"feature": 1, "op": "ablate"}, {"feature": 1, "op": "ablate"}]}, "twice"),
    ({"edits": []}, "key"), ({"key": "img0000003", "classes": []}, "classes"),
    ({"key": "img0000003", "prompt": "{{}}{:>999999999}"}, "prompt"), ({"key": "img0000003", "prompt": "x" * 300 + "{}"}, "prompt"),
])
def test_bad_steers_are_refused(served, body, why):
    status, r = served.post_json("/api/codes/l3/steer", body)
    assert status == 400 and why in r["error"]


def declared_only(served, path: str, length: int, content_type: str) -> int:
    """The status of a POST that declares ``length`` bytes and sends none of them: a server that refuses by the
    declared length answers at once. (Sending the body races the refusal: the server closes the connection while
    the client still writes, and the client sees a broken pipe instead of the answer.)"""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(served.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("content-type", content_type)
        conn.putheader("content-length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_uploads_that_are_not_images_or_too_large_are_refused_and_the_server_goes_on(served, explorer, monkeypatch):
    monkeypatch.setattr(explorer, "max_upload", 2_000_000)
    body, headers = multipart("image", b"not an image at all")
    status, r = served.request("/api/codes/l3/encode", body, headers)
    assert status == 400 and "not a PNG, JPEG or WebP image" in r["error"]
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    status, r = served.request("/api/codes/l3/encode", *multipart("image", gif.getvalue()))
    assert status == 400 and "PNG, JPEG or WebP" in r["error"]
    # A decompression bomb: a small PNG of more pixels than the server takes.
    bomb = png(Image.new("L", (8000, 6000)))
    assert len(bomb) < 1_000_000
    status, r = served.request("/api/codes/l3/encode", *multipart("image", bomb))
    assert status == 413 and "pixels" in r["error"]
    status, r = served.request("/api/codes/l3/encode", *multipart("image", b"\0" * (explorer.max_upload + 1)))
    assert status == 413
    status, r = served.request("/api/codes/l3/encode", b"{}", {"content-type": "application/json"})
    assert status == 400
    status, r = served.request("/api/codes/l3/steer", b'{"key": "img0000003"}', {"content-type": "text/plain"})
    assert status == 400 and "JSON" in r["error"]
    assert declared_only(served, "/api/codes/l3/steer", 1_000_001, "application/json") == 413
    assert served.get("/api/codes")[0] == 200


def test_without_a_token_only_loopback_host_names_are_served(served):
    assert served.get("/api/codes", headers={"Host": "attacker.example:8000"})[0] == 400
    assert served.get("/api/codes", headers={"Host": "localhost"})[0] == 200


def test_a_token_is_required_by_header_query_or_cookie(explorer):
    from tests.analysis.explore.conftest import serve_in_thread

    s, stop = serve_in_thread(explorer, token="sesame-123")
    try:
        status, r = s.get("/api/codes")
        assert status == 401 and "token" in r["error"]
        assert s.get("/api/codes", headers={"Authorization": "Bearer wrong-token"})[0] == 401
        assert s.get("/api/codes", headers={"Authorization": "Bearer sesame-123"})[0] == 200
        import urllib.request

        with urllib.request.urlopen(s.url + "/api/codes?token=sesame-123") as resp:
            cookie = resp.headers["set-cookie"].split(";")[0]
        assert s.get("/features/l3", headers={"Cookie": cookie})[0] == 200
    finally:
        stop()


def test_feature_page_shows_density_rank_neuron_alignment_and_correlate_matches(vit_encoded, run_cli):
    from clipsae.analysis.explore.app import build_app  # noqa: F401 (the app's record is what is checked)
    from clipsae.analysis.explore.config import ServeConfig
    from clipsae.analysis.explore.serve import open_explorer
    from tests.analysis.explore.conftest import serve_in_thread

    store, _ = vit_encoded
    for args in (("analyze", "neuron-alignment", "--store", store, "--codes", "l3", "--quiet"),
                 ("analyze", "correlate", "--a", f"{store}:l3", "--b", f"{store}:emb", "--device", "cpu")):
        code, out, err = run_cli(*args)
        assert code == 0, err
    explorer = open_explorer(ServeConfig(store=str(store), codes=("l3", "emb"), device="cpu", progress=False))
    s, stop = serve_in_thread(explorer)
    try:
        import csv

        rows = list(csv.DictReader(open(store / "codes" / "l3-analysis" / "correlate-emb" / "matching.csv")))
        a, b = int(rows[0]["a"]), int(rows[0]["b"])
        _, rec = s.get(f"/api/codes/l3/features/{a}")
        assert "max_cos" in rec["neuron"] and 0 <= rec["density_rank"] <= 1
        match = next(m for m in rec["matches"] if "corr" in m)
        assert (match["feature"], match["href"]) == (b, f"/features/emb/{b}")
    finally:
        stop()


def test_an_images_patch_maps_are_the_reports_over_that_image(served, codes):
    import base64

    from clipsae.analysis.features.patch_maps import patch_maps

    _, body = served.get("/api/codes/l3/images/img0000003?limit=5")
    lat, val = codes.image_values(3)
    for x in body["features"]:
        v = float(val[lat == x["feature"]][0])
        want = patch_maps(codes, np.array([x["feature"]]), np.array([3]), np.array([v], np.float32))[0]
        assert base64.b64decode(x["map"]) == want.tobytes()


def test_a_universal_latents_record_has_its_top_images_in_the_other_model(shards, tmp_path, run_cli):
    """Codes of one model of a universal SAE, after `analyze universal`: the explorer's feature record carries the
    latent's universality and its top images in the other model, whose thumbnails it serves."""
    from clipsae.analysis.explore.config import ServeConfig
    from clipsae.analysis.explore.serve import open_explorer
    from tests.analysis.explore.conftest import serve_in_thread
    from tests.analysis.helpers import store_from_tars

    store = store_from_tars(tmp_path / "s.zarr", sorted(shards.glob("*.tar")), embed_d=6)
    code, _, err = run_cli("train", "--universal", f"{store}:blocks.0,{store}:embed", "--tokens", "cls", "--k", "2",
                           "--expansion", "2", "--steps", "20", "--batch-size", "8", "--holdout", "0", "--out",
                           tmp_path / "u", "--quiet")
    assert code == 0, err
    for m in (0, 1):
        assert run_cli("encode", "--store", store, "--sae", tmp_path / "u" / "models" / str(m), "--name", f"u{m}",
                       "--quiet")[0] == 0
    code, _, err = run_cli("analyze", "universal", "--codes", f"{store}:u0,{store}:u1", "--min-hits", "1")
    assert code == 0, err
    explorer = open_explorer(ServeConfig(store=str(store), codes=("u1",), device="cpu", progress=False))
    s, stop = serve_in_thread(explorer)
    try:
        records = [s.get(f"/api/codes/u1/features/{f}")[1] for f in range(16)]
        shown = [r for r in records if any(m["top"] for m in r.get("universal", {}).get("models", []))]
        assert shown and "universality" in shown[0]["universal"]
        other = next(m for m in shown[0]["universal"]["models"] if not m["this"])
        status, body = s.get(f"/thumbs/u1/{other['top'][0]['image']}.jpg")
        assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG
    finally:
        stop()
