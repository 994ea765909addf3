"""The ASGI application: routes, the token, the limits and one access-log line per request.
A plain ASGI callable (no web framework): seven routes and a page need no more.

| route | answers |
|---|---|
| ``GET /ping`` | 200 while the process serves (no token needed) |
| ``GET /health`` | 200 when the model is loaded and the server is not draining, else 503 |
| ``GET /version`` | the tool and the model's identity (run, config digest, test accuracy) |
| ``GET /metrics`` | Prometheus text: requests by route and status, forward passes, rows |
| ``POST /invocations`` | MLflow's scoring protocol (JSON, CSV; or .npy) -> ``{"predictions"}`` |
| ``POST /predict`` | image files (multipart) -> top classes and the 28×28 image the model saw |
| ``GET /`` | the page: drop a photo or draw, see the top classes (static: no token needed) |

Every error is ``{"error_code": ..., "message": ...}`` (MLflow's shape) with its status code
(:mod:`fmnist_mlp.serve.exchange`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from concurrent.futures import Executor
from typing import Callable

import numpy as np

from fmnist_mlp.data.facts import CLASS_NAMES
from fmnist_mlp.io.printable import printable
from fmnist_mlp.io.terminal import show
from fmnist_mlp.serve.batcher import Batcher
from fmnist_mlp.serve.exchange import (BodyBudget, Disconnected, HttpError, Limits, Request,
                                       Response, busy, error_response, header, json_response,
                                       npy_response)
from fmnist_mlp.serve.model import ServedModel
from fmnist_mlp.serve.payload import BadRequest, rows_from_csv, rows_from_json, rows_from_npy
from fmnist_mlp.serve.upload import decode_images, split_multipart

INLINE_BYTES = 64 * 1024   # bodies parsed on the event loop: a thread's hand-over costs more
INLINE_MACS = 2_000_000    # passes of at most this many multiply-adds run on the event loop,
                           # likewise (about a millisecond): 8 images of fast.yaml's network
PARSERS = {"application/json": rows_from_json, "text/csv": rows_from_csv,
           "application/x-npy": rows_from_npy}      # /invocations' bodies, by Content-Type


class ServeApp:
    """``app(scope, receive, send)``; ``draining()`` tells /health that shutdown has begun."""

    def __init__(self, model: ServedModel, limits: Limits, token: str | None,
                 score_pool: Executor, work_pool: Executor, page: bytes,
                 draining: Callable[[], bool] = lambda: False, access_log: bool = True):
        self.model, self.limits, self.token = model, limits, token
        self.work_pool, self.page, self.draining = work_pool, page, draining
        self.access_log = access_log
        self.batcher = Batcher(model.probabilities, score_pool,
                               inline_rows=INLINE_MACS // max(1, model.macs_per_image))
        self.in_flight = 0
        self.bodies = BodyBudget(limits)
        self.counts: Counter = Counter()
        self.routes = {("GET", "/ping"): self.ping, ("GET", "/livez"): self.ping,
                       ("GET", "/health"): self.health, ("GET", "/readyz"): self.health,
                       ("GET", "/version"): self.version, ("GET", "/metrics"): self.metrics,
                       ("GET", "/"): self.index, ("POST", "/invocations"): self.invocations,
                       ("POST", "/predict"): self.predict}
        self.open_routes = {"/ping", "/livez", "/"}       # no token: the page is static code
        self.heavy_routes = {"/invocations", "/predict"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        response = await self._respond(scope, receive)
        if response is not None:
            await self._send(send, response, head=scope["method"] == "HEAD")
        status = response.status if response is not None else 499
        self.counts[(scope["path"] if self._known(scope["path"]) else "other", status)] += 1
        if self.access_log:
            self._log(scope, status, response, time.perf_counter() - started)

    # ------------------------------------------------------------------ request handling
    async def _respond(self, scope, receive) -> Response | None:
        path, method = scope["path"], scope["method"]
        heavy = False
        try:
            handler = self._route(method, path)
            if path not in self.open_routes:
                self._check_token(scope)
            if path in self.heavy_routes:
                if self.in_flight >= self.limits.max_concurrency:
                    raise busy(f"{self.in_flight} requests in flight (--max-concurrency)",
                               self.limits.retry_after)
                self.in_flight += 1
                heavy = True
            request = Request(scope, receive, self.limits, self.bodies)
            try:
                return await asyncio.wait_for(handler(request), self.limits.timeout)
            except asyncio.TimeoutError:
                if request.receiving:
                    raise HttpError(408, "REQUEST_TIMEOUT", f"the request's body did not arrive "
                                    f"within {self.limits.timeout:g} s (--timeout)") from None
                raise HttpError(504, "TIMEOUT", f"no answer within {self.limits.timeout:g} s "
                                f"(--timeout)") from None
            finally:
                request.release()
        except Disconnected:
            return None
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except BadRequest as exc:
            return error_response(exc.status, exc.code, str(exc))
        except MemoryError:
            return error_response(503, "OUT_OF_MEMORY", "not enough memory for this request now",
                          (("retry-after", str(self.limits.retry_after)),))
        except Exception as exc:  # noqa: BLE001 - a client gets JSON, never a traceback
            show(f"error: {path}: {type(exc).__name__}: {exc}")
            return error_response(500, "INTERNAL_ERROR", f"internal error ({type(exc).__name__})")
        finally:
            if heavy:
                self.in_flight -= 1

    def _route(self, method: str, path: str):
        handler = self.routes.get(("GET" if method == "HEAD" else method, path))
        if handler is not None:
            return handler
        allowed = sorted({m for m, p in self.routes if p == path})
        if allowed:
            raise HttpError(405, "METHOD_NOT_ALLOWED", f"{method} {path}: use "
                            f"{' or '.join(allowed)}", (("allow", ", ".join(allowed)),))
        raise HttpError(404, "NOT_FOUND", f"no route {printable(path)}; routes: "
                        + ", ".join(sorted({p for _, p in self.routes})))

    def _known(self, path: str) -> bool:
        return any(p == path for _, p in self.routes)

    def _check_token(self, scope) -> None:
        if self.token is None:
            return
        given = header(scope, b"authorization")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 self.token.encode()):
            raise HttpError(401, "UNAUTHORIZED", "a valid 'Authorization: Bearer TOKEN' header is "
                            "needed", (("www-authenticate", "Bearer"),))

    # ------------------------------------------------------------------ routes
    async def ping(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def health(self, request: Request) -> Response:
        if self.draining():
            return json_response(503, {"status": "draining"}, (("retry-after", "1"),))
        return json_response(200, {"status": "ready", "models": len(self.model.members)})

    async def version(self, request: Request) -> Response:
        limits = {k: getattr(self.limits, k) for k in Limits.__dataclass_fields__}
        return json_response(200, {**self.model.identity, "limits": limits})

    async def metrics(self, request: Request) -> Response:
        lines = ["# TYPE fmnist_mlp_requests_total counter"]
        for (path, status), n in sorted(self.counts.items()):
            lines.append(f'fmnist_mlp_requests_total{{path="{path}",status="{status}"}} {n}')
        lines += ["# TYPE fmnist_mlp_forward_passes_total counter",
                  f"fmnist_mlp_forward_passes_total {self.batcher.passes}",
                  "# TYPE fmnist_mlp_rows_scored_total counter",
                  f"fmnist_mlp_rows_scored_total {self.batcher.rows}",
                  "# TYPE fmnist_mlp_requests_in_flight gauge",
                  f"fmnist_mlp_requests_in_flight {self.in_flight}"]
        return Response(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def index(self, request: Request) -> Response:
        return Response(200, self.page, "text/html; charset=utf-8",
                        (("cache-control", "no-store"),))

    async def invocations(self, request: Request) -> Response:
        kind = request.content_type()
        parse = PARSERS.get(kind)
        if parse is None:
            raise HttpError(415, "UNSUPPORTED_MEDIA_TYPE",
                            f"Content-Type {printable(kind) or 'missing'}: send application/json "
                            f"(MLflow's inputs, instances, dataframe_split or dataframe_records), "
                            f"text/csv or application/x-npy")
        body = await request.body()
        rows = (parse(body, self.limits.max_rows) if parse is rows_from_npy    # a copy: no text
                else await self._in_pool(parse, body, self.limits.max_rows))
        outputs = await self.batcher.submit(rows.pixels)
        if "application/x-npy" in request.header(b"accept"):
            return npy_response(outputs, rows=len(outputs))
        labels = outputs.argmax(axis=1).tolist()
        predictions = [{"label": c, "class_name": CLASS_NAMES[c], "probabilities": p}
                       for c, p in zip(labels, outputs.tolist())]
        return json_response(200, {"predictions": predictions}, rows=len(labels))

    async def predict(self, request: Request) -> Response:
        kind = request.content_type()
        if kind != "multipart/form-data":
            raise HttpError(415, "UNSUPPORTED_MEDIA_TYPE",
                            f"Content-Type {printable(kind) or 'missing'}: send image files as "
                            f"multipart/form-data (curl -F file=@photo.jpg)")
        top = request.query_int("top", 3, 1, len(CLASS_NAMES))
        body = await request.body()
        uploads = await self._in_pool(split_multipart, body,
                                      request.header(b"content-type"),
                                      self.limits.max_files)
        del body
        used, images, failures = await asyncio.get_running_loop().run_in_executor(
            self.work_pool, decode_images, uploads)        # Pillow: always in the pool
        errors = [{"file": uploads[i].name, "error": message} for i, message in failures]
        if not used:
            return json_response(422, {"error_code": "UNREADABLE_IMAGES", "message":
                               "no file could be read as an image", "errors": errors})
        outputs = await self.batcher.submit(images.reshape(len(used), -1))
        order = np.argsort(-outputs, axis=1, kind="stable")[:, :top].tolist()
        predictions = [{"file": uploads[i].name, "label": best[0],
                        "class_name": CLASS_NAMES[best[0]],
                        "top": [{"label": c, "class_name": CLASS_NAMES[c],
                                 "probability": float(out[c])} for c in best],
                        "probabilities": out.tolist(), "image": image.tolist()}
                       for i, out, best, image in zip(used, outputs, order, images)]
        return json_response(200, {"predictions": predictions, "errors": errors}, rows=len(used))

    async def _in_pool(self, function, body: bytes, *args):
        """``function(body, *args)`` in the work pool, or here when the body is small."""
        if len(body) <= INLINE_BYTES:
            return function(body, *args)
        return await asyncio.get_running_loop().run_in_executor(self.work_pool, function, body,
                                                                *args)

    # ------------------------------------------------------------------ plumbing
    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(self, send, response: Response, head: bool) -> None:
        headers = [(b"content-type", response.content_type.encode()),
                   (b"content-length", str(len(response.body)).encode()),
                   (b"x-content-type-options", b"nosniff")]
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else response.body})

    def _log(self, scope, status: int, response: Response | None, seconds: float) -> None:
        client = scope.get("client") or ("-", 0)
        query = scope.get("query_string", b"").decode("latin-1")
        target = printable(scope["path"] + (f"?{query}" if query else ""))
        size = len(response.body) if response is not None else 0
        n = response.rows if response is not None else 0
        rows = f" {n} image{'s' if n != 1 else ''}" if n else ""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        show(f'{stamp} {client[0]}:{client[1]} "{scope["method"]} {target}" {status} '
             f"{size}B {seconds * 1000:.1f}ms{rows}")
