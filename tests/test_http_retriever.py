"""The Search-R1 HTTP protocol, both sides: our server (started for real on 127.0.0.1) and our client."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import requests
from local_http import LocalServer, Response

from igpo_envs.search.base import Retriever, RetrieverError
from igpo_envs.search.bm25 import BM25Retriever
from igpo_envs.search.corpus import CorpusRows
from igpo_envs.search.http import HTTPRetriever, parse_retrieve_response
from igpo_envs.search.server import Limits, build_parser, main, serve
from igpo_envs.types import Passage

SAMPLE = Path(str(resources.files("igpo_envs") / "data" / "wiki18_sample.jsonl"))
QUERIES = ["Evan Morris lobbyist", "Twycross Zoo chimpanzees", "the of and", "television series"]


@pytest.fixture(scope="module")
def bm25(tmp_path_factory) -> BM25Retriever:
    return BM25Retriever(SAMPLE, cache_dir=tmp_path_factory.mktemp("bm25cache"))


@pytest.fixture(scope="module")
def rows() -> CorpusRows:
    return CorpusRows(SAMPLE)


@pytest.fixture(scope="module")
def server(bm25, rows):
    srv = serve(bm25, "127.0.0.1", 0, rows=rows)
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def json_response(payload, status=200) -> Response:
    return Response(status, json.dumps(payload), {"Content-Type": "application/json"})


# -- our client against our server ------------------------------------------------------------------------------------


def test_client_matches_the_local_retriever(server, bm25):
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
    client = HTTPRetriever(server.url)
    assert isinstance(client, Retriever)
    remote, local = client.search(QUERIES, 3), bm25.search(QUERIES, 3)
    assert remote == local  # ids, titles, texts and scores (JSON round-trips Python floats exactly)
    assert pickle.loads(pickle.dumps(client)).search(QUERIES, 3) == remote  # e.g. for spawned vector-env workers
    assert remote[0][0].title == "Evan Morris" and remote[2] == []
    assert client.search([], 3) == []


def test_content_hash_comes_from_health(server, bm25):
    health = requests.get(server.url.replace("/retrieve", "/health"), timeout=5).json()
    assert health == {"status": "ok", "content_hash": bm25.content_hash, "num_passages": 1000,
                      "retriever": "BM25Retriever", "limits": {"max_topk": 1000, "max_queries": 10_000,
                                                               "max_results": 20_000, "max_body_bytes": 16 << 20}}
    assert HTTPRetriever(server.url).content_hash == bm25.content_hash


def test_server_speaks_search_r1_shapes(server):
    with_scores = requests.post(server.url, json={"queries": QUERIES[:2], "topk": 2, "return_scores": True},
                                timeout=5).json()
    assert list(with_scores) == ["result"] and len(with_scores["result"]) == 2
    hit = with_scores["result"][0][0]
    assert set(hit) == {"document", "score"} and set(hit["document"]) == {"id", "contents"}
    assert hit["document"]["contents"].startswith('"Evan Morris"\n') and hit["score"] > 0
    # Search-R1's default: no return_scores → bare documents; no topk → the server's default (3)
    bare = requests.post(server.url, json={"queries": ["television series"]}, timeout=5).json()
    assert len(bare["result"][0]) == 3 and set(bare["result"][0][0]) == {"id", "contents"}
    assert parse_retrieve_response(bare, 1)[0][0].score == 0.0


def test_documents_are_the_corpus_rows_as_stored(server):
    """Rows whose title line has no quotes (121 of the sample's 1,000) came back with quotes added; now verbatim."""
    stored = {row["id"]: row for row in map(json.loads, SAMPLE.read_text().splitlines())}
    unquoted = stored["29"]["contents"]
    assert unquoted.startswith("Absalon\n")  # the sample's own row, no quotes around the title
    for return_scores in (True, False):
        result = requests.post(server.url, json={"queries": ["Absalon Valdemar Garz", *QUERIES], "topk": 10,
                                                 "return_scores": return_scores}, timeout=5).json()["result"]
        docs = [hit["document"] if return_scores else hit for hits in result for hit in hits]
        assert docs and all(doc == stored[doc["id"]] for doc in docs)
        assert any(doc["id"] == "29" for doc in docs)


@pytest.mark.parametrize(
    ("body", "expected_topk", "expected_scores"),
    [  # Search-R1's request model (pydantic, lax): what it accepts, we accept alike
        ({"queries": ["Evan Morris"]}, 3, False),
        ({"queries": ["Evan Morris"], "topk": None, "return_scores": True}, 3, True),
        ({"queries": ["Evan Morris"], "topk": 0}, 3, False),  # `if not request.topk`: the default
        ({"queries": ["Evan Morris"], "topk": "2"}, 2, False),
        ({"queries": ["Evan Morris"], "topk": 2.0}, 2, False),
        ({"queries": ["Evan Morris"], "topk": True}, 1, False),
        ({"queries": ["Evan Morris"], "return_scores": "yes"}, 3, True),
        ({"queries": ["Evan Morris"], "return_scores": 1, "extra": {"ignored": True}}, 3, True),
    ],
)
def test_lenient_like_search_r1(server, body, expected_topk, expected_scores):
    response = requests.post(server.url, json=body, timeout=5)
    assert response.status_code == 200, response.text
    hits = response.json()["result"][0]
    assert len(hits) == expected_topk and ("score" in hits[0]) == expected_scores


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "valid dictionary"),
        (b'{"topk": 3}', "queries"),
        (b'{"queries": ["a", 3]}', "valid string"),
        (b'{"queries": "a"}', "valid list"),
        (b'{"queries": ["a"], "topk": 2.5}', "fractional part"),
        (b'{"queries": ["a"], "topk": -1}', "outside [1, 1000]"),
        (b'{"queries": ["a"], "topk": 1001}', "max_topk=1000"),
        (b'{"queries": ["a"], "return_scores": "maybe"}', "valid boolean"),
        (b'{"queries": ["a"], "topk": ' + b"9" * 5000 + b"}", "not valid JSON"),  # beyond int digit limits
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # nesting beyond the recursion limit
        (b"\xff\xfe{", "not valid JSON"),
    ],
)
def test_malformed_requests_get_422(server, body, needle):
    response = requests.post(server.url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 422
    assert needle in json.dumps(response.json()["detail"])


def test_request_size_is_capped_with_the_limit_named(bm25):
    with serve(bm25, limits=Limits(max_queries=8, max_results=20, max_body_bytes=4096)) as srv:
        ok = requests.post(srv.url, json={"queries": ["Evan Morris"] * 4, "topk": 5}, timeout=5)
        assert ok.status_code == 200 and sum(map(len, ok.json()["result"])) == 20
        too_many = requests.post(srv.url, json={"queries": ["a"] * 9, "topk": 1}, timeout=5)
        assert too_many.status_code == 422 and "max_queries=8" in too_many.json()["detail"]
        product = requests.post(srv.url, json={"queries": ["a"] * 5, "topk": 5}, timeout=5)
        assert product.status_code == 422 and "max_results=20" in product.json()["detail"]
        big = requests.post(srv.url, json={"queries": ["x" * 5000]}, timeout=5)
        assert big.status_code == 413 and "max_body_bytes=4096" in big.json()["detail"]
        chunked = requests.post(srv.url, data=(b" " * 1000 for _ in range(8)), timeout=5)  # no Content-Length
        assert chunked.status_code == 413 and "max_body_bytes=4096" in chunked.json()["detail"]
        assert requests.post(srv.url, json={"queries": ["Roche"]}, timeout=5).status_code == 200


def test_broken_http_gets_an_http_answer(server):
    """Bodies the old server answered by closing the connection (e.g. a non-ASCII digit as Content-Length)."""
    for head in (b"Content-Length: \xc2\xb2\r\n", b"Content-Length: 99999999999999999999999\r\n",
                 b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with socket.create_connection(server.server_address, timeout=5) as conn:
            conn.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            assert conn.recv(100).startswith((b"HTTP/1.1 400", b"HTTP/1.1 413"))


def test_idle_connections_and_stalled_bodies_time_out(bm25):
    """The threaded server held a thread per idle connection forever; uvicorn alone never closes a connection that
    sends nothing, nor gives up on a body that stops halfway."""
    with serve(bm25, timeout_keep_alive=0.5, body_timeout=0.5) as srv:
        idle = socket.create_connection(srv.server_address, timeout=10)
        stalled = socket.create_connection(srv.server_address, timeout=10)
        stalled.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        start = time.monotonic()
        assert idle.recv(100) == b""  # closed by the server
        assert stalled.recv(1000).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < 5
        idle.close()
        stalled.close()


def test_idle_connections_do_not_block_requests(server):
    idle = [socket.create_connection(server.server_address, timeout=5) for _ in range(200)]
    try:  # the threaded server held one thread per idle connection; uvicorn holds none
        assert requests.post(server.url, json={"queries": ["Roche"]}, timeout=5).status_code == 200
    finally:
        for conn in idle:
            conn.close()


def test_failing_retriever_gives_500_and_client_error(tmp_path):
    class Broken:
        content_hash = "broken"

        def search(self, queries, topk):
            raise RuntimeError("index is corrupt")

    srv = serve(Broken(), "127.0.0.1", 0)
    try:
        response = requests.post(srv.url, json={"queries": ["x"]}, timeout=5)
        assert response.status_code == 500 and "index is corrupt" in response.json()["detail"]
        with pytest.raises(RetrieverError, match=r"failed after 2 attempt\(s\).*HTTP 500.*index is corrupt"):
            HTTPRetriever(srv.url, max_retries=1, backoff=0.01).search(["x"], 3)
    finally:
        srv.shutdown()
        srv.server_close()


# -- client robustness ------------------------------------------------------------------------------------------------


def test_down_server_retries_then_raises_clear_error():
    url = f"http://127.0.0.1:{closed_port()}/retrieve"
    client = HTTPRetriever(url, timeout=2, max_retries=2, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(RetrieverError) as err:
        client.search(["anything"], 3)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert url in message and "3 attempt(s)" in message and "ConnectionError" in message
    assert elapsed >= 0.1  # it waited between attempts (urllib3's schedule: none, then 2 x backoff)
    # the hash of an unreachable server: the URL's, not kept; reading it (as isinstance does) is quick, never raises
    start = time.monotonic()
    assert isinstance(client, Retriever)
    assert client.content_hash.startswith("url:") and client._content_hash is None
    assert time.monotonic() - start < 2


def test_transient_5xx_is_retried_then_succeeds():
    calls = []

    def flaky(request):
        calls.append(json.loads(request.body))
        if len(calls) < 3:
            return Response(503, "warming up")
        return json_response({"result": [[{"document": {"id": "7", "contents": '"T"\nbody'}, "score": 1.5}]]})

    with LocalServer({"/retrieve": flaky}) as srv:
        hits = HTTPRetriever(srv.url("/retrieve"), max_retries=3, backoff=0.01).search(["q"], 2)
    assert hits == [[Passage("7", "T", "body", 1.5)]]
    assert len(calls) == 3 and calls[0] == {"queries": ["q"], "topk": 2, "return_scores": True}


def test_4xx_is_not_retried():
    with LocalServer({"/retrieve": lambda r: json_response({"detail": "bad topk"}, 422)}) as srv:
        with pytest.raises(RetrieverError, match=r"HTTP 422.*bad topk"):
            HTTPRetriever(srv.url("/retrieve"), max_retries=3, backoff=0.01).search(["q"], 2)
        assert [r.method for r in srv.requests] == ["GET", "POST"]  # /health (for limits), one POST


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"results": []}, "no 'result' field"),
        ({"result": []}, r"one list per query \(1\), got 0 lists"),
        ({"result": [{"id": "1"}]}, r"result\[0\] must be a list"),
        ({"result": [[{"document": {"title": "x"}, "score": 1}]]},
         r"result\[0\]\[0\]\.document: missing field 'id'"),
        ({"result": [[{"document": {"id": "1", "contents": "x"}, "score": 1}]], "deep": [[[[[[[[[[]]]]]]]]]]},
         None),
        ({"result": [[{"document": {"id": "1", "contents": "x"}, "score": "high"}]]}, "'score' must be a number"),
        ({"result": [["just a string"]]}, r"result\[0\]\[0\]: expected a JSON object"),
    ],
)
def test_malformed_responses_raise(payload, needle):
    if needle is None:  # parseable: a sanity row for the table
        return
    with LocalServer({"/retrieve": lambda r: json_response(payload)}) as srv:
        with pytest.raises(RetrieverError, match="malformed response: .*" + needle):
            HTTPRetriever(srv.url("/retrieve"), max_retries=0).search(["q"], 1)


def test_deeply_nested_response_is_a_retriever_error():
    nested = "[" * 100_000 + "]" * 100_000  # json raised a bare RecursionError out of search()
    with LocalServer({"/retrieve": lambda r: Response(200, '{"result": ' + nested + "}")}) as srv:
        with pytest.raises(RetrieverError, match="invalid JSON.*RecursionError"):
            HTTPRetriever(srv.url("/retrieve"), max_retries=0).search(["q"], 1)


def test_timeout_is_an_overall_deadline_against_a_dripping_server():
    """Per-read timeouts let a server sending one byte at a time hold the caller 55 s with timeout=2."""
    body = json.dumps({"result": [[{"id": "1", "contents": "x"}]]})
    drip = lambda r: Response(200, [c.encode() for c in body], {"Content-Type": "application/json"}, 0.1)  # noqa: E731
    with LocalServer({"/retrieve": drip}) as srv:  # ~4 s to send it all
        client = HTTPRetriever(srv.url("/retrieve"), timeout=1.0, max_retries=2, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(RetrieverError, match=r"DeadlineExceeded.*within the 1.0 s deadline"):
            client.search(["q"], 1)
        assert time.monotonic() - start < 1.8
        # and a prompt answer right after still works (the dropped connection is not reused)
        srv.routes["/retrieve"] = lambda r: json_response({"result": [[{"id": "1", "contents": "x"}]]})
        assert client.search(["q"], 1) == [[Passage("1", "", "x")]]


def test_a_retry_after_beyond_the_deadline_is_not_waited_for():
    busy = lambda r: Response(503, "busy", {"Retry-After": "30"})  # noqa: E731
    with LocalServer({"/retrieve": busy}) as srv:
        start = time.monotonic()
        with pytest.raises(RetrieverError, match="DeadlineExceeded"):
            HTTPRetriever(srv.url("/retrieve"), timeout=1.0, max_retries=3).search(["q"], 1)
        assert time.monotonic() - start < 2


def test_one_retrying_session_for_every_http_client():
    from igpo_envs.agents.llm import OpenAIChatAgent
    from igpo_envs.search.sessions import DeadlineSession
    from igpo_envs.search.web_search import SearXNGRetriever

    sessions = [HTTPRetriever("http://127.0.0.1:9/retrieve")._session,
                SearXNGRetriever("http://127.0.0.1:9", cache=False).session,
                OpenAIChatAgent("m", "http://127.0.0.1:9/v1").session]
    for session in sessions:
        assert isinstance(session, DeadlineSession)
        assert type(session.get_adapter("http://x").max_retries).__name__ == "_DeadlineRetry"


def test_topk_above_the_server_limit_fails_at_construction(bm25):
    with serve(bm25, limits=Limits(max_topk=5)) as srv:
        with pytest.raises(ValueError, match="topk=6 exceeds the retriever server's limit max_topk=5"):
            HTTPRetriever(srv.url, topk=6)
        client = HTTPRetriever(srv.url, topk=5)
        with pytest.raises(ValueError, match="max_topk=5"):
            client.search(["Evan Morris"], 6)  # refused before any request
    with pytest.raises(ValueError, match="topk"):
        HTTPRetriever("http://127.0.0.1:9/retrieve", topk=0)
    HTTPRetriever(f"http://127.0.0.1:{closed_port()}/retrieve", topk=10_000)  # no server, no limit known: no check


def test_env_topk_above_the_server_limit_fails_at_construction(bm25):
    import gymnasium as gym

    import igpo_envs  # noqa: F401  (registers the ids)

    with serve(bm25, limits=Limits(max_topk=5)) as srv:
        with pytest.raises(ValueError, match="topk=6 exceeds the retriever server's limit max_topk=5"):
            gym.make("igpo/NQ-v0", retriever_url=srv.url, topk=6)
        env = gym.make("igpo/NQ-v0", retriever_url=srv.url, topk=5)
        env.reset(seed=0)
        _, _, terminated, _, info = env.step("<search> Evan Morris </search>")
        assert not terminated and len(info["retrieved_ids"]) == 5


def test_big_batches_are_split_to_the_server_limits(bm25):
    queries = [f"{q} {i}" for i in range(7) for q in QUERIES]  # 28 queries x topk 3 = 84 results
    with serve(bm25, limits=Limits(max_queries=10, max_results=30)) as srv:
        assert HTTPRetriever(srv.url).search(queries, 3) == bm25.search(queries, 3)


def test_search_r1_raw_document_shape_without_ids():
    """Search-R1's BM25 server over an index storing raw documents answers {title, text, contents}, no id."""
    doc = {"title": "Ada Lindqvist", "text": "An astronomer.", "contents": '"Ada Lindqvist"\nAn astronomer.'}
    with LocalServer({"/retrieve": lambda r: json_response({"result": [[{"document": doc, "score": 2.5}]]})}) as srv:
        [[hit]] = HTTPRetriever(srv.url("/retrieve")).search(["ada"], 1)
    assert (hit.title, hit.text, hit.score) == ("Ada Lindqvist", "An astronomer.", 2.5)
    assert hit.id.startswith("sha256:") and parse_retrieve_response({"result": [[doc]]}, 1)[0][0].id == hit.id


def test_non_json_response_raises():
    with LocalServer({"/retrieve": lambda r: Response(200, "<html>oops</html>")}) as srv:
        with pytest.raises(RetrieverError, match="invalid JSON.*oops"):
            HTTPRetriever(srv.url("/retrieve"), max_retries=0).search(["q"], 1)


def test_foreign_search_r1_server_shapes_and_url_hash():
    # Search-R1's retrieval_server: corpus rows as documents, extra fields allowed, no /health endpoint.
    def search_r1(request):
        body = json.loads(request.body)
        doc = {"id": "12", "contents": '"Ada Lindqvist"\nAn astronomer.', "extra": 1}
        if body.get("return_scores"):
            return json_response({"result": [[{"document": doc, "score": 3.25}] for _ in body["queries"]]})
        return json_response({"result": [[doc] for _ in body["queries"]]})

    with LocalServer({"/retrieve": search_r1}) as srv:
        client = HTTPRetriever(srv.url("/retrieve"))
        assert client.search(["a", "b"], 1) == [[Passage("12", "Ada Lindqvist", "An astronomer.", 3.25)]] * 2
        assert client.content_hash.startswith("url:") and client.content_hash == HTTPRetriever(client.url).content_hash
    title_text_shape = {"result": [[{"id": 5, "title": "T", "text": "x"}]]}
    assert parse_retrieve_response(title_text_shape, 1) == [[Passage("5", "T", "x")]]


def test_client_argument_checks():
    with pytest.raises(ValueError, match="http:// or https://"):
        HTTPRetriever("127.0.0.1:8000/retrieve")
    client = HTTPRetriever("http://127.0.0.1:9/retrieve", content_hash="fixed")
    assert client.content_hash == "fixed"
    with pytest.raises(TypeError):
        client.search("one query", 3)
    with pytest.raises(ValueError, match="topk"):
        client.search(["q"], 0)


# -- the igpo-retriever command ---------------------------------------------------------------------------------------


def test_server_imports_without_ray_and_ray_serve_has_no_import_cycle():
    code = ("import sys, igpo_envs.search.server as s; assert 'ray' not in sys.modules; "
            "import igpo_envs.search.ray_serve as r; assert r.create_app is s.create_app")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_parser_defaults_bind_localhost():
    args = build_parser().parse_args(["--corpus", "c.jsonl"])
    assert (args.host, args.port, args.topk) == ("127.0.0.1", 8000, 3)


def test_cli_missing_corpus_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", str(tmp_path / "missing.jsonl")])
    assert exc.value.code == 2
    assert "corpus file not found" in capsys.readouterr().err


def test_cli_serves_the_corpus(tmp_path):
    env = dict(os.environ, IGPO_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "igpo_envs.search.server", "--corpus", str(SAMPLE), "--port", "0",
                             "--topk", "2"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/retrieve)", line)
        assert match, f"unexpected startup line: {line!r}"
        hits = HTTPRetriever(match.group(1)).search(["Evan Morris lobbyist"], 2)
        assert [p.title for p in hits[0]][:1] == ["Evan Morris"] and len(hits[0]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
