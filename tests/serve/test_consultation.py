"""What a clinic notices first: the right face and patient, real control, a record, a token
on the network. API-level tests of `svai serve` (the browser walk is in test_browser.py)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

pytest.importorskip("starlette", reason="svai serve needs the app extra: pip install 'svai[app]'")

from tests.support.app_client import client_for, held, simulate, upload  # noqa: E402
from tests.support.serve import face_jpeg  # noqa: E402


def jpeg_of(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_faces() -> bytes:
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    return jpeg_of(np.concatenate([data.astronaut(), camera], axis=1))


# -- 3. no visible result, reported as done ------------------------------------------------------

def test_a_simulation_that_changes_nothing_says_so_with_the_reason(make_app, small_photo) -> None:
    client = client_for(make_app())
    photo = upload(client, small_photo.data).json()["photo"]
    zero = simulate(client, photo, procedures={"nose": 1.0}, intensity=0.0).json()
    assert zero["changed"] is False and zero["largest_change"] == 0
    assert "intensity is 0" in zero["note"]
    none = simulate(client, photo, procedures={}, intensity=1.0).json()
    simulation = held(client.app, none["result"])
    assert none["changed"] is (simulation.largest_change >= 1)
    full = simulate(client, photo, procedures={"nose": 1.0}, intensity=1.0).json()
    assert full["changed"] is True and full["note"] is None and full["largest_change"] >= 1


def test_strengths_per_procedure_reach_the_model(make_app, small_photo) -> None:
    client = client_for(make_app())
    photo = upload(client, small_photo.data).json()["photo"]
    half = simulate(client, photo, procedures={"nose": 0.5}).json()
    whole = simulate(client, photo, procedures={"nose": 1.0}).json()
    assert half["settings"]["procedures"] == {"nose": 0.5}
    assert not np.array_equal(held(client.app, half["result"]).patch, held(client.app, whole["result"]).patch)
    bad = simulate(client, photo, procedures={"nose": 1.5})
    assert bad.status_code == 400 and "strength of nose must be between 0 and 1" in bad.json()["error"]


# -- 4. what the model acted on: the face square, several faces, a corrected square ---------------

def test_several_faces_are_shown_and_the_surgeon_picks_one(make_app, two_faces, use_face_weights) -> None:
    client = client_for(make_app())
    answer = upload(client, two_faces, "group.jpg").json()
    overlay = answer["overlay"]
    assert len(overlay["faces"]) == 2 and overlay["face"] == 0
    assert set(overlay["regions"]) >= {"eyes", "nose", "jaw"}
    assert answer["box"][2] <= 512  # the astronaut, the larger face, is framed first
    picked = client.post(f"/api/photos/{answer['photo']}/face", json={"face": 1}).json()
    assert picked["overlay"]["face"] == 1 and picked["box"][0] >= 512 - 50
    result = simulate(client, answer["photo"], procedures={"nose": 1.0}).json()
    assert result["box"] == picked["box"]
    wrong = client.post(f"/api/photos/{answer['photo']}/face", json={"face": 5})
    assert wrong.status_code == 400 and "face must be one of 0..1" in wrong.json()["error"]


def test_the_square_can_be_moved_and_resized(make_app, small_photo) -> None:
    client = client_for(make_app())
    answer = upload(client, small_photo.data).json()
    x0, y0, x1, y1 = answer["box"]
    side = x1 - x0
    moved = client.post(f"/api/photos/{answer['photo']}/face",
                        json={"box": [x0 + 10, y0 + 5, x1 + 10 + 20, y1 + 5 + 20]}).json()
    mx0, my0, mx1, my1 = moved["box"]
    assert mx1 - mx0 == my1 - my0 == side + 20
    assert (mx0 + mx1) / 2 == pytest.approx((x0 + x1) / 2 + 20, abs=1)
    before = client.get(moved["images"]["face"]).content
    assert Image.open(io.BytesIO(before)).size != (0, 0)
    result = simulate(client, answer["photo"]).json()
    assert result["box"] == moved["box"]
    for bad in ([1, 2, 3], ["a", 0, 1, 1], [10, 10, 5, 5]):
        refused = client.post(f"/api/photos/{answer['photo']}/face", json={"box": bad})
        assert refused.status_code == 400 and "box" in refused.json()["error"]


# -- 7. the record: caption in the export (test_app), save audited, audit 0600, stale folders ------

def test_save_is_an_audit_event_and_the_audit_file_is_private(make_app, small_photo, tmp_path) -> None:
    log = tmp_path / "new-audit.jsonl"
    client = client_for(make_app(audit=log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    photo = upload(client, small_photo.data).json()["photo"]
    answer = simulate(client, photo, procedures={"jaw": 0.7}).json()
    exported = client.get(answer["images"]["photo"]["export"])
    assert exported.status_code == 200
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in records] == ["simulate", "save"]
    save = records[1]
    assert save["result"] == answer["result"] and save["view"] == "photo"
    import hashlib

    assert save["export_sha256"] == hashlib.sha256(exported.content).hexdigest()


def test_a_start_removes_upload_folders_a_killed_server_left(tmp_path, monkeypatch) -> None:
    from svai.serve import photo as photo_module

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    left = tmp_path / f"svai-serve-{dead_pid}-abc123"
    left.mkdir()
    (left / "upload.jpg").write_bytes(b"a patient's photo")
    alive = tmp_path / f"svai-serve-{os.getpid()}-def456"
    alive.mkdir()
    other = tmp_path / "svai-serve-notapid"
    other.mkdir()
    monkeypatch.setattr(photo_module.PrivateFolder, "parent", staticmethod(lambda: tmp_path))
    with photo_module.PrivateFolder() as folder:
        assert folder.removed_stale == 1
        assert not left.exists() and alive.exists() and other.exists()
        assert folder.path.name.startswith(f"svai-serve-{os.getpid()}-")
    assert not folder.path.exists()


# -- on the network: the access token ------------------------------------------------------------

def test_off_loopback_every_request_needs_the_token(simulator, tmp_path, small_photo) -> None:
    from starlette.testclient import TestClient

    from svai.serve.app import TOKEN_COOKIE, create_app
    from svai.serve.audit import AuditLog

    log = tmp_path / "audit.jsonl"
    folder = tmp_path / "private"
    folder.mkdir()
    app = create_app(simulator, folder, AuditLog(log), hosts=None, token="s3cret-token")
    outsider = TestClient(app, base_url="http://10.0.0.5:8765")
    assert outsider.get("/").status_code == 403
    assert outsider.get("/api/models").status_code == 403
    assert outsider.get("/?token=wrong").status_code == 403
    assert outsider.post("/api/photos", content=small_photo.data, headers={"X-Filename": "a.jpg"}).status_code == 403
    refused = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in refused] == ["refused"] * 4
    assert all(r["remote"] == "testclient" for r in refused) and refused[0]["path"] == "/"
    tablet = TestClient(app, base_url="http://10.0.0.5:8765")
    opened = tablet.get("/?token=s3cret-token")
    assert opened.status_code == 200
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}=s3cret-token") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert tablet.get("/api/models").status_code == 200  # the cookie carries the token
    assert TestClient(app).get("/api/models", headers={"X-Svai-Token": "s3cret-token"}).status_code == 200


# -- 9. a reference photo for reference-guided models ----------------------------------------------

@pytest.fixture(scope="module")
def reference_app(tiny_dataset, tmp_path_factory):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from svai.cli import app as cli
    from svai.generate import load_model
    from svai.serve.app import create_app
    from svai.serve.simulate import Simulator, serve_models

    run = tmp_path_factory.mktemp("v2") / "run"
    tiny = ["model.ngf=8", "model.ndf=8", "model.max_conv_dim=16", "model.latent_dim=4", "model.style_dim=8",
            "model.hidden_dim=16", "train.sample_every=0", "train.evaluate=false"]
    result = CliRunner().invoke(cli, ["train", "--model", "stargan-v2", "--data", str(tiny_dataset), "--out", str(run),
                                      "--steps", "2", "--batch-size", "2", "--image-size", "32",
                                      *[arg for item in tiny for arg in ("--set", item)]])
    assert result.exit_code == 0, result.output
    simulator = Simulator(serve_models([run], [load_model(run, device="cpu")]))
    folder = tmp_path_factory.mktemp("private")
    return create_app(simulator, folder)


def test_a_reference_photo_guides_a_reference_model(reference_app) -> None:
    client = client_for(reference_app)
    described = client.get("/api/models").json()["models"][0]
    assert described["reference"] is True
    photo = upload(client, face_jpeg(400, 400, seed=1).data).json()["photo"]
    references = [upload(client, face_jpeg(400, 400, seed=seed).data, "ref.jpg").json()["photo"] for seed in (2, 3)]
    first, second = (simulate(client, photo, reference=ref).json() for ref in references)
    assert "result" in first and "result" in second
    assert not np.array_equal(held(client.app, first["result"]).patch, held(client.app, second["result"]).patch)
    missing = simulate(client, photo, reference="not-a-photo")
    assert missing.status_code == 404 and "upload it again" in missing.json()["error"]


def test_composite_keeps_the_ticked_procedures_landmark_region(make_app, use_face_weights) -> None:
    from svai.face import FaceFinder
    from svai.serve.photo import square_inside

    client = client_for(make_app())
    photo = upload(client, jpeg_of(data.astronaut()), "a.jpg").json()["photo"]
    answer = simulate(client, photo, procedures={"nose": 1.0}, composite=True).json()
    simulation = held(client.app, answer["result"])
    x0, y0, x1, y1 = simulation.photo.box
    with FaceFinder(use_face_weights) as finder:
        face = finder.find(simulation.photo.pixels)[0]
    assert square_inside(face.square, 512, 512) == (x0, y0, x1, y1)
    nose = face.region_masks(512, 512, ["nose"])["nose"][y0:y1, x0:x1] > 0
    changed = np.abs(simulation.patch.astype(int) - simulation.photo.pixels[y0:y1, x0:x1]).max(axis=2) > 0
    assert changed.any()
    # Nothing moves farther than the feather (3 % of the model's side, scaled up) from the nose.
    from scipy import ndimage

    reach = ndimage.binary_dilation(nose, iterations=int(0.05 * (x1 - x0)) + 2)
    assert not (changed & ~reach).any()
