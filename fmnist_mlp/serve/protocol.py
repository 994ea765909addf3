"""What a connection may do before its request is whole, bounded: uvicorn's h11 protocol with a
deadline for the request's head and a cap on open connections.

uvicorn times out idle keep-alive connections, but a connection that sends nothing, or its
headers one byte a second, is kept for ever: 1,000 of them hold 1,000 file descriptors and
nothing frees them. Here every connection must finish its request line and headers within
``head_timeout`` seconds of opening (or of its previous response); one that does not gets a 408
and is closed. Past ``max_connections`` the oldest connection that is not inside a request is
closed to make room, so idle connections can never lock out a client that has something to ask.
(Once the head is in, the application's own time limit covers the body and the answer.)

A request HTTP cannot parse gets the JSON error every other error gets, not uvicorn's plain text.

This is the only module that names uvicorn's protocol class (``uvicorn.protocols.http.h11_impl``),
its ``cycle``, ``send_400_response`` and its server state's ``connections``. The serve tests
passed with uvicorn 0.30.0 (the oldest the ``serve`` extra allows) and 0.55 (7 December 2026).
"""

from __future__ import annotations

import itertools
import json

from uvicorn.protocols.http.h11_impl import H11Protocol


_OPENED = itertools.count()


def guarded_protocol(head_timeout: float, max_connections: int) -> type:
    """An ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)``."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._opened, self._head_timer = next(_OPENED), None
            self._arm_head_timer()
            if len(self.connections) > max_connections:
                _evict_one(self.connections, keep=self)

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_head_timer()             # the head is in: the app's limit takes over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def send_400_response(self, msg: str) -> None:
            """A request HTTP itself cannot parse (a bad request line, headers over 16 kB): the
            same JSON error as every other, not uvicorn's plain text."""
            _refuse(self.transport, b"400 Bad Request", "MALFORMED_REQUEST", msg)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or _in_request(self):
                return
            _refuse(self.transport, b"408 Request Timeout", "REQUEST_TIMEOUT",
                    f"no complete request head within {head_timeout:g} s")

    return GuardedH11Protocol


def _in_request(protocol) -> bool:
    """Whether a request's head has arrived and its response is not yet complete."""
    cycle = getattr(protocol, "cycle", None)
    return cycle is not None and not cycle.response_complete


def _evict_one(connections, keep) -> None:
    """Close the connection that is not inside a request and was opened first (set order is not
    age order, so each connection carries its opening sequence number)."""
    idle = [c for c in connections if c is not keep and not _in_request(c)]
    if idle:
        oldest = min(idle, key=lambda c: getattr(c, "_opened", 0))
        oldest.transport.close()
    else:                             # every slot is busy with a request: this one must wait
        _refuse(keep.transport, b"503 Service Unavailable", "SERVER_BUSY",
                "every connection is busy; retry in 1 s", b"retry-after: 1\r\n")


def _refuse(transport, status: bytes, code: str, message: str, extra: bytes = b"") -> None:
    """A whole JSON error response written before any request was parsed, then the close."""
    body = json.dumps({"error_code": code, "message": message}).encode()
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\n" + extra + b"content-length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
    transport.close()
