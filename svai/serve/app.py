"""The consultation app: a small ASGI application (Starlette) serving one page and a JSON API.

Routes (every error is JSON ``{"error": "<one line naming the problem and the fix>"}``):

    GET  /                                   the page (static/index.html)
    GET  /static/app.js, /static/app.css     its script and style sheet, from the package
    GET  /api/models                         the served models and the controls each takes
    POST /api/photos                         body: the photo file's bytes, header X-Filename:
                                             its name, URL-encoded -> {photo, width, height, box,
                                             overlay (faces, face, regions), views}
    POST /api/photos/{photo}/face            JSON {face: index} or {box: [x0, y0, x1, y1]}: frame
                                             another face, or a moved or resized square
    GET  /api/photos/{photo}/{view}.png      the photo as the page shows it (view: face, photo)
    POST /api/simulate                       JSON {photo, model, procedures ({name: strength}),
                                             intensity, composite, seed, reference} -> {result,
                                             images, changed, note, caption}
    GET  /api/results/{result}/{kind}.png    kind: after, difference; ?view=face|photo
    GET  /api/results/{result}/export.png    before | simulation stamped, as a download

Privacy: the page loads nothing from elsewhere, and the Content-Security-Policy sent with
every response forbids it to (`default-src 'self'`). Responses are `no-store`, so photos stay
out of the browser's disk cache. On a loopback address, requests naming any other host are
refused, so a web page elsewhere cannot reach the app through DNS rebinding; POSTs need a
header or content type that a cross-site form cannot send. Photos and results are held in
memory (`svai.serve.store.Recent`), the newest few of each.

On an address other than loopback every request needs the access token made at start (in the
address printed, then a cookie the page keeps); one without it is refused and audited with the
remote address.

Heavy work (decoding, the model, encoding) runs in worker threads, so the server answers
other requests meanwhile; the model itself runs one request at a time (`Simulator`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svai.errors import SvaiError
from svai.io import describe_size, png_bytes
from svai.serve.audit import AuditLog
from svai.serve.export import caption_of, export_png
from svai.serve.photo import (
    DISPLAY_REDUCING_GAP, DISPLAY_SIDE, MAX_UPLOAD_BYTES, VIEWS, Photo, decode_upload, difference, frame_photo,
    overlay_of, pixels_sha256, reframe, region, shrink, simulated_photo, view_box,
)
from svai.serve.simulate import ModelFailed, Simulation, Simulator, parse_settings, utc_now
from svai.serve.store import Recent

log = logging.getLogger(__name__)

# How many photos and results the server holds (a 12 MP photo takes 36 MB decoded).
PHOTOS_HELD = 4
RESULTS_HELD = 16
MAX_JSON_BYTES = 64 * 1024

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

LOOPBACK_NAMES: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})


TOKEN_COOKIE = "svai_token"


class Guard:
    """ASGI middleware: refuses requests for a host name not in `hosts` (None allows any) and,
    given a `token`, every request that does not carry it (as `?token=`, the `svai_token`
    cookie, or an `X-Svai-Token` header), reporting each refusal to `refused(remote, path)`;
    adds `SECURITY_HEADERS` to every response, and the cookie to a response to `?token=`."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str] | None, token: str | None = None,
                 refused: Callable[[str, str], None] | None = None, secure: bool = False) -> None:
        self.app = app
        self.hosts = frozenset(h.lower().strip("[]") for h in hosts) if hosts is not None else None
        self.token = token
        self.refused = refused
        self.secure = secure

    def _presented(self, scope: Scope) -> tuple[str, bool]:
        """(the token a request carries, whether it came in the address)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], True
        headers = Headers(scope=scope)
        if headers.get("x-svai-token"):
            return headers["x-svai-token"], False
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:
            return "", False
        morsel = cookies.get(TOKEN_COOKIE)
        return (morsel.value if morsel is not None else ""), False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            named = urlsplit("//" + Headers(scope=scope).get("host", "")).hostname or ""
            if named.lower() not in self.hosts:
                refusal = PlainTextResponse("unknown host name: open the address `svai serve` printed", 400,
                                            headers=SECURITY_HEADERS)
                await refusal(scope, receive, send)
                return
        from_address = False
        if self.token is not None:
            presented, from_address = self._presented(scope)
            if not hmac.compare_digest(presented.encode(), self.token.encode()):
                remote = (scope.get("client") or ("unknown", 0))[0]
                if self.refused is not None:
                    self.refused(str(remote), scope.get("path", ""))
                refusal = PlainTextResponse("access token missing or wrong: open the full address `svai serve` "
                                            "printed, with its ?token=", 403, headers=SECURITY_HEADERS)
                await refusal(scope, receive, send)
                return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if from_address:
                    flags = "; Secure" if self.secure else ""
                    headers.append("Set-Cookie", f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict{flags}")
            await send(message)

        await self.app(scope, receive, send_secured)


class Problem(Exception):
    """A request the app refuses: an HTTP status and the one-line message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_ENCODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="svai-encode")


def display(pixels: np.ndarray, view: str) -> np.ndarray:
    """A view's pixels at the size the page shows them."""
    return shrink(pixels, DISPLAY_SIDE[view], DISPLAY_REDUCING_GAP)


@dataclass
class HeldPhoto:
    """An uploaded photo and its views as the page shows them, made once each: the page asks
    for the same image from two places at once, and the lock makes the second wait."""

    photo: Photo
    timings: dict[str, float]
    views: dict[str, np.ndarray] = field(default_factory=dict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reframe(self, photo: Photo) -> None:
        """Frame another face or square: the face view is made again."""
        with self.lock:
            self.photo = photo
            self.views.pop("face", None)
            self.pngs.pop("face", None)

    def describe(self, token: str) -> dict[str, Any]:
        """What the page needs to show the photo and draw what svai sees on it."""
        photo = self.photo
        return {
            "photo": token, "width": photo.size[0], "height": photo.size[1], "box": list(photo.box),
            "overlay": overlay_of(photo),
            "views": {view: list(view_box(photo, view)) for view in VIEWS},
            "timings": self.timings,
            "images": {view: f"/api/photos/{token}/{view}.png" for view in VIEWS},
        }

    def before(self, view: str) -> np.ndarray:
        with self.lock:
            if view not in self.views:
                self.views[view] = display(region(self.photo, view_box(self.photo, view)), view)
            return self.views[view]

    def before_png(self, view: str) -> bytes:
        shown = self.before(view)
        with self.lock:
            if view not in self.pngs:
                self.pngs[view] = png_bytes(shown)
            return self.pngs[view]


@dataclass
class HeldResult:
    """A simulation and its images as the page shows them (after and difference, per view)."""

    simulation: Simulation
    held: HeldPhoto
    pngs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def png(self, kind: str, view: str) -> bytes:
        photo = self.simulation.photo
        with self.lock:
            if (kind, view) not in self.pngs:
                # A result made before the photo was framed on another face keeps its own framing.
                before = self.held.before(view) if self.held.photo is photo else \
                    display(region(photo, view_box(photo, view)), view)
                after = display(region(photo, view_box(photo, view), self.simulation.patch), view)
                # zlib lets go of the interpreter while it compresses: both PNGs at once.
                other = _ENCODER.submit(png_bytes, difference(before, after))
                self.pngs[("after", view)] = png_bytes(after)
                self.pngs[("difference", view)] = other.result()
            return self.pngs[(kind, view)]

    def export(self, view: str) -> bytes:
        simulation = self.simulation
        photo, patch = simulation.photo, simulation.patch
        area = view_box(photo, view)
        served = simulation.served
        caption = caption_of(served.model.config.name, served.model.step,
                             simulation.settings.used_by(served.controls), simulation.time)
        return export_png(region(photo, area), region(photo, area, patch), caption)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _view(request: Request) -> str:
    view = request.query_params.get("view", "face")
    if view not in VIEWS:
        raise Problem(400, f"view {view!r}: use one of {', '.join(VIEWS)}")
    return view


async def _body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused past `limit` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        over = int(declared) - limit
        raise Problem(413, f"{what}: {describe_size(int(declared))}, {over:,} byte{'s' if over != 1 else ''} over the "
                           f"{describe_size(limit)} limit; "
                           "export the photo at a smaller size")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Problem(413, f"{what}: over the {describe_size(limit)} limit; export the photo at a smaller size")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request) -> dict[str, Any]:
    """The request's JSON object body; a Problem naming what is wrong otherwise."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Problem(415, "send the settings as JSON (Content-Type: application/json)")
    try:
        payload = json.loads(await _body(request, MAX_JSON_BYTES, "settings"))
    except ValueError:
        raise Problem(400, "the settings are not valid JSON") from None
    if not isinstance(payload, dict):
        raise Problem(400, "the settings must be a JSON object")
    return payload


def _png(data: bytes, download: str | None = None) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{download}"'} if download else None
    return Response(data, media_type="image/png", headers=headers)


class Consultation:
    """The app's state: the simulator, the audit log, the private upload folder and what is held."""

    def __init__(self, simulator: Simulator, folder: Path, audit: AuditLog | None = None) -> None:
        self.simulator = simulator
        self.folder = Path(folder)
        self.audit = audit
        self.photos: Recent[HeldPhoto] = Recent(PHOTOS_HELD)
        self.results: Recent[HeldResult] = Recent(RESULTS_HELD)

    # -- the work, run in worker threads --------------------------------------------------
    def open(self, data: bytes, name: str) -> tuple[str, HeldPhoto]:
        started = time.perf_counter()
        image = decode_upload(data, name, self.folder)
        decoded = time.perf_counter()
        photo = frame_photo(image, name, hashlib.sha256(data).hexdigest())
        held = HeldPhoto(photo, {"decode": decoded - started, "crop": time.perf_counter() - decoded})
        token = uuid.uuid4().hex
        self.photos.put(token, held)
        return token, held

    def simulate(self, held: HeldPhoto, payload: dict[str, Any]) -> HeldResult:
        served = self.simulator.model(str(payload.get("model", "")))
        settings = parse_settings(payload, served.controls)
        reference = self.held_photo(settings.reference).photo if settings.reference is not None else None
        simulation = self.simulator.simulate(held.photo, served.id, settings, reference)
        if self.audit is not None:
            output = pixels_sha256(simulated_photo(simulation.photo, simulation.patch))
            try:
                self.audit.record(simulation, output)
            except OSError as error:
                raise Problem(500, f"the audit log {self.audit.path} could not be written "
                                   f"({error.strerror or error}); the simulation is not shown: free space or fix "
                                   "the file, then try again") from None
        result = HeldResult(simulation, held)
        self.results.put(simulation.id, result)
        return result

    # -- lookups ---------------------------------------------------------------------------
    def held_photo(self, token: str) -> HeldPhoto:
        held = self.photos.get(token)
        if held is None:
            raise Problem(404, f"the photo is no longer held (the app keeps the last {PHOTOS_HELD}); upload it again")
        return held

    def held_result(self, token: str) -> HeldResult:
        result = self.results.get(token)
        if result is None:
            raise Problem(404, f"the result is no longer held (the app keeps the last {RESULTS_HELD}); "
                               "simulate again")
        return result

    # -- endpoints -------------------------------------------------------------------------
    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"models": [served.describe() for served in self.simulator.models.values()]})

    async def upload(self, request: Request) -> JSONResponse:
        raw_name = request.headers.get("x-filename")
        if raw_name is None:
            raise Problem(400, "upload the photo from the page (the request has no X-Filename header)")
        name = Path(unquote(raw_name)).name or "photo"
        data = await _body(request, MAX_UPLOAD_BYTES, name)
        token, held = await run_in_threadpool(self.open, data, name)
        return JSONResponse(held.describe(token))

    async def reframe_endpoint(self, request: Request) -> JSONResponse:
        payload = await _json(request)
        token = request.path_params["photo"]
        held = self.held_photo(token)
        if "face" in payload:
            photo = reframe(held.photo, face=payload["face"])
        elif "box" in payload:
            photo = reframe(held.photo, box=payload["box"])
        else:
            raise Problem(400, "send {\"face\": index} to frame another face, or {\"box\": [x0, y0, x1, y1]}")
        held.reframe(photo)
        return JSONResponse(held.describe(token))

    async def photo_image(self, request: Request) -> Response:
        view = request.path_params["view"]
        if view not in VIEWS:
            raise Problem(404, f"view {view!r}: use one of {', '.join(VIEWS)}")
        held = self.held_photo(request.path_params["photo"])
        return _png(await run_in_threadpool(held.before_png, view))

    async def simulate_endpoint(self, request: Request) -> JSONResponse:
        payload = await _json(request)
        held = self.held_photo(str(payload.get("photo", "")))
        result = await run_in_threadpool(self.simulate, held, payload)
        simulation, token = result.simulation, result.simulation.id
        photo_token = str(payload["photo"])
        return JSONResponse({
            "result": token,
            "model": simulation.served.id,
            "label": simulation.served.label,
            "settings": simulation.settings.used_by(simulation.served.controls),
            "box": list(simulation.photo.box),
            # Less than one grey level anywhere: the page says so, with the likely reason.
            "changed": simulation.largest_change >= 1,
            "largest_change": simulation.largest_change,
            "note": simulation.no_change_reason(),
            # Seconds by stage: the photo's decoding and face box, then this simulation's.
            "timings": {**held.timings, **simulation.timings,
                        "crop": held.timings["crop"] + simulation.timings["crop"]},
            "images": {view: {
                "before": f"/api/photos/{photo_token}/{view}.png",
                "after": f"/api/results/{token}/after.png?view={view}",
                "difference": f"/api/results/{token}/difference.png?view={view}",
                "export": f"/api/results/{token}/export.png?view={view}",
            } for view in VIEWS},
        })

    async def result_image(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("after", "difference", "export"):
            raise Problem(404, f"no such image {kind!r}: use after, difference or export")
        result = self.held_result(request.path_params["result"])
        view = _view(request)
        if kind == "export":
            name = f"simulation-{quote(result.simulation.served.run.name)}-{view}.png"
            data = await run_in_threadpool(result.export, view)
            if self.audit is not None:
                try:
                    self.audit.record_save(result.simulation, view, hashlib.sha256(data).hexdigest(), utc_now())
                except OSError as error:
                    raise Problem(500, f"the audit log {self.audit.path} could not be written "
                                       f"({error.strerror or error}); nothing was saved: free space or fix the "
                                       "file, then try again") from None
            return _png(data, download=name)
        return _png(await run_in_threadpool(result.png, kind, view))


def _page() -> str:
    return resources.files("svai.serve").joinpath("static").joinpath("index.html").read_text(encoding="utf-8")


def create_app(simulator: Simulator, folder: Path, audit: AuditLog | None = None,
               hosts: Iterable[str] | None = LOOPBACK_NAMES, token: str | None = None,
               secure: bool = False) -> Starlette:
    """The ASGI app serving `simulator`'s models. `folder`: a private folder for uploads being
    decoded (`svai.serve.photo.PrivateFolder`); `audit`: where each simulation is recorded;
    `hosts`: the host names requests may name (None: any, for a non-loopback --host);
    `token`: the access token every request must carry (None: none needed, on loopback);
    `secure`: served over TLS (the token cookie is then marked Secure)."""
    state = Consultation(simulator, folder, audit)
    page = _page()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    def guarded(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Problem as problem:
                return _error(problem.status, problem.message)
            except ModelFailed as error:
                return _error(500, str(error))
            except SvaiError as error:
                return _error(400, str(error))

        return handle

    routes = [
        Route("/", index),
        Route("/api/models", guarded(state.models)),
        Route("/api/photos", guarded(state.upload), methods=["POST"]),
        Route("/api/photos/{photo}/face", guarded(state.reframe_endpoint), methods=["POST"]),
        Route("/api/photos/{photo}/{view}.png", guarded(state.photo_image)),
        Route("/api/simulate", guarded(state.simulate_endpoint), methods=["POST"]),
        Route("/api/results/{result}/{kind}.png", guarded(state.result_image)),
        Mount("/static", StaticFiles(packages=[("svai.serve", "static")]), name="static"),
    ]

    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}); the details are in the terminal "
                           "running svai serve")

    def refused(remote: str, path: str) -> None:
        log.warning("refused a request from %s without the access token", remote)
        if audit is not None:
            try:
                audit.record_refused(remote, path, utc_now())
            except OSError:
                log.exception("the audit log could not be written")

    app = Starlette(routes=routes,
                    middleware=[Middleware(Guard, hosts=hosts, token=token, refused=refused, secure=secure)],
                    exception_handlers={Exception: server_error})
    app.state.consultation = state
    return app


__all__ = ["Consultation", "Guard", "LOOPBACK_NAMES", "SECURITY_HEADERS", "TOKEN_COOKIE", "create_app"]
