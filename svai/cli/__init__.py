"""Command-line interface: one small module per command, all registered on `app`."""

from svai.cli.app import app
from svai.cli import (  # noqa: F401  (importing a module registers its commands)
    compare,
    evaluate,
    faces,
    generate,
    models,
    prepare,
    serve,
    train,
    weights,
)

__all__ = ["app"]
