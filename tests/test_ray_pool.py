"""Ray retrieval: a local cluster serves queries through the actor pool, survives a killed actor, and Ray Serve
answers Search-R1's ``POST /retrieve`` on 127.0.0.1. One cluster for the whole module (it takes a few seconds)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("tantivy")

from igpo_envs.search.base import Retriever  # noqa: E402
from igpo_envs.search.corpus import file_content_hash, iter_passages  # noqa: E402
from igpo_envs.search.index_cli import build_index, open_index  # noqa: E402
from igpo_envs.search.manifest import IndexManifestError  # noqa: E402
from igpo_envs.search.ray_pool import RayRetrieverPool  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "igpo_envs" / "data" / "wiki18_sample.jsonl"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "tantivy"
    build_index(SAMPLE, "tantivy", out, progress=False)
    return out


@pytest.fixture(scope="module")
def queries():
    """One query per sample passage (its title and first words): 1,000 queries with non-empty answers."""
    return [f"{p.title} {' '.join(p.text.split()[:8])}" for p in iter_passages(SAMPLE)]


def test_pool_answers_like_the_index_and_survives_a_killed_actor(cluster, index_dir, queries):
    expected = open_index(index_dir).search(queries, 5)
    assert all(expected)
    with RayRetrieverPool(index_dir, num_actors=2, corpus=SAMPLE, chunk_size=10) as pool:
        assert isinstance(pool, Retriever)
        assert pool.content_hash == file_content_hash(SAMPLE)
        assert len(set(pool.pids)) == 2  # two separate searcher processes
        assert pool.search(queries, 5) == expected
        assert pool.search([], 5) == []

        # Kill one actor while a 3,000-query batch (300 chunks) is in flight.
        done_before = pool.stats.chunks_done
        answers: dict[str, object] = {}
        worker = threading.Thread(target=lambda: answers.update(out=pool.search(queries * 3, 5)))
        worker.start()
        deadline = time.monotonic() + 30
        while pool.stats.chunks_done < done_before + 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        victim_pid = pool.pids[0]
        ray.kill(pool.actors[0])
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert answers["out"] == expected * 3  # every query answered, correctly, in order
        assert pool.stats.actors_replaced == 1 and pool.stats.replaced_pids == [victim_pid]
        assert pool.stats.chunks_retried >= 1  # chunks were in flight on the killed actor, and were resubmitted
        # The replacement serves later batches too.
        assert pool.search(queries[:50], 5) == expected[:50]

        # The env takes the pool as its retriever.
        from igpo_envs.env import SearchQAEnv
        from igpo_envs.types import QAItem

        env = SearchQAEnv(questions=[QAItem("q", "Who lobbied for Genentech?", ("Evan Morris",))], retriever=pool)
        env.reset(seed=0)
        observation, *_ = env.step("<search> Genentech lobbyist Roche </search>")
        assert "Evan Morris" in observation


def test_pool_refuses_a_mismatched_corpus(cluster, index_dir, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(SAMPLE.read_text().replace("lobbyist", "Lobbyist", 1))
    with pytest.raises(IndexManifestError, match=file_content_hash(other)):
        RayRetrieverPool(index_dir, num_actors=1, corpus=other)


def test_pool_reports_a_failing_search_instead_of_retrying_it(cluster, index_dir):
    from igpo_envs.search.base import RetrieverError

    with RayRetrieverPool(index_dir, num_actors=1) as pool:
        with pytest.raises(RetrieverError, match="query must be a str"):
            pool.search(["Evan Morris", 42], 3)  # the actor raises TypeError: a bug, not a dead actor
        assert pool.stats.actors_replaced == 0 and pool.stats.chunks_retried == 0
        assert pool.search(["Evan Morris"], 1)[0][0].id == "0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_answers_search_r1_requests(cluster, index_dir):
    requests = pytest.importorskip("requests")
    serve = pytest.importorskip("ray.serve")
    from igpo_envs.search.ray_serve import serve_retriever

    port = _free_port()
    serve_retriever(index_dir, replicas=2, host="127.0.0.1", port=port, corpus=SAMPLE, num_cpus_per_replica=0.5)
    try:
        url = f"http://127.0.0.1:{port}/retrieve"
        expected = open_index(index_dir).search(["Evan Morris lobbyist", "Horatio Hale ethnologist"], 3)
        body = {"queries": ["Evan Morris lobbyist", "Horatio Hale ethnologist"], "topk": 3, "return_scores": True}
        reply = requests.post(url, json=body, timeout=30)
        assert reply.status_code == 200
        result = reply.json()["result"]
        assert [[d["document"]["id"] for d in hits] for hits in result] == [[p.id for p in e] for e in expected]
        assert result[0][0]["document"]["contents"].startswith('"Evan Morris"\nEvan Morris')
        assert result[0][0]["score"] == pytest.approx(expected[0][0].score, rel=1e-6)
        # Without return_scores: bare documents, Search-R1's default shape: the corpus rows as stored.
        bare = requests.post(url, json={"queries": ["Absalon Valdemar"], "topk": 1}, timeout=30).json()["result"]
        stored = {row["id"]: row for row in map(json.loads, SAMPLE.read_text().splitlines())}
        assert bare[0][0] == stored[bare[0][0]["id"]] and bare[0][0]["contents"].startswith("Absalon\n")
        # The same app as the local server: the same 422s and limits.
        bad = requests.post(url, json={"queries": "Evan Morris"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["queries"]
        too_big = requests.post(url, json={"queries": ["a"] * 30, "topk": 1000}, timeout=30)
        assert too_big.status_code == 422 and "max_results=20000" in too_big.json()["detail"]
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert health["retriever"] == "ray-serve:TantivyRetriever" and health["num_passages"] == 1000
        # Two replicas really serve (Ray Serve spreads requests over them).
        status = serve.status().applications["igpo-retriever"].deployments["RetrieverDeployment"]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
