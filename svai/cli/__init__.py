"""Command-line interface: one small module per command, all registered on `app`."""

from svai.cli.app import app
from svai.cli import prepare as _prepare  # noqa: F401  (registers commands)

__all__ = ["app"]
