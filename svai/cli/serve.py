"""`svai serve`: the local consultation app for trained runs (needs the `svai[app]` extra)."""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from pathlib import Path
from typing import List, Optional

import typer

from svai.cli.app import app, console, err_console, user_errors
from svai.errors import SvaiError
from svai.signals import stop_signals

DEFAULT_PORT = 8765


def _missing_extra() -> str | None:
    """The first package of the `app` extra that is not installed, or None."""
    import importlib.util

    for module in ("starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _is_loopback(host: str) -> bool:
    """Whether every address `host` names is on this machine only (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); errors name the option and the fix."""
    if not 0 <= port <= 65535:
        raise SvaiError(f"--port must be between 0 and 65535; got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise SvaiError(f"--host {host}: not an address or name this machine knows; use 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SvaiError(f"--port {port} is in use on {host}: choose another (--port 0 picks a free one)") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise SvaiError(f"--host {host}: not an address of this machine; use 127.0.0.1") from None
        if error.errno == errno.EACCES:
            raise SvaiError(f"--port {port}: ports under 1024 need administrator rights; "
                            "choose one above 1024") from None
        raise
    return sock


def address_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _tls_files(certfile: Optional[Path], keyfile: Optional[Path]) -> dict | None:
    """uvicorn's TLS settings, or None; a missing half or an unreadable file is one line."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise SvaiError("--certfile and --keyfile go together: give both (PEM files) to serve https")
    import ssl

    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if not path.is_file():
            raise SvaiError(f"{option} {path}: no such file; give a PEM file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except (ssl.SSLError, ValueError) as error:
        raise SvaiError(f"--certfile {certfile} / --keyfile {keyfile}: not a certificate and its key "
                        f"({error}); give PEM files that belong together") from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai serve --run runs/p2p-warp\n\n"
        "  svai serve --run runs/p2p-warp --run runs/stargan --port 9000\n\n"
        "  svai serve --run runs/p2p-warp --audit consultations.jsonl\n\n"
        "Open the printed address in a browser on this computer: upload or drop a photo, tick the "
        "procedures, set the intensity, and compare before and simulation. Photos stay in this "
        "process's memory and are gone when it stops (Ctrl-C); the page loads nothing from the internet. "
        "--audit appends one JSON line per simulation (time, run, step, settings, sha256 of the input "
        "file and of the output pixels; never an image). Needs the app extra: pip install 'svai\\[app]'."
    ),
)
@user_errors
def serve(
    run: List[Path] = typer.Option(..., "--run", help="Run folder made by `svai train`; repeat for several models."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; anything but 127.0.0.1 lets other machines in."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on (0: a free one)."),
    audit: Optional[Path] = typer.Option(None, "--audit", help="JSON Lines file to append one line per simulation to."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    certfile: Optional[Path] = typer.Option(
        None, "--certfile", help="TLS certificate (PEM) to serve https, with --keyfile; for a --host other machines reach."),
    keyfile: Optional[Path] = typer.Option(None, "--keyfile", help="The certificate's private key (PEM)."),
) -> None:
    """Start the local consultation app: before/after comparison of a photo, on this machine only."""
    missing = _missing_extra()
    if missing is not None:
        raise SvaiError(f"svai serve needs the app extra ({missing} is not installed): pip install 'svai[app]'")
    import uvicorn

    from svai.generate import load_model
    from svai.serve.app import LOOPBACK_NAMES, create_app
    from svai.serve.audit import AuditLog
    from svai.serve.photo import PrivateFolder
    from svai.serve.simulate import Simulator, serve_models

    tls = _tls_files(certfile, keyfile)
    audit_log = AuditLog(audit) if audit is not None else None
    loopback = _is_loopback(host)
    # Another machine may reach a non-loopback address: every request then needs this token.
    token = None if loopback else secrets.token_urlsafe(24)
    sock = bind(host, port)
    try:
        loaded = [load_model(folder, device=device) for folder in run]
        simulator = Simulator(serve_models(list(run), loaded))
        with PrivateFolder() as folder:
            if folder.removed_stale:
                console.print(f"removed {folder.removed_stale} upload folder(s) left by a stopped svai serve")
            application = create_app(simulator, folder.path, audit_log,
                                     hosts=(LOOPBACK_NAMES | {host}) if loopback else None,
                                     token=token, secure=tls is not None)
            if not loopback:
                exposed = ("served over TLS" if tls is not None else
                           "photos cross the network unencrypted (give --certfile and --keyfile for TLS)")
                err_console.print(f"[bold yellow]warning:[/] --host {host}: other machines can reach this app with "
                                  f"the access token in the address; {exposed}", markup=True)
            for served in simulator.models.values():
                console.print(f"model {served.id}: {served.label}")
            address = address_of(sock, "https" if tls is not None else "http")
            console.print(f"svai serve: open {address}{'/?token=' + token if token else ''} (Ctrl-C stops it)",
                          highlight=False, soft_wrap=True)
            # A browser keeps idle connections open: a stop waits for requests under way, not for them.
            config = uvicorn.Config(application, log_level="warning", access_log=False, server_header=False,
                                    lifespan="off", timeout_graceful_shutdown=3, **(tls or {}))
            # uvicorn stops gracefully on Ctrl-C or SIGTERM, then raises the signal again for the
            # handler it found: this one only notes it, so the private folder is still removed.
            with stop_signals():
                uvicorn.Server(config).run(sockets=[sock])
        console.print("svai serve stopped; the photos it held are gone")
    finally:
        sock.close()
