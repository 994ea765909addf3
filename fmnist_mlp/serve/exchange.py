"""One request and its answer: the body read within its limits, the response, the JSON errors.

Every error a client gets is ``{"error_code": ..., "message": ...}`` (MLflow's shape) with its
status code, made here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from fmnist_mlp.io.printable import printable
from fmnist_mlp.serve.payload import BadRequest

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_body: int = 32 * MiB           # bytes of one request's body
    max_rows: int = 10_000             # images in one /invocations request
    max_files: int = 64                # files in one /predict request
    max_concurrency: int = 32          # /invocations and /predict requests in flight
    body_budget: int = 256 * MiB       # bytes of request bodies held at once, all requests
    timeout: float = 30.0              # seconds for one request, its body's upload included
    retry_after: int = 1               # seconds a 503 asks the client to wait


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class Disconnected(Exception):
    """The client went away before its request was whole: nobody to answer."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple = ()
    rows: int = 0                      # images scored (for the access log)


def busy(why: str, retry_after: int) -> HttpError:
    """503 with Retry-After: the server is full now, the client may come back."""
    return HttpError(503, "SERVER_BUSY", f"busy: {why}; retry in {retry_after} s",
                     (("retry-after", str(retry_after)),))


class BodyBudget:
    """Bytes of request bodies held at once, by every request together (event loop only)."""

    def __init__(self, limits: Limits):
        self.limits, self.held = limits, 0

    def reserve(self, n: int) -> None:
        if self.held + n > self.limits.body_budget:
            raise busy("request bodies in flight fill the server's memory budget",
                       self.limits.retry_after)
        self.held += n


class Request:
    """One request's scope and its body, read within the limits."""

    def __init__(self, scope, receive, limits: Limits, budget: BodyBudget):
        self.scope, self.receive, self.limits, self.budget = scope, receive, limits, budget
        self.receiving = False
        self.reserved = 0

    def header(self, name: bytes) -> str:
        return header(self.scope, name)

    def content_type(self) -> str:
        return self.header(b"content-type").partition(";")[0].strip().lower()

    def query_int(self, name: str, default: int, lo: int, hi: int) -> int:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise BadRequest(f"{name}={printable(values[-1])}: expected a whole number {lo}..{hi}")
        return value

    async def body(self) -> bytes:
        """The whole body: at most max_body bytes, and within the shared body budget (a declared
        Content-Length over the limit is refused before a byte is read)."""
        declared = self.header(b"content-length")
        if declared:
            if not declared.isdigit():
                raise BadRequest("Content-Length is not a number")
            if int(declared) > self.limits.max_body:
                raise self._too_large()
            self._reserve(int(declared))
        chunks, size = [], 0
        self.receiving = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body:
                raise self._too_large()
            if not declared:
                self._reserve(len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.receiving = False
        return b"".join(chunks)

    def _reserve(self, n: int) -> None:
        self.budget.reserve(n)
        self.reserved += n

    def release(self) -> None:
        """Give the body's bytes back to the budget (once the answer is made)."""
        self.budget.held -= self.reserved
        self.reserved = 0

    def _too_large(self) -> HttpError:
        return HttpError(413, "BODY_TOO_LARGE", f"request body over {self.limits.max_body} "
                         f"bytes (--max-body-mb)", (("connection", "close"),))


def header(scope, name: bytes) -> str:
    """A request header's value ("" when absent); names are lower case in ASGI."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def npy_response(array: np.ndarray, rows: int) -> Response:
    """(N, 10) outputs as a .npy file (``Accept: application/x-npy``): the probabilities alone,
    in class order (the class names: /version)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(200, buffer.getvalue(), "application/x-npy", rows=rows)


def json_response(status: int, doc: Any, headers: tuple = (), rows: int = 0) -> Response:
    return Response(status, json.dumps(doc, allow_nan=False).encode(), headers=headers, rows=rows)


def error_response(status: int, code: str, message: str, headers: tuple = ()) -> Response:
    return json_response(status, {"error_code": code, "message": message}, headers)
