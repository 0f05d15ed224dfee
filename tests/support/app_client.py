"""Requests to the consultation app through Starlette's test client (needs svai[app] and httpx)."""

from __future__ import annotations

from typing import Any

from httpx import Response
from starlette.applications import Starlette
from starlette.testclient import TestClient

from svai.serve.simulate import Simulation


def client_for(app: Starlette) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def upload(client: TestClient, data: bytes, name: str = "photo.jpg") -> Response:
    return client.post("/api/photos", content=data, headers={"X-Filename": name})


def simulate(client: TestClient, photo: str, **settings: Any) -> Response:
    return client.post("/api/simulate", json={"photo": photo, "model": "1", **settings})


def held(app: Starlette, result: str) -> Simulation:
    """A simulation the app holds, with its full-resolution result."""
    return app.state.consultation.results.get(result).simulation
