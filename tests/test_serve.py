"""``fmnist-mlp serve`` over real HTTP: the server is a subprocess on a free port of 127.0.0.1,
trained on a small slice of the real data; answers are held to ``predict``'s and to the Python
scoring path, in every input format of MLflow's scoring protocol."""

from __future__ import annotations

import asyncio
import hashlib
import json
import select
import time

import numpy as np
import pytest

from serve_helpers import serve_work  # noqa: F401 - the shared run, a fixture
from serve_helpers import (ENV, NUM_PNG, TOKEN, Served, fmnist, read_response,
                           wait_in_flight)

pytestmark = [pytest.mark.realdata]
CLOSE = dict(rtol=1e-5, atol=1e-6)     # float32 rounding: other batch sizes, other sum orders


@pytest.fixture(scope="module")
def work(serve_work):
    return serve_work


@pytest.fixture(scope="module")
def server(work):
    served = Served(work["run"], "--max-rows", 100, "--max-body-mb", 2, cwd=work["root"])
    yield served
    assert served.stop() == 0, served.stderr


def post_json(server, doc, path="/invocations", **kwargs):
    import requests

    return requests.post(server.url + path, data=json.dumps(doc),
                         headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
                         timeout=30, **kwargs)


def probabilities(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"]
    for row in rows:
        assert row["class_name"] == names[row["label"]]
        assert row["label"] == int(np.argmax(row["probabilities"]))
    return np.array([r["probabilities"] for r in rows])


def test_every_mlflow_input_format_answers_what_predict_answers(work, server):
    pixels, expected = work["pixels"], work["predict"]
    kaggle = ["label"] + [f"pixel{i}" for i in range(1, 785)]         # Kaggle's CSV columns
    with_labels = np.column_stack([work["labels"], pixels]).tolist()
    shuffled = np.random.default_rng(0).permutation(784)                  # named: any order
    requests_made = {
        "inputs N×784": {"inputs": pixels.tolist()},
        "instances N×28×28": {"instances": pixels.reshape(-1, 28, 28).tolist()},
        "inputs as a named tensor": {"inputs": {"pixels": pixels.tolist()}},
        "dataframe_split, Kaggle's columns": {"dataframe_split": {"columns": kaggle,
                                                                  "data": with_labels}},
        "dataframe_split, shuffled named columns": {"dataframe_split": {
            "columns": [f"pixel{i}" for i in shuffled], "data": pixels[:, shuffled].tolist()}},
        "dataframe_records": {"dataframe_records": [
            {f"pixel{i}": int(v) for i, v in enumerate(row)} for row in pixels]},
        "scaled to 0..1": {"inputs": (pixels / 255.0).tolist()},
        "scaled, said so": {"inputs": (pixels / 255.0).tolist(), "params": {"scale": "1"}},
    }
    for name, doc in requests_made.items():
        got = probabilities(post_json(server, doc))
        assert got.shape == (NUM_PNG, 10), name
        np.testing.assert_allclose(got, expected, **CLOSE, err_msg=name)
        assert got.argmax(axis=1).tolist() == work["predict_labels"], name
    # CSV (MLflow's text/csv): with Kaggle's header, and without a header.
    import requests

    for text in ("label," + ",".join(kaggle[1:]) + "\n"
                 + "\n".join(",".join(map(str, r)) for r in with_labels) + "\n",
                 "\n".join(",".join(map(str, r)) for r in pixels.tolist())):
        response = requests.post(server.url + "/invocations", data=text.encode(),
                                 headers={"Content-Type": "text/csv"}, timeout=30)
        np.testing.assert_allclose(probabilities(response), expected, **CLOSE)
    # A .npy file (application/x-npy): uint8 images, and float32 scaled rows.
    import io

    for array in (pixels.reshape(-1, 28, 28).astype(np.uint8), (pixels / 255.0).astype(np.float32)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        response = requests.post(server.url + "/invocations", data=buffer.getvalue(),
                                 headers={"Content-Type": "application/x-npy"}, timeout=30)
        np.testing.assert_allclose(probabilities(response), expected, **CLOSE)
    # ...answered as a .npy file of the probabilities when asked to (Accept)
    response = requests.post(server.url + "/invocations", data=buffer.getvalue(), timeout=30,
                             headers={"Content-Type": "application/x-npy",
                                      "Accept": "application/x-npy"})
    assert response.headers["content-type"] == "application/x-npy"
    answered = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert answered.dtype == np.float32 and answered.shape == (NUM_PNG, 10)
    np.testing.assert_allclose(answered, expected, **CLOSE)
    # One image alone, as 784 numbers.
    one = probabilities(post_json(server, {"inputs": pixels[3].tolist()}))
    np.testing.assert_allclose(one[0], expected[3], **CLOSE)


def test_answers_equal_the_python_scoring_path_in_process(work, server):
    from fmnist_mlp.scoring.ensemble import ensemble_outputs, load_members

    members = load_members([work["run"]])
    in_process = ensemble_outputs(members, work["pixels"].reshape(NUM_PNG, -1))
    served = probabilities(post_json(server, {"inputs": work["pixels"].tolist()}))
    np.testing.assert_allclose(served, in_process, **CLOSE)
    # and the front door's model, the one a notebook gets from fmnist_mlp.load
    import fmnist_mlp

    notebook = fmnist_mlp.load(work["run"]).predict_proba(work["pixels"].reshape(NUM_PNG, -1))
    np.testing.assert_allclose(served, notebook, **CLOSE)


def test_predict_route_decodes_files_as_predict_does(work, server):
    import requests

    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in work["pngs"]]
    files.append(("file", ("notes.png", b"not an image", "image/png")))
    response = requests.post(server.url + "/predict?top=2", files=files, timeout=60)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert [r["file"] for r in doc["predictions"]] == [p.name for p in work["pngs"]]
    got = np.array([r["probabilities"] for r in doc["predictions"]])
    np.testing.assert_allclose(got, work["predict"], **CLOSE)
    assert [r["label"] for r in doc["predictions"]] == work["predict_labels"]
    assert all(len(r["top"]) == 2 for r in doc["predictions"])
    # the 28×28 image the model saw: the test image itself (a dark 28×28 PNG is used as is)
    seen = np.array(doc["predictions"][5]["image"])
    assert np.array_equal(seen, work["pixels"][5].reshape(28, 28))
    # predict's own refusal, word for word
    notes = work["root"] / "notes.png"
    notes.write_bytes(b"not an image")
    proc = fmnist("predict", work["run"], notes, cwd=work["root"])
    assert proc.returncode == 1
    reason = proc.stderr.strip().split(": ", 2)[-1]
    assert doc["errors"] == [{"file": "notes.png", "error": reason}]
    # nothing readable: 422 with the reasons
    response = requests.post(server.url + "/predict", timeout=30,
                             files=[("file", ("notes.png", b"not an image", "image/png"))])
    assert response.status_code == 422
    assert response.json()["errors"][0]["error"] == reason


def test_ping_health_version_and_metrics(work, server):
    import requests

    assert requests.get(server.url + "/ping", timeout=10).json() == {"status": "ok"}
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ready"
    version = requests.get(server.url + "/version", timeout=10).json()
    member = version["models"][0]
    summary = json.loads((work["run"] / "summary.json").read_text())
    from fmnist_mlp.scoring.ensemble import load_members

    config = load_members([work["run"]])[0].config
    assert member["run"] == str(work["run"])
    assert member["test_acc"] == summary["test_acc"] and member["run_name"] == "served"
    assert member["config_sha256"] == hashlib.sha256(
        json.dumps(config, sort_keys=True).encode()).hexdigest()
    assert member["test_flip"] is True and version["output"] == "softmax"
    assert version["limits"]["max_rows"] == 100
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'fmnist_mlp_requests_total{path="/ping",status="200"}' in metrics
    assert "fmnist_mlp_forward_passes_total" in metrics


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("body, content_type, status, words", [
    (b'{"inputs": [[1, 2', "application/json", 400, "malformed JSON"),
    (b'[1, 2, 3]', "application/json", 400, "expected a JSON object"),
    (b'{"inputs": [[1, 2]]}', "application/json", 400, "shape [1, 2]"),
    (b'{"inputs": [[1, 2], [3]]}', "application/json", 400, "different lengths"),
    (json.dumps({"inputs": [["a"] * 784]}).encode(), "application/json", 400, "numbers only"),
    (json.dumps({"inputs": [[-1] * 784]}).encode(), "application/json", 400,
     "expected 0..255 (raw) or 0..1"),
    (json.dumps({"inputs": [[300] * 784]}).encode(), "application/json", 400,
     "expected 0..255 (raw) or 0..1"),
    (b'{"inputs": [' + b",".join([b"NaN"] * 784) + b"]}", "application/json", 400, "finite"),
    (b'{"inputs": [], "instances": []}', "application/json", 400, "exactly one of"),
    (b'{"inputs": []}', "application/json", 400, "no images"),
    (b'{"dataframe_split": {"data": []}}', "application/json", 400, "no images"),
    (json.dumps({"inputs": [[0] * 784], "params": {"scale": True}}).encode(), "application/json",
     400, "params.scale"),
    (json.dumps({"inputs": [[0] * 784] * 101}).encode(), "application/json", 413, "at most 100"),
    (b"1,2,3\n4,5,6", "text/csv", 400, "shape [2, 3]"),
    (b"a,b\nx,y", "text/csv", 400, "CSV"),
    (b'{"inputs": []}', "text/plain", 415, "application/json"),
    (b"\x93NUMPY\x01\x00", "application/x-npy", 400, "not a .npy file"),
    (_npy(np.zeros((0, 784), np.uint8)), "application/x-npy", 400, "no images"),
    (_npy(np.zeros((101, 784), np.uint8)), "application/x-npy", 413, "at most 100"),
    (_npy(np.array([["a"] * 784])), "application/x-npy", 400, "numbers only"),
    (_npy(np.zeros((2, 784), np.uint8))[:-10], "application/x-npy", 400, "damaged .npy"),
    (b"x" * (2 * 1024 * 1024 + 1), "application/json", 413, "body over"),
])
def test_bad_requests_get_a_json_error_with_their_status(server, body, content_type, status, words):
    import requests

    response = requests.post(server.url + "/invocations", data=body,
                             headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    doc = response.json()
    assert words in doc["message"] and doc["error_code"]
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200


def test_unknown_routes_and_methods_are_json_too(server):
    import requests

    response = requests.get(server.url + "/nowhere", timeout=10)
    assert response.status_code == 404 and "no route /nowhere" in response.json()["message"]
    response = requests.delete(server.url + "/invocations", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert requests.post(server.url + "/predict", data=b"x", timeout=10).status_code == 415


def test_non_loopback_address_needs_a_token_or_no_auth(work):
    for args, words in ((["--host", "0.0.0.0"], "give a token"),
                        (["--host", "0.0.0.0", "--token", "short"], "at least 16"),
                        (["--token", TOKEN, "--no-auth"], "contradict")):
        proc = fmnist("serve", work["run"], *args, "--port", "0", cwd=work["root"], timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_a_bad_model_or_a_taken_port_is_one_line_and_exit_1(work):
    import socket

    proc = fmnist("serve", work["root"] / "no-such-run", "--port", "0", cwd=work["root"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = fmnist("serve", work["run"], "--port", port, cwd=work["root"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and proc.stderr.count("\n") == 1


def test_what_http_cannot_parse_is_a_json_400_too(server):
    sock = server.raw()
    sock.sendall(b"NOT-HTTP\x00\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 400 and json.loads(body)["error_code"] == "MALFORMED_REQUEST"
    sock = server.raw()                # headers that never end, 4 kB at a time, until answered
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(250):                                # 1 MB at most
        if select.select([sock], [], [], 0.01)[0]:
            break
        sock.sendall(b"a" * 4096)
    status, headers, body = read_response(sock)
    assert status == 400 and headers["content-type"] == "application/json"


def test_a_token_is_checked_on_every_route_but_ping_and_the_page(work):
    import requests

    server = Served(work["run"], cwd=work["root"], env={**ENV, "FMNIST_MLP_SERVE_TOKEN": TOKEN})
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(server.url + "/ping", timeout=10).status_code == 200
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        for path in ("/health", "/version", "/metrics"):
            bare = requests.get(server.url + path, timeout=10)
            assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
            wrong = requests.get(server.url + path, timeout=10,
                                 headers={"Authorization": f"Bearer {TOKEN}x"})
            assert wrong.status_code == 401
            assert requests.get(server.url + path, headers=good, timeout=10).status_code == 200
        doc = {"inputs": work["pixels"][:2].tolist()}
        assert post_json(server, doc).status_code == 401
        assert post_json(server, doc, headers=good).status_code == 200
    finally:
        assert server.stop() == 0


def test_sigterm_drains_the_request_in_flight_then_exits_0(work):
    import requests

    server = Served(work["run"], cwd=work["root"])
    body = json.dumps({"inputs": work["pixels"][:4].tolist()}).encode()
    sock = server.raw()
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:50])
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    assert requests.get(server.url + "/%1b]0;owned%07x", timeout=10).status_code == 404
    wait_in_flight(server, 1)
    server.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.5)                                   # the server is draining now...
    sock.sendall(body[50:])                           # ...and the request in flight completes
    status, _, answer = read_response(sock)
    code = server.stop()
    assert status == 200 and len(json.loads(answer)["predictions"]) == 4, server.stderr
    assert code == 0, server.stderr
    log = server.stderr.splitlines()
    assert sum('"POST /invocations" 200' in line and "4 images" in line for line in log) == 1
    assert sum('"GET /ping" 200' in line for line in log) == 1
    # a path's escape sequences are shown, not sent to the terminal reading the log
    assert '"GET /\\x1b]0;owned\\x07x" 404' in server.stderr and "\x1b" not in server.stderr
    assert log[-1].startswith("stopped"), server.stderr


def test_past_the_concurrency_limit_a_503_with_retry_after(work):
    import requests

    server = Served(work["run"], "--max-concurrency", "1", cwd=work["root"])
    try:
        sock = server.raw()                           # holds the one slot: its body is not all in
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{")
        wait_in_flight(server, 1)
        response = post_json(server, {"inputs": [[0] * 784]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "max-concurrency" in response.json()["message"]
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        sock.close()
        wait_in_flight(server, 0)
        assert post_json(server, {"inputs": [[0] * 784]}).status_code == 200
    finally:
        assert server.stop() == 0


def test_batcher_joins_the_requests_that_arrive_during_a_pass():
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    from fmnist_mlp.serve.batcher import Batcher

    release, passes = Event(), []

    def score(rows):
        release.wait(10)
        passes.append(len(rows))
        return rows * 2.0

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(score, pool, max_rows=8)
            first = asyncio.ensure_future(batcher.submit(np.full((1, 3), 1.0)))
            await asyncio.sleep(0.05)                  # the first pass is running (waiting)
            later = [asyncio.ensure_future(batcher.submit(np.full((n, 3), float(n))))
                     for n in (1, 2, 3, 4)]
            await asyncio.sleep(0.05)
            release.set()
            return await first, await asyncio.gather(*later)

    first, later = asyncio.run(scenario())
    # 1 alone; then 1+2+3 rows together (8 rows at most per pass), then 4 alone
    assert passes == [1, 6, 4]
    assert first.tolist() == [[2.0] * 3]
    assert [out.shape[0] for out in later] == [1, 2, 3, 4]
    assert all((out == 2.0 * n).all() for out, n in zip(later, (1, 2, 3, 4)))
