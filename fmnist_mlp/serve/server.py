"""``fmnist-mlp serve``: load the model, bind the socket, run uvicorn until SIGTERM or Ctrl-C.

Safe by default: the socket binds 127.0.0.1. Any other address needs a token (``--token`` or
``$FMNIST_MLP_SERVE_TOKEN``), then checked as a bearer header on every route but /ping and the
static page, unless ``--no-auth`` says on purpose that the network is trusted. SIGTERM (or
Ctrl-C) stops accepting connections, lets the requests in flight finish (at most the request time
limit and 5 s more) and returns: the command exits 0.

One process: requests from every connection meet in one batcher (:mod:`.batcher`), which one
process per core could not do; NumPy's BLAS spreads each forward pass over the cores, and a small
thread pool parses bodies and decodes images beside it.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

from fmnist_mlp.errors import ConfigError, FmnistMlpError, require_extra
from fmnist_mlp.serve.app import ServeApp
from fmnist_mlp.serve.exchange import Limits
from fmnist_mlp.serve.model import ServedModel

TOKEN_ENV = "FMNIST_MLP_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    no_auth: bool = False
    threads: int = 2                    # body parsing and image decoding, beside the forward pass
    head_timeout: float = 10.0          # seconds for a connection's request line and headers
    max_connections: int = 1000         # open connections; past it the oldest idle one is closed
    access_log: bool = True
    limits: Limits = field(default_factory=Limits)


class BindError(FmnistMlpError):
    """The address cannot be bound (in use, not this machine's, no permission)."""


def check_settings(settings: Settings) -> None:
    """The token rule and the numbers, before the model is loaded (usage errors: exit 2)."""
    if settings.token is not None and len(settings.token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the token has {len(settings.token)} characters; use at least "
                          f"{MIN_TOKEN_CHARS} (e.g. python3 -c 'import secrets; "
                          f"print(secrets.token_urlsafe())')")
    if settings.token is not None and settings.no_auth:
        raise ConfigError("--no-auth and a token (--token or $" + TOKEN_ENV + ") contradict "
                          "each other: give one")
    if not is_loopback(settings.host) and settings.token is None and not settings.no_auth:
        raise ConfigError(f"--host {settings.host} is reachable from other machines: give a "
                          f"token (--token or ${TOKEN_ENV}; clients then send 'Authorization: "
                          f"Bearer TOKEN'), or --no-auth if the network is trusted")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model: ServedModel, settings: Settings, sock: socket.socket,
          on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Answer on ``sock`` until SIGTERM or Ctrl-C; in-flight requests finish first."""
    uvicorn = require_extra("uvicorn", "serve", "fmnist-mlp serve")
    from fmnist_mlp.serve.protocol import guarded_protocol

    page = resources.files("fmnist_mlp.serve").joinpath("page.html").read_bytes()
    score_pool = ThreadPoolExecutor(1, thread_name_prefix="fmnist-forward")
    work_pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="fmnist-parse")
    app = ServeApp(model, settings.limits, settings.token, score_pool, work_pool, page,
                   access_log=settings.access_log)
    config = uvicorn.Config(
        app, http=guarded_protocol(settings.head_timeout, settings.max_connections),
        ws="none", lifespan="on", access_log=False, log_config=None, log_level="warning",
        server_header=False, timeout_keep_alive=5,
        timeout_graceful_shutdown=int(settings.limits.timeout) + 5,
        h11_max_incomplete_event_size=16 * 1024)
    server = uvicorn.Server(config)
    app.draining = lambda: server.should_exit          # /health: 503 once SIGTERM came
    on_ready(url_of(sock))
    # uvicorn re-raises the signal that stopped it once it has drained; ignored here, so a
    # SIGTERM ends the command as a stop (exit 0), not as an interruption.
    previous = {s: signal.signal(s, _stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        score_pool.shutdown(wait=True, cancel_futures=True)
        work_pool.shutdown(wait=True, cancel_futures=True)
        sock.close()


def _stopped(signum, frame) -> None:
    """Stand-in handler while uvicorn runs (it installs its own, and restores this one)."""


def token_from(option: str | None) -> str | None:
    """``--token`` if given, else ``$FMNIST_MLP_SERVE_TOKEN`` if set and not empty."""
    if option is not None:
        return option
    return os.environ.get(TOKEN_ENV) or None
