"""Packed belief scoring equals separate per-prefix passes; IG formulas; history/probe tokenisation; the scorer."""

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from igpo_envs.information_gain import (  # noqa: E402
    InformationGainScorer,
    answer_logprobs,
    batch_answer_logprobs,
    first_alias,
    information_gain,
    information_gains,
    log_prob_diff,
    masked_attention,
    per_prefix_answer_logprobs,
    prob_diff,
    render_history,
    tokenize_history,
    tokenize_probe,
)
from igpo_envs.protocol import observation_text  # noqa: E402

VOCAB = 100
ATOL = 1e-4


def tiny_model(arch: str, attn: str, **overrides):
    config_class = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[arch]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        # Larger than the default 0.02 so the answer's log-prob clearly depends on the context (sensitivity test).
        initializer_range=0.2,
        **overrides,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()


MODELS = [(arch, attn) for arch in ("qwen2", "llama") for attn in ("eager", "sdpa")]


@pytest.fixture(scope="module", params=MODELS, ids=[f"{a}-{b}" for a, b in MODELS])
def model(request):
    m = tiny_model(*request.param)
    assert m.config._attn_implementation == request.param[1]
    return m


def rand_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def mask(*bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


PROBE, PROBE_MASK = rand_ids(9, 1), mask(0, 0, 1, 1, 1, 1, 0, 0, 0)  # "<answer> a b c d </answer>"-like


@pytest.mark.parametrize("method", ["packed", "cached"])
def test_packed_equals_per_prefix_passes(model, method):
    seq, bounds = rand_ids(60, 2), [4, 17, 33, 60]
    expected = per_prefix_answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK)
    got = answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK, method=method)
    assert got.shape == (4,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert expected.max() - expected.min() > 1e-2  # the beliefs really depend on the prefix


def test_cached_rollout_scores_its_probes_again_and_again(model):
    """The public split of method="cached" (what benchmarks/ig_scoring.py times apart): the same beliefs as separate
    passes, also on a second call against the same cache."""
    from igpo_envs.information_gain.packed import CachedRollout, cached_probe_logprobs

    seq, bounds = rand_ids(50, 5), [3, 20, 50]
    expected = per_prefix_answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK)
    cached = CachedRollout(model, seq, bounds, PROBE, PROBE_MASK)
    for _ in range(2):
        torch.testing.assert_close(cached_probe_logprobs(model, cached), expected, atol=ATOL, rtol=0)


def test_reference_is_sensitive_to_the_prefix(model):
    """Guard against a vacuous comparison: one token more of context changes the belief by far more than ATOL."""
    seq = rand_ids(60, 2)
    a = per_prefix_answer_logprobs(model, seq, [17, 33], PROBE, PROBE_MASK)
    b = per_prefix_answer_logprobs(model, seq, [18, 34], PROBE, PROBE_MASK)
    assert (a - b).abs().max() > 100 * ATOL


@pytest.mark.parametrize("method", ["packed", "cached"])
@pytest.mark.parametrize(
    "chunking",
    [
        {},
        {"max_padding": 10.0},
        {"max_rows": 2, "max_padding": 10.0},
        {"max_mask_elements": 60 * 60, "max_padding": 10.0},
    ],
    ids=["default", "one_padded_pass", "max_rows", "mask_budget"],
)
def test_batch_equals_per_prefix_passes(model, method, chunking):
    seqs = [rand_ids(n, 10 + n) for n in (12, 45, 30, 7)]
    bounds = [[3, 12], [1, 9, 20, 45], [30], [2, 4, 6, 7]]
    probes = [rand_ids(n, 20 + n) for n in (4, 11, 3, 6)]
    masks = [mask(1, 1, 0, 0), mask(0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0), mask(0, 1, 0), mask(0, 0, 0, 0, 0, 1)]
    got = batch_answer_logprobs(model, seqs, bounds, probes, masks, method=method, **chunking)
    assert [g.shape for g in got] == [(len(b),) for b in bounds]
    for s, b, p, m, g in zip(seqs, bounds, probes, masks, got):
        torch.testing.assert_close(g, per_prefix_answer_logprobs(model, s, b, p, m), atol=ATOL, rtol=0)


def test_rows_are_grouped_by_length_with_bounded_padding():
    from igpo_envs.information_gain.packed import _chunks, _prepare_row

    rows = [_prepare_row(rand_ids(n, n), [n], PROBE, PROBE_MASK) for n in (100, 10, 95, 12, 400)]  # probe adds 5
    assert _chunks(rows, 8, 2**26, 0.25) == [[1, 3], [2, 0], [4]]
    assert _chunks(rows, 8, 2**26, 10.0) == [[1, 3, 2, 0, 4]]
    assert _chunks(rows, 2, 2**26, 10.0) == [[1, 3], [2, 0], [4]]
    assert _chunks(rows, 8, 3 * 105 * 105, 10.0) == [[1, 3, 2], [0], [4]]


def test_batch_with_one_shared_probe(model):
    seqs, bounds = [rand_ids(20, 3), rand_ids(35, 4)], [[5, 20], [10, 35]]
    got = batch_answer_logprobs(model, seqs, bounds, PROBE.tolist(), PROBE_MASK.tolist())
    for s, b, g in zip(seqs, bounds, got):
        torch.testing.assert_close(g, per_prefix_answer_logprobs(model, s, b, PROBE, PROBE_MASK), atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["packed", "cached"])
@pytest.mark.parametrize(
    "case",
    [
        "no_search",  # K = 0: only v_0
        "prefix_is_full_length",
        "prefix_of_one_token",
        "repeated_and_unsorted_prefixes",
        "long_probe",  # a probe longer than the rollout, every token scored
        "first_probe_token_scored",  # predicted by the last prefix token, in the rollout part
        "only_first_probe_token_scored",  # no probe token needs feeding at all
        "last_probe_token_scored",
    ],
)
def test_boundary_cases(model, method, case):
    seq, probe, score = rand_ids(25, 5), PROBE, PROBE_MASK
    bounds = {"no_search": [10], "prefix_is_full_length": [25], "prefix_of_one_token": [1, 25]}.get(case, [6, 18])
    if case == "repeated_and_unsorted_prefixes":
        bounds = [18, 6, 18, 25]
    elif case == "long_probe":
        probe, score = rand_ids(40, 6), torch.ones(40, dtype=torch.bool)
    elif case == "first_probe_token_scored":
        score = mask(1, 1, 1, 0, 0, 0, 0, 0, 0)
    elif case == "only_first_probe_token_scored":
        score = mask(1, 0, 0, 0, 0, 0, 0, 0, 0)
    elif case == "last_probe_token_scored":
        score = mask(0, 0, 0, 0, 0, 0, 0, 1, 1)
    expected = per_prefix_answer_logprobs(model, seq, bounds, probe, score)
    got = answer_logprobs(model, seq, bounds, probe, score, method=method)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_scoring_keeps_mode_and_no_gradient():
    model = tiny_model("qwen2", "sdpa").train()  # dropout is 0, so train mode gives the same numbers
    seq = rand_ids(30, 7)
    got = answer_logprobs(model, seq, [5, 30], PROBE, PROBE_MASK)
    assert model.training and not got.requires_grad
    expected = per_prefix_answer_logprobs(model, seq, [5, 30], PROBE, PROBE_MASK)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sliding_window_layers(attn, monkeypatch):
    """Qwen2 with sliding-window layers: each layer type gets its own mask, windowed by position distance."""
    from igpo_envs.information_gain import packed

    monkeypatch.setattr(packed, "AUTO_PACKED_MAX_TOKENS", 10)  # "auto" must still pick "packed" here
    model = tiny_model("qwen2", attn, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert "sliding_attention" in model.config.layer_types
    seq, bounds = rand_ids(40, 8), [5, 22, 40]
    expected = per_prefix_answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK)
    torch.testing.assert_close(answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK), expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="sliding-window"):
        answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK, method="cached")


def test_auto_switches_to_the_cache_for_wide_rows(monkeypatch):
    from igpo_envs.information_gain import packed

    calls = []
    for name in ("_score_packed", "_score_cached"):
        original = getattr(packed, name)
        monkeypatch.setattr(packed, name, lambda m, rows, f=original, n=name: calls.append(n) or f(m, rows))
    monkeypatch.setattr(packed, "AUTO_PACKED_MAX_TOKENS", 40)
    model = tiny_model("qwen2", "sdpa")
    short, wide = rand_ids(20, 11), rand_ids(60, 12)
    for seq in (short, wide):
        torch.testing.assert_close(
            answer_logprobs(model, seq, [5, len(seq)], PROBE, PROBE_MASK),
            per_prefix_answer_logprobs(model, seq, [5, len(seq)], PROBE, PROBE_MASK), atol=ATOL, rtol=0,
        )
    assert calls == ["_score_packed", "_score_cached"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score_mask": torch.zeros(9, dtype=torch.bool)}, "selects no probe token"),
        ({"boundaries": [0, 5]}, r"boundaries\[0\] = 0 is out of range"),
        ({"boundaries": [5, 21]}, r"boundaries\[1\] = 21 is out of range.*len\(input_ids\)=20"),
        ({"boundaries": [-3]}, "out of range"),
        ({"boundaries": []}, "boundaries is empty"),
        ({"score_mask": mask(1, 0)}, "one entry per probe token"),
        ({"input_ids": torch.zeros(2, 10, dtype=torch.long)}, "input_ids must be 1-D"),
        ({"input_ids": []}, "input_ids is empty"),
        ({"probe_ids": torch.ones(9)}, "integer token ids"),
        ({"method": "magic"}, "unknown method"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    model = tiny_model("llama", "sdpa")
    args = {"input_ids": rand_ids(20, 9), "boundaries": [5, 20], "probe_ids": PROBE, "score_mask": PROBE_MASK} | kwargs
    with pytest.raises(ValueError, match=message):
        answer_logprobs(model, **args)


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention", "kernels-community/flash-attn"])
@pytest.mark.parametrize("method", ["packed", "cached"])
def test_any_attention_implementation_is_scored(impl, method):
    """A model configured with an attention that takes no 4-D mask (flash-attn needs a GPU here, so only the config
    says so) is switched to sdpa for the scoring pass and switched back: same numbers, no crash."""
    model = tiny_model("qwen2", "sdpa")
    seq, bounds = rand_ids(40, 9), [5, 20, 40]
    expected = per_prefix_answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK)
    model.config._attn_implementation_internal = impl
    with masked_attention(model) as packed:
        assert packed and model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == impl
    got = answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK, method=method)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert model.config._attn_implementation == impl
    assert all(m.config._attn_implementation == impl for m in model.modules() if hasattr(m, "config"))


def test_a_model_that_cannot_switch_attention_is_scored_per_prefix(monkeypatch):
    model = tiny_model("llama", "sdpa")
    seq, bounds = rand_ids(30, 4), [3, 17, 30]
    expected = per_prefix_answer_logprobs(model, seq, bounds, PROBE, PROBE_MASK)
    model.config._attn_implementation_internal = "flash_attention_2"

    def refuse(implementation):
        raise ValueError(f"{implementation} is not supported")

    calls = []
    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    real_forward = model.forward

    def plain_forward(*args, **kwargs):  # what flash attention can run: no custom mask
        calls.append(kwargs.get("attention_mask"))
        model.config._attn_implementation_internal = "sdpa"
        try:
            return real_forward(*args, **kwargs)
        finally:
            model.config._attn_implementation_internal = "flash_attention_2"

    monkeypatch.setattr(model, "forward", plain_forward)
    got = batch_answer_logprobs(model, [seq, seq[:20]], [bounds, [3, 17]], PROBE, PROBE_MASK)
    torch.testing.assert_close(got[0], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(got[1], expected[:2], atol=ATOL, rtol=0)
    assert len(calls) == 5 and all(m is None for m in calls)  # one plain pass per prefix


def test_batch_errors_name_the_sequence():
    model = tiny_model("llama", "sdpa")
    seqs = [rand_ids(10, 1), rand_ids(10, 2)]
    with pytest.raises(ValueError, match=r"sequence 1: boundaries\[0\] = 11"):
        batch_answer_logprobs(model, seqs, [[5], [11]], PROBE, PROBE_MASK)
    with pytest.raises(ValueError, match="boundaries has 1 entries for 2 sequences"):
        batch_answer_logprobs(model, seqs, [[5]], PROBE, PROBE_MASK)
    with pytest.raises(ValueError, match="probe_ids has 3 entries for 2 sequences"):
        batch_answer_logprobs(model, seqs, [[5], [5]], [PROBE] * 3, PROBE_MASK)
    assert batch_answer_logprobs(model, [], [], PROBE, PROBE_MASK) == []


# --- formulas, on hand-computed numbers --------------------------------------------------------------------------


def test_prob_diff_and_log_prob_diff():
    assert prob_diff(math.log(0.2), math.log(0.5)) == pytest.approx(0.3)
    assert prob_diff(math.log(0.5), math.log(0.2)) == pytest.approx(-0.3)
    assert log_prob_diff(-2.0, -0.5) == pytest.approx(1.5)
    assert information_gain(math.log(0.25), 0.0, "prob_diff") == pytest.approx(0.75)
    assert information_gain(-3.0, -1.0, "log_prob_diff") == pytest.approx(2.0)


def test_information_gains_from_beliefs():
    beliefs = [math.log(0.1), math.log(0.4), math.log(0.3)]
    assert information_gains(beliefs) == pytest.approx([0.3, -0.1])
    assert information_gains(beliefs, "log_prob_diff") == pytest.approx([math.log(4), math.log(0.75)])
    assert information_gains([math.log(0.5)]) == []  # no search: no tool-turn reward
    as_tensor = information_gains(torch.tensor(beliefs, dtype=torch.float64), "prob_diff")
    assert isinstance(as_tensor, torch.Tensor)
    torch.testing.assert_close(as_tensor, torch.tensor([0.3, -0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown info_gain_type"):
        information_gains(beliefs, "kl")
    with pytest.raises(ValueError, match="at least v_0"):
        information_gains([])


# --- history and probe tokenisation, the scorer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from igpo_trainer.tiny import train_tokenizer

    texts = ["Who directed Dark Orbit? Marlo Vesk directed the film Dark Orbit. He was born in Tavella."] * 10
    return train_tokenizer(texts, vocab_size=400)


MESSAGES = [
    {"role": "user", "content": "Question: who directed Dark Orbit?"},
    {"role": "assistant", "content": "<search> Dark Orbit director </search>"},
    {"role": "user", "content": "<information>\nDoc 1 (Title: Dark Orbit) directed by Marlo Vesk\n</information>"},
    {"role": "assistant", "content": "<search> Marlo Vesk </search>"},
    {"role": "user", "content": "<information>\nDoc 1 (Title: Marlo Vesk) born in Tavella\n</information>"},
    {"role": "assistant", "content": "<answer> Marlo Vesk </answer>"},
]


def test_render_and_tokenize_history(tokenizer):
    text = render_history(tokenizer, MESSAGES)
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    # The trainer's rendering: agent turns verbatim, observations on their own lines.
    turns = [m["content"] if m["role"] == "assistant" else observation_text(m["content"]) for m in MESSAGES[1:]]
    assert text == prompt + "".join(turns)
    ids, bounds = tokenize_history(tokenizer, MESSAGES)
    assert tokenizer.decode(ids) == text
    # v_0 after the prompt, v_1 and v_2 after each observation; the final answer adds no boundary.
    assert len(bounds) == 3 and bounds[-1] < len(ids)
    for k, n_messages in enumerate([1, 3, 5]):
        assert tokenizer.decode(ids[: bounds[k]]) == render_history(tokenizer, MESSAGES[:n_messages])
    with pytest.raises(ValueError, match="messages is empty"):
        tokenize_history(tokenizer, [])
    with pytest.raises(ValueError, match="first message must be the prompt"):
        tokenize_history(tokenizer, MESSAGES[1:])


def test_history_without_chat_template(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    assert not plain.chat_template
    expected = MESSAGES[0]["content"] + MESSAGES[1]["content"] + observation_text(MESSAGES[2]["content"])
    assert render_history(plain, MESSAGES[:3]) == expected


def test_tokenize_probe_scores_only_the_answer(tokenizer):
    ids, score = tokenize_probe(tokenizer, "Marlo Vesk", "tag", "answer")
    assert tokenizer.decode(ids) == "<answer> Marlo Vesk </answer>"
    # The probe is tokenised as one string: the byte-level BPE's answer tokens carry the leading space.
    assert ids == tokenizer("<answer> Marlo Vesk </answer>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([i for i, s in zip(ids, score) if s]) == " Marlo Vesk"
    ids, score = tokenize_probe(tokenizer, "Tavella", "tool_call", "official")
    assert "\nNow there's enough information to answer\n</think>\n<answer>\n" in tokenizer.decode(ids)
    assert tokenizer.decode([i for i, s in zip(ids, score) if s]) == "Tavella"
    with pytest.raises(ValueError, match="non-empty"):
        tokenize_probe(tokenizer, "  ")
    assert first_alias(["Marlo Vesk", "M. Vesk"]) == "Marlo Vesk" and first_alias("x") == "x"
    with pytest.raises(ValueError, match="aliases is empty"):
        first_alias([])


@pytest.fixture(scope="module")
def scorer(tokenizer):
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return InformationGainScorer(model, tokenizer, protocol="tag")


def test_scorer_beliefs_match_separate_passes(scorer, tokenizer):
    prompt = MESSAGES[0]["content"]
    turns = [(MESSAGES[1]["content"], MESSAGES[2]["content"]), (MESSAGES[3]["content"], MESSAGES[4]["content"])]
    beliefs = scorer.beliefs(prompt, turns, ["Marlo Vesk", "Vesk"])
    assert len(beliefs) == 3
    probe, score = tokenize_probe(tokenizer, "Marlo Vesk")
    for k in range(3):  # each v_k: one separate pass over the rendered history of the first k turns
        ids, _ = tokenize_history(tokenizer, MESSAGES[: 1 + 2 * k])
        expected = per_prefix_answer_logprobs(scorer.model, ids, [len(ids)], probe, score).item()
        assert beliefs[k] == pytest.approx(expected, abs=ATOL)
        assert scorer.current_belief(MESSAGES[: 1 + 2 * k], "Marlo Vesk") == pytest.approx(expected, abs=ATOL)
    assert scorer.gains(prompt, turns, "Marlo Vesk") == pytest.approx(information_gains(beliefs, "prob_diff"))
    assert scorer.beliefs(prompt, [], "Marlo Vesk") == pytest.approx(beliefs[:1])


def test_scorer_validates_its_options(scorer):
    with pytest.raises(ValueError, match="unknown probe style"):
        InformationGainScorer(scorer.model, scorer.tokenizer, probe_style="guess")
    with pytest.raises(ValueError, match="unknown protocol"):
        InformationGainScorer(scorer.model, scorer.tokenizer, protocol="xml")
    with pytest.raises(ValueError, match="unknown info_gain_type"):
        InformationGainScorer(scorer.model, scorer.tokenizer, info_gain_type="kl")
    with pytest.raises(ValueError, match="unknown method"):
        InformationGainScorer(scorer.model, scorer.tokenizer, method="fast")


def test_scorer_from_pretrained(tmp_path, scorer):
    scorer.model.save_pretrained(tmp_path)
    scorer.tokenizer.save_pretrained(tmp_path)
    loaded = InformationGainScorer.from_pretrained(tmp_path, info_gain_type="log_prob_diff")
    assert not loaded.model.training and loaded.info_gain_type == "log_prob_diff"
    assert loaded.current_belief(MESSAGES[:3], "Marlo Vesk") == pytest.approx(
        scorer.current_belief(MESSAGES[:3], "Marlo Vesk"), abs=ATOL
    )


def test_envs_do_not_import_torch():
    """Making and stepping an env stays torch-free; only the information-gain module brings torch in."""
    code = (
        "import sys, gymnasium as gym, igpo_envs\n"
        "from igpo_envs.types import Passage, QAItem\n"
        "class Retriever:\n"
        "    content_hash = 'mem'\n"
        "    def search(self, queries, topk):\n"
        "        return [[Passage('1', 'Dark Orbit', 'directed by Marlo Vesk')] for _ in queries]\n"
        "env = gym.make('igpo/SearchQA-v0', questions=[QAItem('q', 'Who directed Dark Orbit?', ('Marlo Vesk',))],\n"
        "               retriever=Retriever())\n"
        "env.reset(seed=0)\n"
        "assert env.step('<search> Dark Orbit </search>')[4]['action']['kind'] == 'search'\n"
        "assert env.step('<answer> Marlo Vesk </answer>')[1] == 1.0\n"
        "assert 'torch' not in sys.modules, 'making and stepping an env imported torch'\n"
        "import igpo_envs.information_gain\n"
        "assert 'torch' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
