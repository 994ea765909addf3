"""``fmnist-mlp serve`` under load and under hostile requests, all on 127.0.0.1, each bounded in
count and time: a pool of local clients whose every answer must equal predict's; malformed JSON,
10⁶ rows, a decompression bomb, clients sending one byte a second, 1,000 idle connections. Each
gets its status code, and the server keeps answering the others meanwhile."""

from __future__ import annotations

import json
import select
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serve_helpers import serve_work  # noqa: F401 - the shared run, a fixture
from serve_helpers import NUM_PNG, Served, read_response

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
CLOSE = dict(rtol=1e-5, atol=1e-6)


def readable(sock) -> bool:
    """Whether ``sock`` has something to read now: poll(), not select(), whose descriptors must be
    below 1024 (a test holding 1,000 connections inside a long suite goes past that)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@pytest.fixture(scope="module")
def work(serve_work):
    return serve_work


@pytest.fixture(scope="module")
def server(work):
    served = Served(work["run"], "--no-access-log", cwd=work["root"])
    yield served
    assert served.stop() == 0, served.stderr


def answering(server) -> bool:
    import requests

    return requests.get(server.url + "/ping", timeout=5).status_code == 200


def test_load_from_16_local_clients_fails_nothing_and_answers_as_predict(work, server):
    import requests

    pngs = [p.read_bytes() for p in work["pngs"]]

    def one(i: int):
        k = i % NUM_PNG
        with requests.Session() as session:
            if i % 2:
                response = session.post(server.url + "/invocations", timeout=60,
                                        json={"inputs": [work["pixels"][k].tolist()]})
            else:
                response = session.post(server.url + "/predict", timeout=60,
                                        files=[("file", (f"{k}.png", pngs[k], "image/png"))])
        return k, response.status_code, response.json()["predictions"][0]["probabilities"]

    before = counters(server)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(320)))
    assert [status for _, status, _ in answers] == [200] * 320
    for k, _, probabilities in answers:
        np.testing.assert_allclose(probabilities, work["predict"][k], **CLOSE)
    after = counters(server)
    assert after["rows_scored"] - before["rows_scored"] == 320
    assert 0 < after["forward_passes"] - before["forward_passes"] <= 320


def counters(server) -> dict[str, int]:
    """/metrics' counters, by name without the fmnist_mlp_ prefix and _total suffix."""
    import requests

    out = {}
    for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("fmnist_mlp_") and "{" not in line:
            name, value = line.split()
            out[name.removeprefix("fmnist_mlp_").removesuffix("_total")] = int(value)
    return out


def test_a_million_rows_are_refused_before_they_are_read_or_parsed(server):
    sock = server.raw()                        # declared: 3 GB, never sent
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 3136000000\r\n\r\n{\"inputs\": [")
    status, headers, body = read_response(sock)
    assert status == 413 and "body over" in json.loads(body)["message"]
    sock.close()
    import requests                            # sent: a million short rows (4 MB)

    body = b'{"inputs": [' + b",".join([b"[0]"] * 1_000_000) + b"]}"
    response = requests.post(server.url + "/invocations", data=body, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "1000000 rows" in response.json()["message"]
    assert answering(server)


def test_malformed_json_of_every_kind_is_a_400(server):
    import requests

    for body in (b"{", b'{"inputs": [[1,2,]]}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
                 b'{"inputs": "pixels"}', b"null", b""):
        response = requests.post(server.url + "/invocations", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (body[:20], response.text)
        assert response.json()["error_code"] in ("MALFORMED_REQUEST", "BAD_REQUEST")
    assert answering(server)


def bomb_png(side: int) -> bytes:
    """A real PNG of side × side black pixels: a few hundred kB that decode to side² bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compressobj(9)
    line = b"\x00" * (side + 1)
    data = b"".join(rows.compress(line) for _ in range(side)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header(work, server):
    import requests

    bomb = bomb_png(12_000)                   # 144 million pixels, past Pillow's 89 million
    assert len(bomb) < 1_000_000
    good = work["pngs"][0].read_bytes()
    response = requests.post(server.url + "/predict", timeout=30, files=[
        ("file", ("bomb.png", bomb, "image/png")), ("file", ("good.png", good, "image/png"))])
    assert response.status_code == 200
    doc = response.json()
    assert [r["file"] for r in doc["predictions"]] == ["good.png"]
    assert doc["errors"][0]["file"] == "bomb.png"
    assert "a decompression bomb?" in doc["errors"][0]["error"]
    alone = requests.post(server.url + "/predict", timeout=30,
                          files=[("file", ("bomb.png", bomb, "image/png"))])
    assert alone.status_code == 422 and "decompression bomb" in alone.text


def test_clients_sending_one_byte_a_second_are_cut_off_and_others_answered(work):
    server = Served(work["run"], "--timeout", "2", "--head-timeout", "2", cwd=work["root"])
    try:
        head = server.raw()                   # its request line, one byte a second
        body = server.raw()                   # its head at once, then its body a byte a second
        body.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 5000\r\n\r\n")
        slow = {"head": (head, iter(b"POST /invocations HTTP/1.1\r\nHost: t\r\n")),
                "body": (body, iter(b"[" * 100))}
        answers, statuses = 0, {}
        for _ in range(12):                   # 12 s at most; --timeout 2 s, --head-timeout 2 s
            for name, (sock, data) in slow.items():
                if name in statuses:
                    continue
                if readable(sock):                            # answered: stop sending to it
                    status, _, text = read_response(sock, timeout=10)
                    statuses[name] = (status, json.loads(text)["error_code"])
                else:
                    sock.sendall(bytes([next(data)]))
            answers += answering(server)
            if len(statuses) == 2:
                break
            time.sleep(1.0)
        assert statuses == {"head": (408, "REQUEST_TIMEOUT"), "body": (408, "REQUEST_TIMEOUT")}
        assert answers >= 2 and answering(server)
    finally:
        assert server.stop() == 0, server.stderr


def test_a_thousand_idle_connections_lock_nobody_out(work):
    import requests

    server = Served(work["run"], "--max-connections", "200", cwd=work["root"])
    idle = []
    try:
        idle = [socket.create_connection((server.host, server.port), timeout=10)
                for _ in range(1000)]
        assert answering(server)
        response = requests.post(server.url + "/invocations", timeout=30,
                                 json={"inputs": work["pixels"][:3].tolist()})
        assert response.status_code == 200
        got = np.array([r["probabilities"] for r in response.json()["predictions"]])
        np.testing.assert_allclose(got, work["predict"][:3], **CLOSE)
        # past --max-connections the oldest idle ones were closed; the newest is still open
        idle[0].settimeout(10)
        assert idle[0].recv(100) == b""
        assert not readable(idle[-1])
    finally:
        for sock in idle:
            sock.close()
        assert server.stop() == 0, server.stderr


def test_the_serving_benchmark_runs_small_and_finds_the_answers_equal(work, real_data_dir):
    import subprocess
    import sys

    from serve_helpers import ENV, ROOT

    proc = subprocess.run([sys.executable, "-m", "benchmarks.serve", str(work["run"]),
                           "--images", "40", "--clients", "4", "--requests", "24",
                           "--repeats", "1", "--data-dir", str(real_data_dir), "--json"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["failed"] == 0 and result["server_exit_code"] == 0
    for name in ("json", "csv", "npy", "npy->npy"):
        assert result[f"batched_{name}_max_abs_diff"] < 1e-5
        assert result[f"batched_{name}_share_of_best"] > 0
    assert result["single_p50_ms"] <= result["single_p99_ms"] <= result["single_max_ms"]
