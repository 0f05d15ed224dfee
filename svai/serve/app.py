"""The consultation app: a small ASGI application (Starlette) serving one page and a JSON API.

Routes (every error is JSON ``{"error": "<one line naming the problem and the fix>"}``):

    GET  /                                   the page (static/index.html)
    GET  /static/app.js, /static/app.css     its script and style sheet, from the package
    GET  /api/models                         the served models and the controls each takes
    POST /api/photos                         body: the photo file's bytes, header X-Filename:
                                             its name, URL-encoded -> {photo, width, height, box}
    GET  /api/photos/{photo}/{view}.png      the photo as the page shows it (view: face, photo)
    POST /api/simulate                       JSON {photo, model, procedures, intensity,
                                             composite, seed} -> {result, images, export}
    GET  /api/results/{result}/{kind}.png    kind: after, difference; ?view=face|photo
    GET  /api/results/{result}/export.png    before | simulation stamped, as a download

Privacy: the page loads nothing from elsewhere, and the Content-Security-Policy sent with
every response forbids it to (`default-src 'self'`). Responses are `no-store`, so photos stay
out of the browser's disk cache. On a loopback address, requests naming any other host are
refused, so a web page elsewhere cannot reach the app through DNS rebinding; POSTs need a
header or content type that a cross-site form cannot send. Photos and results are held in
memory (`svai.serve.store.Recent`), the newest few of each.

Heavy work (decoding, the model, encoding) runs in worker threads, so the server answers
other requests meanwhile; the model itself runs one request at a time (`Simulator`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, unquote, urlsplit

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
from svai.serve.export import export_png
from svai.serve.photo import (
    DISPLAY_REDUCING_GAP, DISPLAY_SIDE, MAX_UPLOAD_BYTES, VIEWS, Photo, decode_upload, difference, frame_photo,
    pixels_sha256, region, shrink, simulated_photo, view_box,
)
from svai.serve.simulate import ModelFailed, Simulation, Simulator, parse_settings
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


class Guard:
    """ASGI middleware: refuses requests for a host name not in `hosts` (None allows any) and
    adds `SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str] | None) -> None:
        self.app = app
        self.hosts = frozenset(h.lower().strip("[]") for h in hosts) if hosts is not None else None

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

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_secured)


class Problem(Exception):
    """A request the app refuses: an HTTP status and the one-line message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        before = self.held.before(view)
        with self.lock:
            if (kind, view) not in self.pngs:
                photo = self.simulation.photo
                after = display(region(photo, view_box(photo, view), self.simulation.patch), view)
                self.pngs[("after", view)] = png_bytes(after)
                self.pngs[("difference", view)] = png_bytes(difference(before, after))
            return self.pngs[(kind, view)]

    def export(self, view: str) -> bytes:
        photo, patch = self.simulation.photo, self.simulation.patch
        area = view_box(photo, view)
        return export_png(region(photo, area), region(photo, area, patch))


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
        raise Problem(413, f"{what}: {describe_size(int(declared))} is over the {describe_size(limit)} limit; "
                           "export the photo at a smaller size")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Problem(413, f"{what}: over the {describe_size(limit)} limit; export the photo at a smaller size")
        chunks.append(chunk)
    return b"".join(chunks)


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
        simulation = self.simulator.simulate(held.photo, served.id, settings)
        if self.audit is not None:
            output = pixels_sha256(simulated_photo(held.photo, simulation.patch))
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
        photo = held.photo
        return JSONResponse({
            "photo": token, "width": photo.size[0], "height": photo.size[1], "box": list(photo.box),
            "timings": held.timings,
            "images": {view: f"/api/photos/{token}/{view}.png" for view in VIEWS},
        })

    async def photo_image(self, request: Request) -> Response:
        view = request.path_params["view"]
        if view not in VIEWS:
            raise Problem(404, f"view {view!r}: use one of {', '.join(VIEWS)}")
        held = self.held_photo(request.path_params["photo"])
        return _png(await run_in_threadpool(held.before_png, view))

    async def simulate_endpoint(self, request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise Problem(415, "send the settings as JSON (Content-Type: application/json)")
        try:
            payload = json.loads(await _body(request, MAX_JSON_BYTES, "settings"))
        except ValueError:
            raise Problem(400, "the settings are not valid JSON") from None
        if not isinstance(payload, dict):
            raise Problem(400, "the settings must be a JSON object")
        held = self.held_photo(str(payload.get("photo", "")))
        result = await run_in_threadpool(self.simulate, held, payload)
        simulation, token = result.simulation, result.simulation.id
        photo_token = str(payload["photo"])
        return JSONResponse({
            "result": token,
            "model": simulation.served.id,
            "label": simulation.served.label,
            "settings": simulation.settings.used_by(simulation.served.controls),
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
            return _png(await run_in_threadpool(result.export, view), download=name)
        return _png(await run_in_threadpool(result.png, kind, view))


def _page() -> str:
    return resources.files("svai.serve").joinpath("static").joinpath("index.html").read_text(encoding="utf-8")


def create_app(simulator: Simulator, folder: Path, audit: AuditLog | None = None,
               hosts: Iterable[str] | None = LOOPBACK_NAMES) -> Starlette:
    """The ASGI app serving `simulator`'s models. `folder`: a private folder for uploads being
    decoded (`svai.serve.photo.PrivateFolder`); `audit`: where each simulation is recorded;
    `hosts`: the host names requests may name (None: any, for a non-loopback --host)."""
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
        Route("/api/photos/{photo}/{view}.png", guarded(state.photo_image)),
        Route("/api/simulate", guarded(state.simulate_endpoint), methods=["POST"]),
        Route("/api/results/{result}/{kind}.png", guarded(state.result_image)),
        Mount("/static", StaticFiles(packages=[("svai.serve", "static")]), name="static"),
    ]

    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}); the details are in the terminal "
                           "running svai serve")

    app = Starlette(routes=routes, middleware=[Middleware(Guard, hosts=hosts)],
                    exception_handlers={Exception: server_error})
    app.state.consultation = state
    return app


__all__ = ["Consultation", "Guard", "LOOPBACK_NAMES", "SECURITY_HEADERS", "create_app"]
