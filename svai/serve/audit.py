"""The audit log of `svai serve --audit FILE.jsonl`: one JSON line per event.

Events: `simulate` (each simulation), `save` (each export the page downloads) and `refused` (a
request without the access token, on a server reachable from the network). A line says who
made what, never shows it: the UTC time, the run folder and checkpoint step, the settings the
model used, the face square, and sha256 digests of the uploaded file, the simulated photo's
pixels (`svai.serve.photo.pixels_sha256`) and the export's. No pixels and no file names (a
photo's name often holds the patient's); the only address is that of a refused request. The
file is created readable by its owner only (0600).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from svai.errors import SvaiError
from svai.serve.simulate import Simulation


class AuditLog:
    """Appends one line per simulation to a JSON Lines file; the file is created if missing,
    never truncated, and each line is flushed to disk before the page gets its result."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SvaiError(f"--audit {self.path}: is a folder; give a file such as {self.path / 'audit.jsonl'}")
        if not self.path.parent.is_dir():
            raise SvaiError(f"--audit {self.path}: the folder {self.path.parent} does not exist; create it first")
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as error:
            raise SvaiError(f"--audit {self.path}: cannot write it ({error.strerror or error}); "
                            "choose a file you can write to") from None
        self._lock = threading.Lock()

    def record(self, simulation: Simulation, output_sha256: str) -> dict[str, Any]:
        """Append the line for `simulation`, whose simulated photo hashes to `output_sha256`;
        returns the line as a dict."""
        served, photo = simulation.served, simulation.photo
        line = {
            "event": "simulate",
            "time": simulation.time,
            "result": simulation.id,
            "run": str(served.run.resolve()),
            "model": served.model.config.name,
            "family": served.model.config.family,
            "step": served.model.step,
            "settings": simulation.settings.used_by(served.controls),
            "input_sha256": photo.sha256,
            "input_size": list(photo.size),
            "face_box": list(photo.box),
            "output_sha256": output_sha256,
        }
        return self._append(line)

    def record_save(self, simulation: Simulation, view: str, export_sha256: str, time: str) -> dict[str, Any]:
        """Append the line for an export of `simulation` (its PNG file hashes to `export_sha256`)."""
        return self._append({"event": "save", "time": time, "result": simulation.id, "view": view,
                             "export_sha256": export_sha256})

    def record_refused(self, remote: str, path: str, time: str) -> dict[str, Any]:
        """Append the line for a request refused for want of the access token."""
        return self._append({"event": "refused", "time": time, "remote": remote, "path": path})

    def _append(self, line: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(line, sort_keys=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return line


__all__ = ["AuditLog"]
