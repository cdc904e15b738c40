"""One transcript: training rollouts, the warm start, belief scoring and evaluation agents build the same token ids.

Checked with the real Qwen2.5 and SmolLM2 tokenizers (byte-level BPE, where tokenising the running text as one string
would merge across the splice of a turn and an observation) in both protocols.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from igpo_envs.env import SearchQAEnv  # noqa: E402
from igpo_envs.protocol import PROTOCOLS, observation_text  # noqa: E402
from igpo_envs.transcript import (  # noqa: E402
    observation_ids,
    prompt_ids,
    render_messages,
    render_turns,
    split_prompt,
    transcript_text,
    turn_ids,
)


def scripted_actions(protocol: str) -> list[str]:
    """Question q1 of the toy env: two searches and the answer. The first search ends in '</search>\\n': a real BPE
    writes '>\\n' as one token, so the turn's last token runs past the stop string (generation stops there)."""
    if protocol == "tag":
        return ["<think> Who found Quenn? </think>\n<search> Quenn star discoverer </search>\n",
                "<search> Ada Lindqvist </search>", "<answer> Uppsala </answer>"]
    call = '<tool_call>{}</tool_call>'
    return [call.format(json.dumps({"name": "search", "arguments": {"query": "Quenn star discoverer"}})),
            "<think> Next: where was she born? </think>\n"
            + call.format(json.dumps({"name": "search", "arguments": {"query": "Ada Lindqvist"}})),
            "<answer> Uppsala </answer>"]


class ScriptedTurns:
    """A `TurnGenerator` that writes a fixed action per turn, as the canonical token ids a model emits for it, and
    records the contexts it was given."""

    def __init__(self, tokenizer, actions):
        self.tokenizer, self.actions, self.contexts = tokenizer, actions, []

    def __call__(self, contexts, max_new_tokens):
        self.contexts.append([list(c) for c in contexts])
        action = self.actions[len(self.contexts) - 1]
        return [(turn_ids(self.tokenizer, action), None) for _ in contexts]


def make_env(toy_items, toy_retriever, protocol):
    return SearchQAEnv(questions=toy_items, retriever=toy_retriever, max_turns=4, protocol=protocol)


def play_rollout(tokenizer, env, actions, **options):
    from igpo_trainer.rollout import run_episodes

    generate = ScriptedTurns(tokenizer, actions)
    (episode,) = run_episodes([env], [1], generate, tokenizer=tokenizer, max_turns=4,
                              max_turn_length=64, max_completion_length=4096, eos_token_id=tokenizer.eos_token_id,
                              **options)
    return episode, [c[0] for c in generate.contexts]


def play_agent(agent, env, actions):
    """Play the env with ``agent``; its model "writes" the scripted actions. Returns the fed contexts and texts."""
    fed, texts = [], []

    def fake_generate(input_ids, attention_mask, **kwargs):
        turn = turn_ids(agent.tokenizer, actions[len(fed)])
        fed.append(input_ids[0][attention_mask[0].bool()].tolist())
        return torch.cat([input_ids, torch.tensor([turn])], dim=1)

    agent.model.generate = fake_generate
    try:
        observation, info = env.reset(options={"question_index": 1})
        done = False
        while not done:
            texts.append(agent.act(observation, info))
            observation, _, terminated, truncated, info = env.step(texts[-1])
            done = terminated or truncated
    finally:
        del agent.model.generate  # the model's own method again (the agent is shared)
    return fed, texts, info


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_training_and_evaluation_feed_the_same_ids(real_tokenizer, real_vocab_agent, toy_items, toy_retriever,
                                                  protocol):
    from igpo_trainer.demo import PolicyAgent
    from igpo_trainer.warmstart import render_trajectory

    tok = real_tokenizer
    actions = scripted_actions(protocol)
    episode, rollout_contexts = play_rollout(tok, make_env(toy_items, toy_retriever, protocol), actions)
    assert episode.num_searches == 2 and episode.f1 == 1.0

    agent = real_vocab_agent
    assert agent.tokenizer("<search> x </search>\n")["input_ids"] == tok("<search> x </search>\n")["input_ids"]
    fed, texts, info = play_agent(agent, make_env(toy_items, toy_retriever, protocol), actions)
    assert texts == actions  # the agent returns the whole last token of a turn, as the rollout records it
    assert fed == rollout_contexts  # evaluation feeds, turn by turn, what training built
    assert info["f1"] == 1.0

    # The whole episode from the env's messages: warm start, belief scoring and the demo's agent agree too.
    transcript = render_messages(tok, info["messages"])
    assert transcript.ids + [tok.eos_token_id] == episode.context
    assert transcript.boundaries == episode.belief_boundaries
    assert transcript.agent_mask + [0] == [0] * len(episode.prompt_ids) + episode.env_mask
    rest = info["messages"][1:]  # agent turn, observation, ..., answer
    turns = [(rest[i]["content"], rest[i + 1]["content"] if i + 1 < len(rest) else None)
             for i in range(0, len(rest), 2)]
    assert render_trajectory(tok, info["messages"][0]["content"], turns)["input_ids"] == episode.context
    assert PolicyAgent(agent.model, tok, protocol=protocol).context({"messages": info["messages"][:-1]}) == fed[-1]


def test_pieces_are_tokenised_apart(real_tokenizer):
    """Each piece is tokenised on its own, as a rollout appends them; tokenising the running text as one string would
    merge across the splice ('>' and '\\n' are one token in Qwen2.5)."""
    tok = real_tokenizer
    messages = [{"role": "user", "content": "Question: where?"},
                {"role": "assistant", "content": "<search> x </search>"},
                {"role": "user", "content": "<information>\nDoc 1 (Title: X) y\n</information>"}]
    transcript = render_messages(tok, messages)
    prompt, turn = prompt_ids(tok, messages[0]["content"]), turn_ids(tok, messages[1]["content"])
    observation = observation_ids(tok, messages[2]["content"])
    assert transcript.ids == prompt + turn + observation
    assert transcript.boundaries == [len(prompt), len(transcript.ids)]
    assert transcript.prompt_length == len(prompt)
    assert transcript.agent_mask == [0] * len(prompt) + [1] * len(turn) + [0] * len(observation)
    text = transcript_text(tok, messages)
    assert tok.decode(transcript.ids) == text
    assert text.endswith(messages[1]["content"] + observation_text(messages[2]["content"]))
    if len(tok(">\n", add_special_tokens=False)["input_ids"]) == 1:  # Qwen2.5: '>Ċ' is one token
        assert tok(text, add_special_tokens=False)["input_ids"] != transcript.ids  # merged in the one-string version


def test_forced_turn_opening_is_its_own_piece(real_tokenizer):
    tok = real_tokenizer
    turns = [("<think>\nfind it</think><search> x </search>", "<information>\ny\n</information>")]
    transcript = render_turns(tok, "Question: where?", turns, turn_opening="<think>")
    prompt = prompt_ids(tok, "Question: where?")
    expected = turn_ids(tok, "<think>") + turn_ids(tok, "\nfind it</think><search> x </search>")
    assert transcript.ids[len(prompt):len(prompt) + len(expected)] == expected


def test_errors_name_the_problem(real_tokenizer):
    with pytest.raises(ValueError, match="messages is empty"):
        render_messages(real_tokenizer, [])
    with pytest.raises(ValueError, match="first message must be the prompt"):
        render_messages(real_tokenizer, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict"):
        split_prompt([{"role": "user", "content": "q"}, "not a message"])
    with pytest.raises(ValueError, match=r"turns\[0\] must be an \(agent text, observation\) pair"):
        render_turns(real_tokenizer, "q", [("only one",)])
    with pytest.raises(ValueError, match="no messages"):
        prompt_ids(real_tokenizer, [])


def forced_think_actions(protocol: str) -> list[str]:
    """What the policy generates after the rollout's forced ``<think>``: the rest of each turn."""
    search = ("<search> {} </search>" if protocol == "tag"
              else '<tool_call>{{"name": "search", "arguments": {{"query": "{}"}}}}</tool_call>')
    return ["\nWho found Quenn?\n</think>\n" + search.format("Quenn star discoverer"),
            " where was she born? </think>" + search.format("Ada Lindqvist") + "\n",
            "\nenough\n</think>\n<answer> Uppsala </answer>"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forced_think_rollouts_and_evaluation_feed_the_same_ids(real_tokenizer, real_vocab_agent, toy_items,
                                                                 toy_retriever, protocol):
    """With ``force_think`` the rollout writes ``<think>``'s ids before every turn; HFAgent(force_think=True) feeds
    the same ids, and the transcript of the env's messages rebuilds them with ``turn_opening``."""
    from igpo_envs.protocol import THINK_OPEN

    tok = real_tokenizer
    actions = forced_think_actions(protocol)
    episode, rollout_contexts = play_rollout(tok, make_env(toy_items, toy_retriever, protocol), actions,
                                             force_think=True)
    assert episode.num_searches == 2 and episode.f1 == 1.0
    agent = real_vocab_agent
    agent.turn_opening = THINK_OPEN
    try:
        fed, texts, info = play_agent(agent, make_env(toy_items, toy_retriever, protocol), actions)
    finally:
        agent.turn_opening = ""
    assert texts == [THINK_OPEN + a for a in actions]
    assert fed == rollout_contexts
    transcript = render_messages(tok, info["messages"], turn_opening=THINK_OPEN)
    assert transcript.ids + [tok.eos_token_id] == episode.context
    assert transcript.boundaries == episode.belief_boundaries
