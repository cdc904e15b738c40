"""LLM agents: a local tiny model (HFAgent) and the same model behind a real `transformers serve` endpoint.

The fixture builds a tiny Qwen2 with `igpo_trainer.tiny` and fine-tunes it for a few seconds to play one toy
episode: search "Zorblat planet", then answer "Quenn". Its first turn is trained to run on past ``</search>`` into an
answer, so the episode only succeeds if generation is cut at the end of the action.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

torch = pytest.importorskip("torch")

from conftest import ITEMS, PASSAGES, KeywordRetriever  # noqa: E402
from local_http import LocalServer, Response  # noqa: E402

from igpo_envs.agents.base import act_batch, make_agent  # noqa: E402
from igpo_envs.agents.llm import (  # noqa: E402
    AgentError,
    HFAgent,
    OpenAIChatAgent,
    close_stopped_action,
    cut_at_stop,
)
from igpo_envs.env import SearchQAEnv  # noqa: E402
from igpo_envs.protocol import PROMPT_TEMPLATES  # noqa: E402

SEARCH = "<search> Zorblat planet </search>"
ANSWER = "<answer> Quenn </answer>"
RUN_ON = "<answer> Mars </answer>"  # what the model writes after </search> if nobody stops it


def make_env():
    return SearchQAEnv(questions=ITEMS, retriever=KeywordRetriever(PASSAGES), max_turns=4)


def episode_messages():
    env = make_env()
    _, first = env.reset(options={"question_index": 0})
    _, _, _, _, second = env.step(SEARCH)
    return first, second


@pytest.fixture(scope="module")
def tiny_agent_model(tmp_path_factory):
    from igpo_trainer.tiny import build_tiny_model, load_tiny

    first, second = episode_messages()
    samples = [(first["messages"], SEARCH + RUN_ON), (second["messages"], ANSWER)]
    texts = [m["content"] for m in second["messages"]] + [SEARCH + RUN_ON, ANSWER]
    path = build_tiny_model(tmp_path_factory.mktemp("agent-model"), texts, vocab_size=500, hidden_size=64,
                            num_layers=2)
    model, tokenizer = load_tiny(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 0.2M-parameter model: threads only add contention on a shared machine
    try:
        torch.manual_seed(0)
        data = []
        for messages, target in samples:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            t = tokenizer(target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            data.append((torch.tensor([p + t]), torch.tensor([[-100] * len(p) + t])))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(300):
            loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in data)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if loss.item() < 0.01:
                break
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_stop_helpers():
    assert cut_at_stop("<search> a </search><answer> b </answer>") == "<search> a </search>"
    assert cut_at_stop("<think> x </think><answer> b </answer> tail") == "<think> x </think><answer> b </answer>"
    assert cut_at_stop("no action") == "no action"
    # OpenAI-style servers strip the stop sequence: it is put back
    assert close_stopped_action("<think> x </think><search> a ") == "<think> x </think><search> a </search>"
    assert close_stopped_action('<tool_call>{"name": "search"}') == '<tool_call>{"name": "search"}</tool_call>'
    assert close_stopped_action("<answer> b </answer>") == "<answer> b </answer>"
    assert close_stopped_action("plain text") == "plain text"


def test_hf_agent_plays_an_env_episode(tiny_agent_model):
    agent = make_agent(f"hf:{tiny_agent_model}", max_new_tokens=24, batch_size=4, base_url=None)
    assert isinstance(agent, HFAgent)
    env = make_env()
    observation, info = env.reset(options={"question_index": 0})
    actions, done = [], False
    while not done:
        action = agent.act(observation, info)
        actions.append(action)
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert actions == [SEARCH, ANSWER]  # generation stopped at </search> instead of running on into RUN_ON
    assert info["em"] == 1.0 and reward == 1.0 and info["num_searches"] == 1


def test_hf_agent_batches_left_padded_prompts(tiny_agent_model):
    first, second = episode_messages()
    agent = HFAgent(tiny_agent_model, max_new_tokens=24, batch_size=8)
    assert len(agent.prompt("", second)) > len(agent.prompt("", first))  # the batch needs padding
    assert agent.tokenizer.padding_side == "left"
    batched = act_batch(agent, ["", "", ""], [first, second, first])
    assert batched == [SEARCH, ANSWER, SEARCH]
    assert [agent.act("", first), agent.act("", second)] == [SEARCH, ANSWER]


def test_hf_agent_inline_transcript_is_the_training_layout(tiny_agent_model):
    from igpo_envs.information_gain import render_history
    from igpo_envs.protocol import observation_text

    first, second = episode_messages()
    agent = HFAgent(tiny_agent_model, max_new_tokens=24, transcript="inline")
    messages = second["messages"]
    prompt = agent.prompt("", second)
    assert prompt == render_history(agent.tokenizer, messages)
    assert prompt.endswith(messages[1]["content"] + observation_text(messages[2]["content"]))
    assert "<|im_start|>" not in prompt.split("<|im_start|>assistant\n", 1)[1]  # one running assistant message
    assert agent.prompt("", first) == HFAgent(tiny_agent_model, transcript="chat").prompt("", first)  # same start
    with pytest.raises(ValueError, match="transcript must be one of"):
        HFAgent(tiny_agent_model, transcript="threaded")
    with pytest.raises(ValueError, match="force_think needs transcript='inline'"):
        HFAgent(tiny_agent_model, force_think=True)
    forced = HFAgent(tiny_agent_model, transcript="inline", force_think=True)
    assert forced.prompt("", second) == prompt + "<think>"
    assert forced.context_ids("", second)[-len(forced.tokenizer("<think>")["input_ids"]):] == (
        forced.tokenizer("<think>", add_special_tokens=False)["input_ids"])


def test_hf_agent_sampling_and_errors(tiny_agent_model, tmp_path):
    first, _ = episode_messages()
    sampled = HFAgent(tiny_agent_model, max_new_tokens=8, temperature=1.0, seed=0).act("", first)
    assert isinstance(sampled, str) and len(sampled) > 0
    with pytest.raises(ValueError, match="info\\['messages'\\]"):
        HFAgent(tiny_agent_model, max_new_tokens=4).act("question", {})
    with pytest.raises(AgentError, match="cannot load"):
        HFAgent(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs a model"):
        make_agent("hf")


# --- the endpoint agent against a real OpenAI-compatible server ------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tiny_agent_model, tmp_path_factory):
    """``transformers serve <tiny model dir>`` on 127.0.0.1 (the `transformers[serving]` extra), offline."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", tiny_agent_model,
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"transformers serve exited with {server.returncode}:\n{log.read()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not start within 120 s")
            time.sleep(0.3)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_openai_agent_plays_an_env_episode_through_transformers_serve(tiny_agent_model, served_model):
    agent = make_agent(f"openai:{tiny_agent_model}", base_url=served_model, max_new_tokens=24, device=None,
                       batch_size=None, timeout=60)
    assert isinstance(agent, OpenAIChatAgent) and agent.url == served_model + "/chat/completions"
    env = make_env()
    observation, info = env.reset(options={"question_index": 0})
    actions, done = [], False
    while not done:
        action = agent.act(observation, info)
        actions.append(action)
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert actions == [SEARCH, ANSWER]
    assert info["em"] == 1.0


def test_openai_agent_matches_the_local_model_and_batches(tiny_agent_model, served_model):
    first, second = episode_messages()
    remote = OpenAIChatAgent(tiny_agent_model, served_model, max_new_tokens=24, max_workers=3)
    local = HFAgent(tiny_agent_model, max_new_tokens=24)
    infos = [first, second, first]
    assert act_batch(remote, ["", "", ""], infos) == act_batch(local, ["", "", ""], infos) == [SEARCH, ANSWER, SEARCH]


def test_openai_agent_unreachable_endpoint_names_the_url():
    with LocalServer({}) as server:
        base_url = server.url("/v1")
    agent = OpenAIChatAgent("m", base_url, max_retries=1, backoff=0.01, timeout=5)
    first, _ = episode_messages()
    with pytest.raises(AgentError, match=f"cannot reach the chat endpoint {base_url}/chat/completions"):
        agent.act("", first)


def test_openai_agent_retries_429_and_sends_key(monkeypatch):
    """Retry/backoff and auth against a local HTTP server scripted to answer 429 twice before a completion."""
    calls = []

    def handle(request):
        calls.append(request)
        if len(calls) <= 2:
            return Response(429, "rate limited", {"Retry-After": "0"})
        completion = {"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "<search> q "}}]}
        return Response(200, __import__("json").dumps(completion), {"Content-Type": "application/json"})

    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    first, _ = episode_messages()
    with LocalServer({"/v1/chat/completions": handle}) as server:
        agent = OpenAIChatAgent("m", server.url("/v1"), api_key_env="TEST_LLM_KEY", backoff=0.01, max_retries=3)
        assert agent.act("", first) == "<search> q </search>"  # the stripped stop sequence is restored
    assert len(calls) == 3 and calls[-1].headers["Authorization"] == "Bearer sk-test"
    body = __import__("json").loads(calls[-1].body)
    assert body["messages"] == first["messages"] and body["stop"] == ["</search>", "</answer>", "</tool_call>",
                                                                       "</browse>"]
    assert body["temperature"] == 0.0 and body["model"] == "m"


def test_openai_agent_http_errors_and_tool_calls(monkeypatch):
    def handle(request):
        if "Authorization" not in request.headers:
            return Response(401, '{"error": "invalid api key"}')
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"query": "Quenn"}'}}]}
        completion = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}]}
        return Response(200, __import__("json").dumps(completion), {"Content-Type": "application/json"})

    first, _ = episode_messages()
    monkeypatch.delenv("MISSING_KEY", raising=False)
    monkeypatch.setenv("GOOD_KEY", "k")
    with LocalServer({"/v1/chat/completions": handle}) as server:
        with pytest.raises(AgentError, match="HTTP 401.*MISSING_KEY"):
            OpenAIChatAgent("m", server.url("/v1"), api_key_env="MISSING_KEY").act("", first)
        text = OpenAIChatAgent("m", server.url("/v1"), api_key_env="GOOD_KEY").act("", first)
    assert text == '<tool_call>{"name": "search", "arguments": {"query": "Quenn"}}</tool_call>'
    with pytest.raises(ValueError, match="needs a model name"):
        make_agent("openai")


# --- igpo-eval with LLM agents and web search -------------------------------------------------------------------


@pytest.fixture
def searxng_server(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path / "cache"))

    def handle(request):
        query = request.query["q"][0]
        results = [{"url": "https://en.wikipedia.org/wiki/Zorblat", "title": "Zorblat",
                    "content": "Zorblat is a fictional planet orbiting the star Quenn.",
                    "engine": "wikipedia", "score": 1.0, "category": "general"}]
        body = {"query": query, "number_of_results": 1, "results": results, "answers": [], "suggestions": []}
        return Response(200, json.dumps(body), {"Content-Type": "application/json"})

    with LocalServer({"/search": handle}) as server:
        yield server


@pytest.mark.parametrize("agent", ["openai", "hf"])
def test_igpo_eval_with_llm_agent_and_web_search(agent, tiny_agent_model, served_model, searxng_server, tmp_path,
                                                 capsys):
    import json

    from igpo_envs.cli import main

    out = tmp_path / "results.json"
    questions = tmp_path / "questions.jsonl"  # FlashRAG format: the toy question the tiny model was tuned on
    questions.write_text(json.dumps({"id": "q0", "question": ITEMS[0].question, "golden_answers": ["Quenn"]}) + "\n")
    # the tiny model knows the default prompt only (--browse would otherwise switch to a prompt announcing browse)
    env_kwargs = {"questions": str(questions), "prompt_template": PROMPT_TEMPLATES["tag"]}
    argv = ["--env", "igpo/SearchQA-v0", "--env-kwargs", json.dumps(env_kwargs),
            "--episodes", "3", "--batch-size", "3", "--no-progress",
            "--agent", f"{agent}:{tiny_agent_model}", "--max-new-tokens", "24", "--temperature", "0",
            "--web-search", f"searxng:{searxng_server.url('')}", "--browse", "--json", str(out)]
    if agent == "openai":
        argv += ["--base-url", served_model]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "igpo/SearchQA-v0" in table and "100.0" in table
    [result] = json.loads(out.read_text())["results"]
    assert result["corpus_hash"].startswith("searxng:")
    assert result["episodes"] == 3 and result["em"] == 1.0 and result["searches"] == 1.0
    # the searches went to the web backend (one request; the repeats were served from the disk cache)
    assert [r.query["q"] for r in searxng_server.requests] == [["Zorblat planet"]]
