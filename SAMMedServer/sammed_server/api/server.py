"""``serve()``: run the worker with uvicorn on a socket bound before the "ready" line is printed."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import uvicorn

from ..errors import InputError
from ..settings import data_roots
from .app import create_app
from .connections import ConnectionLimits, limited_protocol
from .protocol import PROTOCOL_VERSION, READY_MARKER, TOKEN_MARKER
from .service import Service

TOKEN_ENV = "SAMMED_TOKEN"
MAX_CONNECTIONS = 512  # all clients together; beyond it uvicorn answers 503


def serve(
    host: str = "127.0.0.1", port: int = 8765, token: Optional[str] = None, model: str = "litemedsam",
    device: Optional[str] = None, allow_hosts: Sequence[str] = (), roots: Sequence[Path] = (),
    limits: ConnectionLimits = ConnectionLimits(),
) -> None:
    """Serve until interrupted. ``port=0`` picks a free port; the ready line names the real URL.

    The token may also come from ``$SAMMED_TOKEN`` (keeps it out of the process list); ``token="auto"`` makes a
    random one for this start and appends ``token=<token>`` to the ready line. Binding to a non-loopback address
    without a token is refused. ``allow_hosts`` are extra ``Host`` names accepted (DNS-rebinding defence),
    ``roots`` extra folders ``from-path`` may read (besides the defaults of :func:`settings.data_roots`).
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    if token == "auto":
        token = secrets.token_urlsafe(24)
        announce = f" {TOKEN_MARKER}{token}"
    else:
        announce = ""
    if not is_loopback(host) and not token:
        raise InputError(
            f"refusing to listen on {host} without an API token: anyone on the network could use this worker",
            f"pass --token (or set ${TOKEN_ENV}), or bind 127.0.0.1",
        )
    if "*" in allow_hosts and not token:
        raise InputError("--allow-host '*' needs a token: any web page could otherwise reach this worker")
    service = Service(model=model, device=device, roots=[*data_roots(), *roots])
    service.predictor()  # load the default model now: a missing checkpoint fails here, not on the first click
    sock = _listen(host, port)
    url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    bound = [] if host in ("0.0.0.0", "::") else [host]
    app = create_app(service, token, allowed_hosts=[*bound, *allow_hosts], any_ip=not is_loopback(host))
    config = uvicorn.Config(
        app, log_level="warning", timeout_keep_alive=30, timeout_graceful_shutdown=5,
        http=limited_protocol(limits), limit_concurrency=MAX_CONNECTIONS,
    )
    server = uvicorn.Server(config)
    _return_freed_memory()
    print(f"{READY_MARKER} {url} (protocol {PROTOCOL_VERSION}, model {service.default_model} on {service.device})"
          f"{announce}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        service.close()


def _return_freed_memory(every_s: float = 10.0) -> None:
    """Every ``every_s``, hand memory that glibc keeps in its per-thread arenas back to the system (after a burst of
    large request bodies the RSS would otherwise stay high). Nothing happens without glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return

    def run() -> None:
        while True:
            time.sleep(every_s)
            trim(0)

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0), or asyncio will not set TCP_NODELAY on accepted connections and every
    # keep-alive request waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})", "pick another --port, or stop the program using it") from None
    sock.listen(128)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

