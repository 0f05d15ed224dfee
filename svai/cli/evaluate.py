"""`svai evaluate`."""

from __future__ import annotations

from svai.cli.app import app, console, user_errors  # noqa: F401
