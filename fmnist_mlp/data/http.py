"""Download one URL to a local file: streamed, timed out, retried with back-off, resumed by Range.

Only transient failures are retried (connection errors, timeouts, a connection cut mid-body,
HTTP 5xx and 429); an HTTP 404 or 403 will not change on a second try, and neither will a host
name that does not resolve. Proxies and CA bundles come from the environment (requests reads
HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from tqdm import tqdm

from fmnist_mlp import __version__
from fmnist_mlp.errors import DataError
from fmnist_mlp.io.terminal import progress_stream

if TYPE_CHECKING:
    import requests


def _web():
    """requests and urllib3, imported when something is fetched: a run whose data is cached
    never pays their import (about 0.1 s)."""
    import requests
    import urllib3

    return requests, urllib3
_CHUNK = 1 << 16


@dataclass(frozen=True)
class HttpOptions:
    """How patient to be with a mirror. Tests shrink these to keep each case to a few seconds."""

    connect_timeout: float = 10.0   # seconds to establish the connection
    read_timeout: float = 60.0      # seconds of silence tolerated while waiting for bytes
    retries: int = 3                # further attempts after the first, for transient failures
    backoff: float = 1.0            # sleep backoff * 2**attempt seconds before retry number attempt+1
    # A source not yet heard from gets one attempt of stall_timeout seconds of silence before the
    # next source is tried (it is retried with the patience above only after all the others).
    stall_timeout: float = 10.0
    total_timeout: float = 900.0    # seconds for the whole download, every file and source


class StalledError(DataError):
    """A source accepted the connection but sent nothing in time: try the other sources first."""


class PermanentHttpError(DataError):
    """A failure that retrying the same URL cannot fix (HTTP 4xx)."""


class HostUnreachableError(DataError):
    """The host did not resolve, refused, or stayed silent through every retry: skip it for other files."""


def make_session() -> requests.Session:
    """A requests session sending our User-Agent; trust_env (proxies, CA bundles) stays on."""
    requests, _ = _web()
    session = requests.Session()
    session.headers["User-Agent"] = (f"fmnist-mlp/{__version__} (https://github.com/zalandoresearch/"
                                      f"fashion-mnist data fetcher; python-requests/{requests.__version__})")
    return session


def download_url(url: str, dest: Path, session: requests.Session, options: HttpOptions = HttpOptions(),
                 progress: bool = True, desc: str | None = None, first_try: bool = False,
                 deadline: float | None = None) -> None:
    """Fetch ``url`` into ``dest`` (created or overwritten), resuming a cut transfer with Range.

    first_try: the source has not answered yet in this download: wait ``stall_timeout`` for it
    and raise StalledError instead of retrying when it stays silent. deadline: a
    ``time.monotonic()`` after which no attempt starts and a running transfer stops.
    Raises DataError (PermanentHttpError when retrying is pointless) naming the URL and the last
    failure. ``dest`` may hold a partial file afterwards; the caller owns and removes it.
    """
    requests, urllib3 = _web()
    dest.write_bytes(b"")
    attempt = 0
    deadline = time.monotonic() + options.total_timeout if deadline is None else deadline
    while True:
        read_timeout = options.stall_timeout if first_try else options.read_timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DataError(f"{url}: the download's time limit ({options.total_timeout:g} s) ran out")
        timeout = (min(options.connect_timeout, remaining), min(read_timeout, remaining))
        try:
            _fetch_once(url, dest, session, timeout, progress, desc, deadline)
            return
        except PermanentHttpError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, _IncompleteBody) as exc:
            if _is_unresolvable(exc):
                raise HostUnreachableError(f"{url}: host name not found (no network or DNS?)") from None
            silent = _is_timeout(exc) and dest.stat().st_size == 0
            if first_try and silent:
                raise StalledError(f"{url}: no answer within {read_timeout:g} s") from None
            wait = options.backoff * 2**attempt
            if attempt >= options.retries or time.monotonic() + wait >= deadline:
                error = HostUnreachableError if _is_unreachable(exc) else DataError
                raise error(f"{url}: {_describe(exc)} (after {attempt + 1} attempts)") from None
            time.sleep(wait)
            attempt += 1


class _IncompleteBody(Exception):
    """The server closed the connection before sending the Content-Length it announced."""


def _fetch_once(url: str, dest: Path, session: requests.Session, timeout: tuple[float, float],
                progress: bool, desc: str | None, deadline: float) -> None:
    requests, _ = _web()
    offset = dest.stat().st_size
    # identity: byte ranges and Content-Length then count the file's own bytes.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            return  # we already hold every byte; verification will judge them
        if response.status_code >= 400:
            message = f"{url}: HTTP {response.status_code} {response.reason or ''}".rstrip()
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise requests.HTTPError(message)
            raise PermanentHttpError(message)
        if response.status_code != 206:
            offset = 0  # the server ignored Range and sends the whole file again
        elif not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            dest.write_bytes(b"")  # a range we did not ask for: start again from byte 0
            raise _IncompleteBody(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open(dest, "r+b" if offset else "wb") as out, tqdm(
            total=None if expected is None else offset + expected, initial=offset, unit="B",
            unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress, file=progress_stream(),
            leave=False,
        ) as bar:
            out.seek(offset)
            out.truncate()
            # decode_content=False: keep the bytes exactly as served (a .gz stays a .gz).
            for chunk in response.raw.stream(_CHUNK, decode_content=False):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:      # a trickle must not outlast the limit
                    raise PermanentHttpError(f"{url}: the download's time limit ran out "
                                             f"after {offset + received} bytes")
        if expected is not None and received < expected:
            raise _IncompleteBody(f"connection closed after {received} of {expected} bytes")


def _is_unresolvable(exc: BaseException) -> bool:
    """True when the chain of causes shows a DNS failure: no point retrying that host."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current).__name__ in ("NameResolutionError", "gaierror"):
            return True
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return False


def _is_timeout(exc: BaseException) -> bool:
    requests, urllib3 = _web()
    return isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))


def _is_unreachable(exc: BaseException) -> bool:
    """No connection, or no answer in time (as opposed to a transfer that broke half-way)."""
    requests, urllib3 = _web()
    broken = (urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError, _IncompleteBody)
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    return not isinstance(exc, broken) and isinstance(exc, (requests.ConnectionError, *timeouts))


def _describe(exc: BaseException) -> str:
    requests, urllib3 = _web()
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken mid-transfer"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed ({type(exc).__name__})"
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("http") and ": " in text else (text or type(exc).__name__)
