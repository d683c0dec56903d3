"""The explorer's web application: HTTP onto the served codes (served.py), pages and the JSON API.

Starlette runs the plain (``def``) endpoints on its thread pool, so a slow forward pass never stops
the server answering others. Every error is JSON ``{"error": "one line"}`` with its status: 400 bad
input, 401 no token, 404 unknown codes, feature, key or upload, 413 too large; anything unexpected is
500 with one line, and the server goes on.
"""

import hmac
import html
import io
import json
import secrets
from importlib import resources
from urllib.parse import quote

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from clipsae.analysis.edits import Edit
from clipsae.analysis.explore.live import TokenCodes
from clipsae.analysis.explore.served import BadRequest, ImageRef, NotFound, ServedCodes
from clipsae.analysis.explore.tar_images import LRU, jpeg
from clipsae.analysis.report import site
from clipsae.errors import ClipsaeError

ASSETS = ("report.css", "common.js", "feature.js", "explore.js")
COOKIE = "clipsae_token"
THUMB_SIZES = (96, 160, 224, 448)
STEER_SCALE = 20.0  # |factor| of a scale edit, as the sliders allow
STEER_CLAMP = 1e4  # |value| of a clamp
MAX_EDITS = 64
MAX_CLASSES = 2000
GAME_CHOICES = 4
GAME_FEATURES = 5
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_JSON_BODY = 1_000_000  # bytes of a steer or a guess
UPLOADS_KEPT_PIXELS = 100_000_000  # the uploads kept for their pages, at most (400 MB as RGB)
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class TooLarge(ClipsaeError):
    """An upload over --max-upload or --max-pixels: 413."""


class Unauthorized(ClipsaeError):
    """A request without the token: 401."""


def _status(exc: Exception) -> int:
    """Bad input is 400 (and its kinds theirs); any other ClipsaeError is the server's own data failing it (a tar
    moved, the SAE gone, a damaged chunk): 500, with the reason."""
    return {BadRequest: 400, NotFound: 404, TooLarge: 413, Unauthorized: 401}.get(type(exc), 500)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class TokenGate:
    """ASGI middleware: with a token, every request carries it (header, cookie, or ?token= which sets the cookie)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None:
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = [request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
                 request.cookies.get(COOKIE, ""), request.query_params.get("token", "")]
        if not any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given if g):
            return await _error("this server needs its token: Authorization: Bearer T, or ?token=T on a link",
                                401)(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
                await send(message)
            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


class Explorer:
    """The served codes by label, the uploads kept for a while, and the game's rounds."""

    def __init__(self, served: list[ServedCodes], max_upload: int, max_pixels: int):
        self.served = {s.label: s for s in served}
        self.max_upload, self.max_pixels = max_upload, max_pixels
        self.uploads = LRU(64, UPLOADS_KEPT_PIXELS, weight=lambda item: item[0].width * item[0].height)
        self._secret = secrets.token_bytes(16)

    def codes(self, label: str) -> ServedCodes:
        if label not in self.served:
            raise NotFound(f"no codes named {label!r} are served (served: {', '.join(self.served)})")
        return self.served[label]

    # -- images: a store key or an upload ----------------------------------------------------------------
    def upload(self, upload_id: str):
        item = self.uploads.get(upload_id)
        if item is None:
            raise NotFound(f"no upload {upload_id!r} (uploads are kept while the server runs, the last 64)")
        return item

    def token_codes(self, s: ServedCodes, ref: ImageRef) -> TokenCodes:
        if ref.upload is None:
            return s.stored_token_codes(ref.image)
        image, per_codes = self.upload(ref.upload)
        if s.label not in per_codes:
            per_codes[s.label] = s.live.token_codes(image)
        return per_codes[s.label]

    def pil(self, s: ServedCodes, ref: ImageRef) -> Image.Image:
        return self.upload(ref.upload)[0] if ref.upload is not None else s.images.image(ref.image)

    def decode_upload(self, data: bytes) -> Image.Image:
        if len(data) > self.max_upload:
            raise TooLarge(f"the upload is {len(data) / 1e6:.1f} MB; this server takes at most {self.max_upload / 1e6:g} MB")
        try:
            # Only these three formats' decoders are tried; the pixel count is checked from the header, before decoding.
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as im:
                if im.width * im.height > self.max_pixels:
                    raise TooLarge(f"the upload is {im.width}×{im.height} pixels; this server takes at most "
                                   f"{self.max_pixels:,}")
                return im.convert("RGB")
        except Image.DecompressionBombError as exc:
            raise TooLarge(f"the upload is too many pixels ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadRequest(f"the upload is not a PNG, JPEG or WebP image PIL can read ({type(exc).__name__})") from None

    def keep_upload(self, image: Image.Image) -> str:
        upload_id = secrets.token_hex(8)
        self.uploads.put(upload_id, (image, {}))
        return upload_id

    # -- the game ----------------------------------------------------------------------------------------
    def round_answer(self, s: ServedCodes, round_id: int) -> tuple[int, list[int]]:
        """The hidden image and the four choices of a round: drawn from the round id and this server's secret."""
        seed = int.from_bytes(hmac.digest(self._secret, f"{s.label}:{round_id}".encode(), "sha256")[:8], "little")
        rng = np.random.default_rng(seed)
        answer = s.random_image(rng)
        others = set()
        while len(others) < min(GAME_CHOICES - 1, s.store.n_images - 1):
            img = int(rng.integers(s.store.n_images))
            if img != answer:
                others.add(img)
        choices = sorted([answer, *others], key=lambda i: rng.random())
        return answer, choices


def _int(request: Request, name: str, default: int) -> int:
    v = request.query_params.get(name)
    try:
        return default if v is None else int(v)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {v!r}") from None


def _float(request: Request, name: str) -> float | None:
    v = request.query_params.get(name)
    if v in (None, ""):
        return None
    try:
        x = float(v)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {v!r}") from None
    if not np.isfinite(x):
        raise BadRequest(f"{name} must be finite")
    return x


def _patches(request: Request) -> list[int] | None:
    text = request.query_params.get("patches")
    if text is None:
        return None
    try:
        return sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise BadRequest(f"patches must be comma-separated patch numbers, not {text!r}") from None


async def _body(request: Request, cap: int, what: str) -> bytes:
    """A request's body, refused (413) once it passes ``cap`` bytes, by its declared length or as it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"{what} is {int(declared):,} bytes; this server takes at most {cap:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise TooLarge(f"{what} is over {cap:,} bytes, this server's limit")
    return bytes(body)


async def _json_body(request: Request):
    """A request's JSON body: ``application/json`` (a page's script sends it; a form posted from another site
    cannot), at most MAX_JSON_BODY bytes."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send the body as JSON (Content-Type: application/json)")
    body = await _body(request, MAX_JSON_BODY, "the body")
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None


def _prompt(body: dict) -> str:
    """The steer's prompt: a text of at most 200 characters with one {} where each class goes, and no other braces
    (it is filled by str.format, whose other fields could ask for any padding)."""
    prompt = body.get("prompt", "a photo of a {}.")
    if (not isinstance(prompt, str) or len(prompt) > 200 or prompt.count("{") != 1 or prompt.count("}") != 1
            or "{}" not in prompt):
        raise BadRequest("prompt must be a text of at most 200 characters with one {} where each class goes")
    return prompt


def _edits(body: dict, s: ServedCodes) -> tuple[Edit, ...]:
    raw = body.get("edits", [])
    if not isinstance(raw, list) or len(raw) > MAX_EDITS:
        raise BadRequest(f"edits must be a list of at most {MAX_EDITS} {{feature, op, value}}")
    edits, seen = [], set()
    for e in raw:
        if not isinstance(e, dict):
            raise BadRequest("each edit is an object {feature, op, value}")
        f = s.feature(e.get("feature"))
        if f in seen:
            raise BadRequest(f"edits name feature {f} twice")
        seen.add(f)
        op = e.get("op")
        if op == "ablate":
            edits.append(Edit(f, "set", 0.0))
            continue
        if op not in ("scale", "clamp"):
            raise BadRequest(f"op must be scale, clamp or ablate, not {op!r}")
        v = e.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise BadRequest(f"edit of feature {f}: value must be a finite number")
        bound = STEER_SCALE if op == "scale" else STEER_CLAMP
        if abs(v) > bound:
            raise BadRequest(f"edit of feature {f}: a {op} value must be within ±{bound:g}, not {v:g}")
        edits.append(Edit(f, op, float(v)))
    return tuple(edits)


def build_app(explorer: Explorer, token: str | None = None) -> Starlette:
    """The Starlette application serving ``explorer``."""
    first = next(iter(explorer.served))
    asset_folder = resources.files("clipsae.analysis.report") / "assets"

    def page(view: str, title: str, data: dict) -> HTMLResponse:
        data = {"view": view, "codes": [s.describe() for s in explorer.served.values()], **data}
        return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="stylesheet" href="/assets/report.css"></head>
<body><main id="app"><p>Loading…</p></main>
<script id="explore-data" type="application/json">{site.script_json(data)}</script>
<script src="/assets/common.js"></script><script src="/assets/explore.js"></script></body></html>
""")

    def feature_links(s: ServedCodes, f: int) -> dict:
        live = s.live_features
        before, after = live[:np.searchsorted(live, f)], live[np.searchsorted(live, f, side="right"):]
        prev = int(before[-1]) if len(before) else None
        nxt = int(after[0]) if len(after) else None
        base = f"/features/{quote(s.label)}"
        return {"index": base, "prev": f"{base}/{prev}" if prev is not None else None,
                "next": f"{base}/{nxt}" if nxt is not None else None, "feature": base + "/{feature}",
                "thumb": f"/thumbs/{quote(s.label)}/" + "{image}.jpg", "image_page": f"/images/{quote(s.label)}/" + "{key}"}

    def record(s: ServedCodes, f: int) -> dict:
        rec = s.feature_record(f, feature_links(s, f))
        rec["density"] = rec["density_images"]
        rec["neighbours"] = rec["nearest"]
        rec["cofiring"] = s.cofiring(f)
        for m in rec["matches"]:  # analyze correlate's: a link where its other codes are served too
            other = next((o for o in explorer.served.values() if o.codes.name == m.get("codes")
                          and str(o.store.path) == str(m.get("store"))), None)
            m["href"] = f"/features/{quote(other.label)}/{m['feature']}" if other is not None else None
        keys = [x["key"] for x in rec["top"]]
        for other in explorer.served.values():
            if other is s:
                continue
            for m in other.affinity(keys):
                rec["matches"].append({"other": other.label, "feature": m["feature"], "affinity": m["affinity"],
                                       "images": m["images"], "href": f"/features/{quote(other.label)}/{m['feature']}"})
        return rec

    # -- pages ---------------------------------------------------------------------------------------------
    def home(request):
        return RedirectResponse(f"/features/{quote(first)}")

    def features_page(request):
        s = explorer.codes(request.path_params["codes"])
        return page("features", f"features of {s.label}", {"current": s.label})

    def feature_page(request):
        s = explorer.codes(request.path_params["codes"])
        f = s.feature(request.path_params["feature"])
        return HTMLResponse(site.feature_page(record(s, f), assets="/assets"))

    def image_page(request):
        s = explorer.codes(request.path_params["codes"])
        key = request.path_params["key"]
        upload = request.query_params.get("upload")
        if upload is None:
            s.image_of_key(key)
        else:
            explorer.upload(upload)
        return page("image", f"{key} in {s.label}", {"current": s.label, "key": key, "upload": upload})

    def compare_page(request):
        return page("compare", f"compare {request.path_params['key']}", {"key": request.path_params["key"]})

    def game_page(request):
        s = explorer.codes(request.path_params["codes"])
        return page("game", f"guess the image: {s.label}", {"current": s.label})

    def asset(request):
        name = request.path_params["name"]
        if name not in ASSETS:
            raise NotFound(f"no asset {name!r}")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response((asset_folder / name).read_bytes(), media_type=kind,
                        headers={"cache-control": "no-cache"})

    def favicon(request):
        # Browsers ask every page's origin for one; a 404 would be an error in every page's console.
        return Response(status_code=204)

    def thumb(request):
        s = explorer.codes(request.path_params["codes"])
        img = request.path_params["image"]
        size = _int(request, "size", 160)
        if size not in THUMB_SIZES:
            raise BadRequest(f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        if not 0 <= img < s.store.n_images:
            raise NotFound(f"no image {img}: the store of codes {s.label!r} has {s.store.n_images}")
        whole = request.query_params.get("whole", "0") in ("1", "true")
        return Response(s.images.thumbnail(img, size, whole), media_type="image/jpeg",
                        headers={"cache-control": "max-age=3600"})

    def upload_image(request):
        image, per_codes = explorer.upload(request.path_params["upload"])
        s = explorer.served.get(request.query_params.get("codes", ""), next(iter(explorer.served.values())))
        return Response(jpeg(image, 448, s.images.preprocess), media_type="image/jpeg")

    # -- the JSON API ----------------------------------------------------------------------------------------
    def api_codes(request):
        return JSONResponse([s.describe() for s in explorer.served.values()])

    def api_features(request):
        s = explorer.codes(request.path_params["codes"])
        q = request.query_params
        return JSONResponse(s.table(sort=q.get("sort", "feature"), desc=q.get("desc", "0") in ("1", "true"),
                                    offset=_int(request, "offset", 0), limit=_int(request, "limit", 50),
                                    state=q.get("state", "live"), min_density=_float(request, "min_density"),
                                    max_density=_float(request, "max_density"), label=q.get("label"),
                                    name=q.get("name")))

    def api_feature(request):
        s = explorer.codes(request.path_params["codes"])
        return JSONResponse(record(s, s.feature(request.path_params["feature"])))

    def api_search(request):
        s = explorer.codes(request.path_params["codes"])
        text = request.query_params.get("text", "").strip()
        if not text or len(text) > 300:
            raise BadRequest("text must be 1 to 300 characters")
        n = _int(request, "n", 10)
        if not 1 <= n <= 100:
            raise BadRequest("n must be between 1 and 100")
        scores = s.live.text_scores(text)
        feats = s.live_features
        order = feats[np.lexsort((feats, -scores[feats]))][:n]
        return JSONResponse({"text": text, "features": [{"feature": int(f), "score": round(float(scores[f]), 4),
                                                          **{k: v for k, v in s.row(int(f)).items() if k != "feature"}}
                                                         for f in order]})

    def api_image(request):
        s = explorer.codes(request.path_params["codes"])
        ref = s.image_of_key(request.path_params["key"])
        limit = _int(request, "limit", 32)
        return JSONResponse(s.image_features(ref, explorer.token_codes(s, ref), _patches(request), max(1, min(limit, 500))))

    def api_upload(request):
        s = explorer.codes(request.path_params["codes"])
        upload_id = request.path_params["upload"]
        explorer.upload(upload_id)
        ref = ImageRef(f"upload:{upload_id}", None, -1, upload_id)
        return JSONResponse(s.image_features(ref, explorer.token_codes(s, ref), _patches(request)))

    async def api_encode(request: Request):
        s = explorer.codes(request.path_params["codes"])
        # The image, and up to 64 KiB of the form around it.
        body = await _body(request, explorer.max_upload + 65536, "the upload")

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_part_size=explorer.max_upload + 1)
        except Exception as exc:  # the multipart parser's errors are bad input
            raise BadRequest(f"the request is not a multipart form with an image field ({exc})") from None
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise BadRequest("send the image as the multipart field 'image'")
        data = await field.read()
        image = await run_in_threadpool(explorer.decode_upload, data)
        upload_id = explorer.keep_upload(image)
        ref = ImageRef(f"upload:{upload_id}", None, -1, upload_id)
        answer = await run_in_threadpool(lambda: s.image_features(ref, explorer.token_codes(s, ref)))
        return JSONResponse(answer)

    async def api_steer(request: Request):
        s = explorer.codes(request.path_params["codes"])
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if ("key" in body) == ("upload" in body):
            raise BadRequest("give key (a store image) or upload (an uploaded image's id), one of them")
        ref = s.image_of_key(str(body["key"])) if "key" in body else ImageRef("", None, -1, str(body["upload"]))
        edits = _edits(body, s)
        classes = body.get("classes")
        if classes is None:
            classes = [s.class_names[c] for c in sorted(s.class_names)]
            if not classes:
                raise BadRequest("the store's images have no class names: send classes (the texts to compare)")
        if (not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES
                or not all(isinstance(c, str) and 0 < len(c.strip()) <= 200 for c in classes)):
            raise BadRequest(f"classes must be a list of 1 to {MAX_CLASSES} non-empty texts")
        prompt = _prompt(body)

        def run():
            return s.live.steer(explorer.pil(s, ref), edits, tuple(c.strip() for c in classes), prompt)

        out = await run_in_threadpool(run)
        return JSONResponse({"codes": s.label, "key": ref.key or None, "upload": ref.upload,
                             "edits": [{"feature": e.feature, "op": {"set": "ablate"}.get(e.kind, e.kind),
                                        "value": e.value} for e in edits],
                             "before": [{"class": c, "prob": float(p)} for c, p in zip(out.classes, out.before)],
                             "after": [{"class": c, "prob": float(p)} for c, p in zip(out.classes, out.after)],
                             "cosine": out.cosine})

    def api_game(request):
        s = explorer.codes(request.path_params["codes"])
        round_id = _int(request, "round", secrets.randbelow(2**31))
        answer, choices = explorer.round_answer(s, round_id)
        feats = s.image_features(ImageRef("", answer), s.stored_token_codes(answer), None, GAME_FEATURES)["features"]
        return JSONResponse({"codes": s.label, "round": round_id,
                             # Each feature's top images, the choices left out: the hidden one would give the
                             # answer away, and the others, shown, would rule themselves out.
                             "features": [{"feature": x["feature"], "value": x["value"],
                                           "top": [t for t in s.top_keys(x["feature"], 4 + len(choices))
                                                   if t["image"] not in choices][:4]}
                                          for x in feats],
                             "choices": [{"image": c, "key": str(s.keys.keys[c])} for c in choices]})

    async def api_guess(request):
        s = explorer.codes(request.path_params["codes"])
        if "round" not in request.query_params:
            raise BadRequest("give the round: /game/guess?round=N")
        round_id = _int(request, "round", -1)
        body = await _json_body(request)
        guess = body.get("image", "missing") if isinstance(body, dict) else "missing"
        if guess is not None and (isinstance(guess, bool) or not isinstance(guess, int)):
            raise BadRequest('send {"image": N} for a guess, or {"image": null} to reveal')
        answer, choices = await run_in_threadpool(explorer.round_answer, s, round_id)
        if guess is not None and guess not in choices:
            raise BadRequest(f"image {guess} is not one of this round's choices")
        return JSONResponse({"round": round_id, "answer": answer, "key": str(s.keys.keys[answer]),
                             "correct": guess == answer})

    def api_compare(request):
        key = request.path_params["key"]
        out = []
        for s in explorer.served.values():
            img = s.keys.find(key)
            if img is None:
                out.append({"codes": s.label, "held": False})
                continue
            ans = s.image_features(ImageRef(key, img, int(s.labels[img])), s.stored_token_codes(img), None, 8)
            for x in ans["features"]:
                keys = [t["key"] for t in s.top_keys(x["feature"], 6)]
                x["matches"] = [m for o in explorer.served.values() if o is not s for m in o.affinity(keys, 1)]
            out.append({**ans, "held": True})
        if not any(x["held"] for x in out):
            raise NotFound(f"no served store holds an image with key {key!r}")
        return JSONResponse({"key": key, "codes": out})

    routes = [
        Route("/", home), Route("/features/{codes}", features_page), Route("/features/{codes}/{feature}", feature_page),
        Route("/images/{codes}/{key:path}", image_page), Route("/compare/{key:path}", compare_page),
        Route("/game/{codes}", game_page), Route("/assets/{name}", asset), Route("/favicon.ico", favicon),
        Route("/thumbs/{codes}/{image:int}.jpg", thumb), Route("/uploads/{upload}.jpg", upload_image),
        Route("/api/codes", api_codes), Route("/api/codes/{codes}/features", api_features),
        Route("/api/codes/{codes}/features/{feature}", api_feature), Route("/api/codes/{codes}/search", api_search),
        Route("/api/codes/{codes}/images/{key:path}", api_image), Route("/api/codes/{codes}/uploads/{upload}", api_upload),
        Route("/api/codes/{codes}/encode", api_encode, methods=["POST"]),
        Route("/api/codes/{codes}/steer", api_steer, methods=["POST"]),
        Route("/api/codes/{codes}/game", api_game), Route("/api/codes/{codes}/game/guess", api_guess, methods=["POST"]),
        Route("/api/compare/{key:path}", api_compare),
    ]

    async def clipsae_error(request, exc):
        return _error(str(exc), _status(exc))

    async def not_found(request, exc):
        return _error(f"no page or API at {request.url.path}" if exc.status_code == 404 else exc.detail, exc.status_code)

    async def internal(request, exc):
        return _error(f"internal error {type(exc).__name__}: {exc}", 500)

    from starlette.exceptions import HTTPException

    app = Starlette(routes=routes, exception_handlers={ClipsaeError: clipsae_error, HTTPException: not_found,
                                                       Exception: internal})
    app.add_middleware(TokenGate, token=token)
    if token is None:
        # Without a token the server is the loopback's alone: a page elsewhere must not reach it by DNS rebinding.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    return app
