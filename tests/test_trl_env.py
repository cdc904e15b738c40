"""The plain-TRL adapter: an igpo env behind GRPOTrainer(environment_factory=...) with JSON tool calls."""

import inspect
import json
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from conftest import KeywordRetriever

from igpo_envs.env import SearchQAEnv
from igpo_envs.types import Passage, QAItem
from igpo_trainer.trl_env import TASK_TEXT, IGPOToolEnv, tool_env_dataset


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread; on a shared 2-core machine two spinning OpenMP threads made
    these steps ~50x slower. Restored after the module so other test files keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

PASSAGES = [Passage(f"d{i}", f"Film {i}", f"Film {i} was directed by Person {i}.") for i in range(6)]
ITEMS = [QAItem(f"q{i}", f"Who directed Film {i}?", (f"Person {i}",)) for i in range(6)]


def make_base_env(**kwargs):
    retriever = KeywordRetriever(PASSAGES)
    return SearchQAEnv(questions=ITEMS, retriever=retriever, protocol="tool_call", max_turns=3, **kwargs)


def test_adapter_runs_an_episode_and_owns_the_reward():
    env = IGPOToolEnv(make_base_env())
    task = env.reset(question_index=2, prompt=[{"role": "user", "content": ""}])
    assert "Who directed Film 2?" in task and "Person 2" not in task
    result = env.search("Film 2")
    assert "Film 2 was directed by Person 2." in result and "<tool_response>" not in result
    assert env.answer("Person 2") == "Answer recorded."
    assert env.get_reward() == 1.0
    assert env.search("Film 3").startswith("The episode is over")  # after the answer nothing changes the reward
    assert env.get_reward() == 1.0

    env.reset(question_index=1)
    assert env.get_reward() == -2.0  # never answered: the env's format penalty
    env.answer("Person 2")
    assert env.get_reward() == pytest.approx(0.5)  # SQuAD F1 of "Person 2" vs "Person 1"

    env.reset(question_index=1)
    for _ in range(3):  # the env's turn limit ends the episode without an answer: the env's reward for that
        env.search("Film 1")
    assert env.get_reward() == getattr(env.env.unwrapped, "no_answer_reward", 0.0)


def test_adapter_exposes_only_search_and_answer_as_tools():
    # TRL turns every public function of the class except reset/get_reward into a tool
    public = {n for n, _ in inspect.getmembers(IGPOToolEnv, predicate=inspect.isfunction) if not n.startswith("_")}
    assert public - {"reset", "get_reward"} == {"search", "answer"}
    from transformers.utils import get_json_schema

    schema = get_json_schema(IGPOToolEnv(make_base_env()).search)
    assert schema["function"]["parameters"]["required"] == ["query"]


def test_factory_shares_the_corpus_and_dataset_checks_indices():
    retriever = KeywordRetriever(PASSAGES)
    factory = IGPOToolEnv.factory("igpo/SearchQA-v0", questions=ITEMS, retriever=retriever, max_turns=3)
    first, second = factory(), factory()
    assert first.env is not second.env and first.env.unwrapped.retriever is second.env.unwrapped.retriever
    assert first.env.unwrapped.protocol == "tool_call"
    dataset = tool_env_dataset(first.env, [0, 3], repeat=2)
    assert dataset["question_index"] == [0, 3, 0, 3]
    with pytest.raises(ValueError, match="out of range"):
        tool_env_dataset(first.env, [0, 9])


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory):
    """A tiny Qwen2 with Qwen2.5's chat template (which renders tool schemas, tool calls and tool results)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from igpo_trainer.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_tools")
    texts = [TASK_TEXT.format(question=item.question) for item in ITEMS] + [p.text for p in PASSAGES]
    build_tiny_model(out, texts, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=400)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = qwen2_5_chat_template
    tokenizer.save_pretrained(out)
    return out


def test_trl_grpo_trainer_trains_a_step_with_the_adapter(tool_model_dir, tmp_path):
    """TRL's own GRPOTrainer: it renders the tools, parses the model's JSON tool calls, runs our tools, masks their
    results and takes the reward from get_reward. The policy's turns are scripted so the tools are really called
    (a random tiny model almost never writes a well-formed tool call); the update itself is the tiny model's."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    base = make_base_env()
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
        per_device_train_batch_size=8, num_generations=4, max_steps=1, max_completion_length=256,
        max_tool_calling_iterations=2, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tool_model_dir), processing_class=tokenizer, args=args,
        train_dataset=tool_env_dataset(base, [1, 2]), environment_factory=lambda: IGPOToolEnv(base.spawn()),
    )
    assert {tool.__name__ for tool in trainer.tools} == {"search", "answer"}

    # Rollouts of a group differ: even rows answer "Person 1", odd rows "Nobody"; then every rollout says "Done."
    search = '<tool_call>\n{"name": "search", "arguments": {"query": "Film 1"}}\n</tool_call>'
    answer = '<tool_call>\n{"name": "answer", "arguments": {"answer": "%s"}}\n</tool_call>'
    scripted = [
        lambda row: search,
        lambda row: answer % ("Person 1" if row % 2 == 0 else "Nobody"),
        lambda row: "Done.",
    ]
    calls = []

    def generate(prompt_ids, *args, **kwargs):
        turn = scripted[len(calls)]
        calls.append(len(prompt_ids))
        def encode(text):
            return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

        return [encode(turn(row)) for row in range(len(prompt_ids))], None

    trainer._generate_single_turn = generate
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    log = trainer.state.log_history[0]
    assert calls == [8, 8, 8]  # one batched generation per turn for 2 questions x 4 rollouts
    assert log["tools/call_frequency"] == pytest.approx(2.0) and log["tools/failure_frequency"] == 0.0
    # question 1: F1 1, 0, 1, 0; question 2: 0.5, 0, 0.5, 0 -> mean 0.375, and no group has zero std
    assert log["rewards/IGPOToolEnv/mean"] == pytest.approx(0.375)
    assert log["frac_reward_zero_std"] == 0.0
    assert log["completions/clipped_ratio"] == 0.0  # every episode ended with EOS
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads(json.dumps(log))  # finite, serialisable metrics
