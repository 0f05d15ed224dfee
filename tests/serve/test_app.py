"""The consultation app's request handling, through Starlette's test client (no browser)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="svai serve needs the app extra: pip install 'svai[app]'")
pytest.importorskip("httpx", reason="the app's test client needs httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from svai.data.align import face_box, render  # noqa: E402
from svai.generate import translate_batch  # noqa: E402
from svai.serve.app import LOOPBACK_NAMES, display  # noqa: E402
from svai.models.base import Request  # noqa: E402
from svai.serve.photo import pixels_sha256, region, simulated_photo, view_box  # noqa: E402
from svai.serve.simulate import Settings, Simulator, model_request  # noqa: E402

from tests.support.app_client import client_for, held, simulate, upload  # noqa: E402
from tests.support.serve import FacePhoto, LiveServer, face_jpeg  # noqa: E402


MakeApp = Callable[..., Starlette]


def png(client: TestClient, url: str) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        types.append(data[offset + 4:offset + 8].decode("ascii"))
        offset += 12 + length
    return types


# -- models and page ---------------------------------------------------------------------------

def test_models_list_the_controls_each_family_reads(make_app: MakeApp) -> None:
    models = client_for(make_app()).get("/api/models").json()["models"]
    assert [m["id"] for m in models] == ["1", "2"]
    conditioned, plain = models
    assert conditioned["procedures"] == ["eyes", "nose", "jaw"] and conditioned["intensity"] is True
    assert plain["procedures"] == [] and plain["intensity"] is True
    assert conditioned["step"] == 2 and conditioned["image_size"] == 32
    assert conditioned["seed"] is False and conditioned["composite"] is False


def test_page_loads_nothing_from_elsewhere(make_app: MakeApp) -> None:
    client = client_for(make_app())
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    references = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert references and all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    for ref in references:
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        # The SVG namespace is a name, never fetched; any other URL would be a request elsewhere.
        text = asset.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text, re.IGNORECASE), ref
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["cache-control"] == "no-store"


def test_other_host_names_are_refused_on_loopback(make_app: MakeApp) -> None:
    app = make_app(hosts=LOOPBACK_NAMES)
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/api/models").status_code == 200
    assert TestClient(app, base_url="http://localhost:8765").get("/api/models").status_code == 200
    refused = TestClient(app, base_url="http://rebound.example:8765").get("/api/models")
    assert refused.status_code == 400 and "unknown host" in refused.text


def test_posts_need_what_a_cross_site_form_cannot_send(make_app: MakeApp, small_photo: FacePhoto) -> None:
    client = client_for(make_app())
    assert client.post("/api/photos", content=small_photo.data).status_code == 400
    photo = upload(client, small_photo.data).json()["photo"]
    as_text = client.post("/api/simulate", content=json.dumps({"photo": photo, "model": "1"}),
                          headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415 and "application/json" in as_text.json()["error"]


# -- the photo -------------------------------------------------------------------------------

def test_a_12_mp_phone_photo_is_turned_upright_and_framed_on_its_face(make_app: MakeApp) -> None:
    photo = face_jpeg(3000, 4000, orientation=6)  # stored 4000 x 3000, shown 3000 x 4000
    assert Image.open(io.BytesIO(photo.data)).size == (4000, 3000)
    client = client_for(make_app())
    answer = upload(client, photo.data, "IMG_0001.JPG").json()
    assert (answer["width"], answer["height"]) == (3000, 4000)
    x0, y0, x1, y1 = answer["box"]
    assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= 3000 and y1 <= 4000
    fx0, fy0, fx1, fy1 = photo.face
    assert fx0 <= (x0 + x1) / 2 <= fx1 and fy0 <= (y0 + y1) / 2 <= fy1
    # The whole-photo view is the upright photo itself, only shrunk for the screen.
    upright = photo.upright()
    assert np.array_equal(png(client, answer["images"]["photo"]), display(upright, "photo"))
    # The box is the one `svai prepare --crop face` draws on the same photo.
    expected = face_box(Image.fromarray(upright), (0.0, 0.0, 3000.0, 4000.0))
    assert expected is not None
    assert np.allclose(answer["box"], [round(v) for v in expected], atol=1)


def test_the_simulation_is_pasted_into_the_full_resolution_photo(
        make_app: MakeApp, simulator: Simulator, small_photo: FacePhoto) -> None:
    app = make_app()
    client = client_for(app)
    photo = upload(client, small_photo.data).json()
    answer = simulate(client, photo["photo"], procedures=["nose"], intensity=1.0)
    assert answer.status_code == 200, answer.text
    simulation = held(app, answer.json()["result"])
    upright = small_photo.upright()
    out = simulated_photo(simulation.photo, simulation.patch)
    assert out.shape == upright.shape == (640, 480, 3)
    x0, y0, x1, y1 = simulation.photo.box
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], upright[outside])
    assert np.abs(out[y0:y1, x0:x1].astype(int) - upright[y0:y1, x0:x1]).mean() > 5
    # Seen at the model's size, the pasted square is the model's own output.
    size = simulator.model("1").model.config.data.image_size
    before = render(Image.fromarray(np.ascontiguousarray(upright[y0:y1, x0:x1])), (0.0, 0.0, x1 - x0, y1 - y0), size)
    served = simulator.models["1"]
    predicted = translate_batch(served.model, [before], model_request(served, Settings(("nose",), 1.0)))[0]
    seen = render(Image.fromarray(out[y0:y1, x0:x1]), (0.0, 0.0, x1 - x0, y1 - y0), size)
    assert np.abs(seen.astype(int) - predicted).mean() < 3


def test_intensity_zero_returns_the_photo_byte_for_byte(make_app: MakeApp, small_photo: FacePhoto) -> None:
    app = make_app()
    client = client_for(app)
    photo = upload(client, small_photo.data).json()
    answer = simulate(client, photo["photo"], procedures=["eyes"], intensity=0.0).json()
    simulation = held(app, answer["result"])
    assert np.array_equal(simulated_photo(simulation.photo, simulation.patch), small_photo.upright())
    for view in ("face", "photo"):
        images = answer["images"][view]
        assert np.array_equal(png(client, images["after"]), png(client, images["before"]))
        assert not png(client, images["difference"]).any()


def test_the_result_follows_procedures_and_intensity(make_app: MakeApp, small_photo: FacePhoto) -> None:
    app = make_app()
    client = client_for(app)
    photo = upload(client, small_photo.data).json()["photo"]
    outputs = {}
    for key, settings in {"eyes": {"procedures": ["eyes"]}, "jaw": {"procedures": ["jaw"]},
                          "eyes-half": {"procedures": ["eyes"], "intensity": 0.5}}.items():
        answer = simulate(client, photo, **settings).json()
        simulation = held(app, answer["result"])
        outputs[key] = simulated_photo(simulation.photo, simulation.patch).astype(int)
    upright = small_photo.upright().astype(int)
    assert not np.array_equal(outputs["eyes"], outputs["jaw"])
    # Half the intensity moves the photo about half as far (pix2pix blends its drawing).
    full, half = np.abs(outputs["eyes"] - upright).mean(), np.abs(outputs["eyes-half"] - upright).mean()
    assert 0.4 * full < half < 0.6 * full


def test_composite_keeps_the_photo_outside_the_models_change(
        make_app: MakeApp, simulator: Simulator, small_photo: FacePhoto, monkeypatch: pytest.MonkeyPatch) -> None:
    # A model that brightens the centre eighth of its 32 px input strongly, and every pixel by
    # two grey levels (under the change map's threshold of about ten).
    def translate(nets: dict, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        after = before + 2 / 127.5
        after[..., 12:20, 12:20] += 0.5
        return after.clamp(-1, 1)

    monkeypatch.setattr(simulator.models["1"].model.family, "translate", translate)
    app = make_app()
    client = client_for(app)
    photo = upload(client, small_photo.data).json()["photo"]
    plain = held(app, simulate(client, photo).json()["result"])
    blended = held(app, simulate(client, photo, composite=True).json()["result"])
    x0, y0, x1, y1 = plain.photo.box
    scale = (x1 - x0) / 32
    own = small_photo.upright()[y0:y1, x0:x1].astype(int)
    full_change, kept_change = np.abs(plain.patch - own), np.abs(blended.patch - own)
    # Far from the brightened block (4 model pixels: the feather and the upsampling reach less).
    far = np.ones(own.shape[:2], bool)
    near = slice(round((12 - 4) * scale), round((20 + 4) * scale))
    far[near, near] = False
    assert full_change[far].mean() > 1.5
    assert not kept_change[far].any()
    # Inside the block the composite is the simulation itself, and it never goes further.
    block = slice(round(13 * scale), round(19 * scale))
    assert np.abs(blended.patch[block, block].astype(int) - plain.patch[block, block]).max() <= 1
    assert full_change[block, block].mean() > 50
    assert (kept_change <= full_change + 1).all()


def test_model_without_procedure_control_refuses_procedures(make_app: MakeApp, small_photo: FacePhoto) -> None:
    client = client_for(make_app())
    photo = upload(client, small_photo.data).json()["photo"]
    refused = client.post("/api/simulate", json={"photo": photo, "model": "2", "procedures": ["nose"]})
    assert refused.status_code == 400 and "no procedure control" in refused.json()["error"]
    assert client.post("/api/simulate", json={"photo": photo, "model": "2", "intensity": 0.3}).status_code == 200
    unknown = simulate(client, photo, procedures=["ears"])
    assert unknown.status_code == 400 and "eyes, nose, jaw" in unknown.json()["error"]
    for bad in (1.5, -0.1, "high", True):
        answer = simulate(client, photo, intensity=bad)
        assert answer.status_code == 400 and "intensity" in answer.json()["error"]
    assert client.post("/api/simulate", json={"photo": photo, "model": "7"}).status_code == 400


# -- bad input -------------------------------------------------------------------------------

def bomb_png() -> bytes:
    """A 9000 x 9000 PNG (81 MP, over the 64 MP limit) of a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")
    return buffer.getvalue()


def no_face_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (40, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, data, status, fragment", [
    ("notes.txt", b"not a photo at all", 400, "notes.txt: not an image"),
    ("empty.jpg", b"", 400, "empty.jpg: the file is empty"),
    ("bomb.png", None, 400, "bomb.png: 9000x9000 exceeds the safe limit"),
    ("wall.jpg", None, 400, "wall.jpg: no face found"),
    ("IMG_1.HEIC", b"\x00\x00\x00\x18ftypheic", 400, "convert it to JPEG"),
])
def test_bad_uploads_are_one_message_and_the_next_request_works(
        make_app: MakeApp, small_photo: FacePhoto, name: str, data: bytes | None, status: int, fragment: str) -> None:
    data = {"bomb.png": bomb_png, "wall.jpg": no_face_jpeg}.get(name, lambda: data)()
    client = client_for(make_app())
    answer = upload(client, data, name)
    assert answer.status_code == status
    message = answer.json()["error"]
    assert fragment in message and "\n" not in message and "/tmp" not in message
    photo = upload(client, small_photo.data).json()["photo"]
    assert simulate(client, photo).status_code == 200


def test_an_oversized_upload_is_refused_before_it_is_read(
        make_app: MakeApp, small_photo: FacePhoto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("svai.serve.app.MAX_UPLOAD_BYTES", 1000)
    answer = upload(client_for(make_app()), small_photo.data)
    assert answer.status_code == 413 and "limit" in answer.json()["error"]
    over = len(small_photo.data) - 1000
    assert f"{over:,} bytes over the 1000 bytes limit" in answer.json()["error"]
    # Just over 100 MB: the sizes in the message never read the same.
    monkeypatch.setattr("svai.serve.app.MAX_UPLOAD_BYTES", 100 * 2**20)
    big = client_for(make_app()).post("/api/photos", content=b"", headers={
        "X-Filename": "big.jpg", "Content-Length": str(100 * 2**20 + 1)})
    assert big.status_code == 413 and "100 MB, 1 byte over the 100 MB limit" in big.json()["error"]


def test_a_small_upload_limit_is_stated_in_units_that_say_something(
        make_app: MakeApp, small_photo: FacePhoto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("svai.serve.app.MAX_UPLOAD_BYTES", 1000)
    message = upload(client_for(make_app()), small_photo.data).json()["error"]
    assert "over the 1000 bytes limit" in message and "0 MB" not in message


def test_uploads_leave_nothing_in_the_private_folder(
        make_app: MakeApp, small_photo: FacePhoto, tmp_path: Path) -> None:
    client = client_for(make_app())
    upload(client, small_photo.data)
    upload(client, b"junk", "junk.jpg")
    assert list((tmp_path / "private").iterdir()) == []


def test_a_failing_model_is_a_message_and_the_next_request_works(
        make_app: MakeApp, simulator: Simulator, small_photo: FacePhoto, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(make_app())
    photo = upload(client, small_photo.data).json()["photo"]
    family = simulator.models["1"].model.family

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("weights full of NaN")

    monkeypatch.setattr(family, "translate", broken)
    failed = simulate(client, photo)
    assert failed.status_code == 500
    assert "failed on this photo (RuntimeError: weights full of NaN)" in failed.json()["error"]
    monkeypatch.undo()
    assert simulate(client, photo).status_code == 200


def test_a_forgotten_photo_or_result_asks_for_it_again(make_app: MakeApp) -> None:
    client = client_for(make_app())
    gone = simulate(client, "0" * 32)
    assert gone.status_code == 404 and "upload it again" in gone.json()["error"]
    assert client.get(f"/api/results/{'0' * 32}/after.png").status_code == 404


# -- concurrency -----------------------------------------------------------------------------

def test_two_simultaneous_simulations_both_get_their_results(
        live_server: LiveServer, small_photo: FacePhoto) -> None:
    def post(path: str, body: bytes, headers: dict[str, str]) -> dict:
        request = urllib.request.Request(live_server.url + path, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    photo = post("/api/photos", small_photo.data, {"X-Filename": "a.jpg"})["photo"]
    answers: dict[int, dict] = {}
    barrier = threading.Barrier(2)

    def tab(index: int) -> None:
        barrier.wait()
        body = json.dumps({"photo": photo, "model": "1", "procedures": ["nose"], "intensity": 0.5 * index}).encode()
        answers[index] = post("/api/simulate", body, {"Content-Type": "application/json"})

    tabs = [threading.Thread(target=tab, args=(i,)) for i in (1, 2)]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(timeout=60)
    assert sorted(answers) == [1, 2]
    assert answers[1]["settings"]["intensity"] == 0.5 and answers[2]["settings"]["intensity"] == 1.0
    for answer in answers.values():
        with urllib.request.urlopen(live_server.url + answer["images"]["face"]["after"], timeout=60) as response:
            assert response.status == 200 and response.read()[:4] == b"\x89PNG"
    assert len(live_server.audit.read_text().splitlines()) == 2


# -- audit and export ------------------------------------------------------------------------

def test_the_audit_log_holds_one_line_per_simulation_and_no_image(
        make_app: MakeApp, small_photo: FacePhoto, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"earlier": "line"}\n')
    app = make_app(audit=log)
    client = client_for(app)
    photo = upload(client, small_photo.data, "Jane Doe 1984.jpg").json()["photo"]
    first = simulate(client, photo, procedures=["nose", "eyes"], intensity=0.25, composite=True).json()
    second = simulate(client, photo, intensity=0.0).json()
    lines = log.read_text().splitlines()
    assert lines[0] == '{"earlier": "line"}' and len(lines) == 3
    records = [json.loads(line) for line in lines[1:]]
    run = str(app.state.consultation.simulator.models["1"].run.resolve())
    for record in records:
        assert set(record) == {"event", "time", "result", "run", "model", "family", "step", "settings",
                               "input_sha256", "input_size", "face_box", "output_sha256"}
        assert record["event"] == "simulate"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert record["run"] == run and record["step"] == 2 and record["model"] == "pix2pix"
        assert record["input_sha256"] == hashlib.sha256(small_photo.data).hexdigest()
        assert record["input_size"] == [480, 640]
    assert records[0]["settings"] == {"procedures": {"eyes": 1.0, "nose": 1.0}, "intensity": 0.25, "composite": True}
    assert records[1]["settings"] == {"procedures": {}, "intensity": 0.0, "composite": False}
    assert [r["result"] for r in records] == [first["result"], second["result"]]
    simulation = held(app, first["result"])
    assert records[0]["output_sha256"] == pixels_sha256(simulated_photo(simulation.photo, simulation.patch))
    # Intensity 0 returns the photo, so the output's digest is that of the photo's own pixels.
    assert records[1]["output_sha256"] == pixels_sha256(small_photo.upright())
    assert second["result"] != first["result"]
    text = log.read_text()
    assert "Jane" not in text and max(len(line) for line in lines) < 1000


def test_a_simulation_the_audit_log_cannot_record_is_not_shown(
        make_app: MakeApp, small_photo: FacePhoto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from svai.serve.audit import AuditLog

    def full(self: AuditLog, *args: Any) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    app = make_app(audit=tmp_path / "audit.jsonl")
    client = client_for(app)
    photo = upload(client, small_photo.data).json()["photo"]
    monkeypatch.setattr(AuditLog, "record", full)
    refused = simulate(client, photo)
    assert refused.status_code == 500
    assert "could not be written (No space left on device)" in refused.json()["error"]
    assert len(app.state.consultation.results) == 0
    monkeypatch.undo()
    assert simulate(client, photo).status_code == 200


def test_an_audit_file_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    from svai.errors import SvaiError
    from svai.serve.audit import AuditLog

    with pytest.raises(SvaiError, match="does not exist"):
        AuditLog(tmp_path / "missing" / "audit.jsonl")
    with pytest.raises(SvaiError, match="is a folder"):
        AuditLog(tmp_path)


def test_save_exports_before_and_simulation_stamped_without_metadata(
        make_app: MakeApp, small_photo: FacePhoto) -> None:
    from svai.serve.export import caption_of, side_by_side

    app = make_app()
    client = client_for(app)
    photo = upload(client, small_photo.data).json()["photo"]
    answer = simulate(client, photo, procedures=["jaw"]).json()
    exported = client.get(answer["images"]["face"]["export"])
    assert exported.status_code == 200
    assert exported.headers["content-disposition"].startswith("attachment;")
    assert chunk_types(exported.content)[0] == "IHDR"
    assert set(chunk_types(exported.content)) == {"IHDR", "IDAT", "IEND"}
    image = Image.open(io.BytesIO(exported.content))
    assert not image.info and not image.getexif()
    simulation = held(app, answer["result"])
    area = view_box(simulation.photo, "face")
    before, after = region(simulation.photo, area), region(simulation.photo, area, simulation.patch)
    pixels = np.asarray(image.convert("RGB"))
    caption = caption_of("pix2pix", 2, {"procedures": {"jaw": 1.0}, "intensity": 1.0, "composite": False},
                         simulation.time)
    assert caption[:4] == ["Model: pix2pix, step 2", "Procedures: jaw 1.00", "Intensity: 1.00", "Composite: off"]
    assert caption[4] == f"Simulated: {simulation.time[:10]} {simulation.time[11:16]} UTC"
    assert np.array_equal(pixels, side_by_side(before, after, caption=caption))
    # The caption is in the pixels: other settings give other pixels below the stamp.
    other = side_by_side(before, after, caption=caption[:2] + ["Intensity: 0.50"] + caption[3:])
    assert other.shape == pixels.shape and not np.array_equal(other, pixels)
    # The panels are the photos themselves (small enough not to be shrunk), side by side.
    height, width = before.shape[:2]
    before_at, after_at = find(pixels, before), find(pixels, after)
    assert before_at is not None and after_at is not None
    assert before_at[0] == after_at[0] and after_at[1] >= before_at[1] + width
    stamp = pixels[before_at[0] + height:]
    assert (stamp < 100).any()  # the stamp's ink below the photos


def find(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int] | None:
    """(row, column) where `needle` lies inside `haystack` exactly, or None."""
    height, width = needle.shape[:2]
    for y in range(haystack.shape[0] - height + 1):
        for x in range(haystack.shape[1] - width + 1):
            if np.array_equal(haystack[y, x:x + width], needle[0]) and np.array_equal(
                    haystack[y:y + height, x:x + width], needle):
                return y, x
    return None


def test_a_warp_model_moves_the_photos_own_pixels_at_full_resolution(small_photo: FacePhoto, tmp_path: Path) -> None:
    """For a warp model the face square is resampled at its own size (the field upsampled),
    not given an upsampled pixel change: the patch is exactly `translate_batch` on the
    full-size square, and the photo outside the square is untouched."""
    from svai.run import resolve
    from svai.generate import LoadedModel
    from svai.models.registry import make_family
    from svai.serve.photo import frame_photo
    from svai.serve.photo import face_square
    from svai.serve.simulate import serve_models

    torch.manual_seed(0)
    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", "model.output=warp"])
    family = make_family(config)
    generator = family.build()["G"]
    with torch.no_grad():
        generator.output_layer.bias.fill_(0.5)  # a uniform field and colour change
    model = LoadedModel(config, family, {"G": generator}, 0, torch.device("cpu"))
    served = serve_models([tmp_path / "warp"], [model])
    assert served[0].model.family.moves_pixels()
    upright = small_photo.upright()
    photo = frame_photo(Image.fromarray(upright), "warp.jpg", "0" * 64)
    simulation = Simulator(served).simulate(photo, served[0].id, Settings())
    expected = translate_batch(model, [face_square(photo)], model_request(served[0], Settings()))[0]
    assert np.array_equal(simulation.patch, expected)
    out = simulated_photo(photo, simulation.patch)
    x0, y0, x1, y1 = photo.box
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], upright[outside]) and not np.array_equal(out, upright)


@pytest.mark.parametrize("mode", ["residual", "masked"])
def test_serve_gives_the_pixels_generate_gives_for_the_face_square(
        small_photo: FacePhoto, tmp_path: Path, mode: str) -> None:
    """One path from the model's change to the photo's pixels: the patch of a residual or
    masked model is exactly what `svai generate` (`translate_batch`) makes of the face square."""
    from svai.run import resolve
    from svai.generate import LoadedModel
    from svai.models.registry import make_family
    from svai.serve.photo import face_square, frame_photo
    from svai.serve.simulate import serve_models

    torch.manual_seed(0)
    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", f"model.output={mode}"])
    family = make_family(config)
    generator = family.build()["G"]
    with torch.no_grad():
        generator.output_layer.bias.fill_(0.5)  # a change everywhere
    model = LoadedModel(config, family, {"G": generator.eval()}, 0, torch.device("cpu"))
    served = serve_models([tmp_path / mode], [model])
    photo = frame_photo(Image.fromarray(small_photo.upright()), f"{mode}.jpg", "0" * 64)
    settings = Settings(intensity=0.5)
    simulation = Simulator(served).simulate(photo, served[0].id, settings)
    expected = translate_batch(model, [face_square(photo)], model_request(served[0], settings))[0]
    assert np.array_equal(simulation.patch, expected) and not np.array_equal(expected, face_square(photo))
