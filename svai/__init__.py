"""svai: simulate the outcome of facial plastic surgery with image-to-image models.

The Python API (`svai.api`, docs/api.md) is also reachable from here, loaded on first use so
that `import svai` stays light: `svai.load_run`, `svai.prepare`, `svai.evaluate`, `svai.Run`.
"""

__version__ = "0.1.0"

_API = ("Run", "evaluate", "load_run", "prepare")


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attribute (PEP 562)
    if name in _API:
        from svai import api

        return getattr(api, name)
    raise AttributeError(f"module 'svai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
