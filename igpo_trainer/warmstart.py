"""SFT warm start on scripted search trajectories of the synthetic world, rendered exactly as IGPO rollouts are.

RL needs a start point that speaks the protocol and *sometimes* searches well: with a policy that never searches well,
every group scores the same and there is nothing to learn from; with one that always does, there is nothing left to
learn. So the demonstrations mix three plans (`PLANS`):

- ``oracle``: one search per hop with the oracle query (the start entity's alias, then the names read off each gold
  passage), then the gold answer;
- ``naive_recover``: first search the whole question text (the naive query), then follow the oracle plan;
- ``naive_read``: search the whole question text and then *read consistently* from what came back: each later hop
  searches the name the top passage states, and the answer is what the top passage states for the asked relation.
  This is right when the naive query happened to retrieve the right passage and wrong otherwise (a wrong-query error,
  never a wrong-reading one), so the reading skill taught stays clean;
- ``reading``: the oracle plan with the choice of its opening query out of the loss (the query's first word: the
  alias's, where the naive query has the question's). It teaches copying (the rest of the alias into the query, the
  names a passage states into the next query and the answer) and nothing about which query to open with, so copying
  can be taught on most demonstrations while the opening the start policy learns stays the mix of the other plans.

Every trajectory is played in the real env (so observations are the retriever's real passages) and tokenised with the
trainer's own rendering (`igpo_envs.transcript`): prompt through the chat template,
each policy turn as its own tokens, each observation spliced in as ``observation_text(obs)``. Loss is on the policy
turns only (TRL's ``completion_mask`` with ``completion_only_loss=True``): prompt and observation tokens are masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from igpo_envs.hf_tokenizer import load_tokenizer
from igpo_envs.transcript import render_turns, turn_encoding

PLANS = ("oracle", "naive_recover", "naive_read", "reading")
_SYNTH_ID = re.compile(r"^synth-(\d+)$")


def entity_of(world, passage_id: str) -> tuple[str, int] | None:
    """(entity type, index) of a synthetic passage id ``synth-<n>``; None for anything else."""
    match = _SYNTH_ID.match(passage_id)
    if match is None:
        return None
    n = int(match.group(1))
    for kind, table in world.tables.items():
        if table.offset <= n < table.offset + len(table):
            return kind, n - table.offset
    return None


def _world_of(env):
    """The `SyntheticWorld` behind a synthetic env (its items name the world they come from)."""
    from igpo_envs.tasks.synthetic import get_world

    item = env.unwrapped.items[0]
    match = re.match(r"SyntheticWorld\(num_docs=(\d+), distractors=(\d+), seed=(\d+)\)", item.metadata.get("world", ""))
    if match is None:
        raise ValueError(f"question {item.id!r} is not from a synthetic world (metadata['world'] missing); the warm "
                         "start scripts trajectories of igpo/SynthMultiHop-v0 only")
    return get_world(*(int(g) for g in match.groups()))


def script_trajectory(env, index: int, plan: str) -> tuple[str, list[tuple[str, str | None]], dict[str, Any]]:
    """Play question ``index`` of ``env`` with a scripted ``plan``; returns (prompt, [(action, observation)], info).

    The observation after the final (answer) action is None. ``info`` is the env's final info (em, gold_recall...).
    """
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; expected one of {PLANS}")
    base = env.unwrapped
    prompt, _ = base.reset(options={"question_index": int(index)})
    item = base.item
    relations = item.metadata["relations"]
    turns: list[tuple[str, str | None]] = []

    def search(query: str) -> str:
        action = f"<search> {query} </search>"
        observation, _, terminated, truncated, _ = base.step(action)
        if terminated or truncated:
            raise RuntimeError(f"question {item.id}: the env ended the episode at search {len(turns) + 1}; "
                               f"max_turns={base.max_turns} is too small for plan {plan!r}")
        turns.append((action, observation))
        return query

    if plan in ("naive_recover", "naive_read"):
        search(item.question)
    if plan == "naive_read":
        answer = _read_along(_world_of(env), base, item, relations, item.question, search)
    else:
        for query in item.metadata["oracle_queries"]:
            search(query)
        answer = item.golden_answers[0]
    action = f"<answer> {answer} </answer>"
    _, _, _, _, info = base.step(action)
    turns.append((action, None))
    return prompt, turns, info


def _read_along(world, base, item, relations: Sequence[str], query: str, search) -> str:
    """Follow the relations from the top passage of the last search, reading what each passage states."""
    from igpo_envs.tasks.synthetic_world import RELATIONS

    for hop, relation in enumerate(relations):
        passages = base.retriever.search([query], base.topk)[0]
        # The best-ranked passage about the kind of entity the relation starts from (what a reader would pick).
        entities = [e for e in (entity_of(world, p.id) for p in passages) if e and e[0] == RELATIONS[relation].source]
        if not entities:  # nothing of the right kind came back: a guess, the top passage's title
            return passages[0].title if passages else item.question
        kind, start = entities[0]
        read = world.make_question(kind, start, [relation])
        if hop == len(relations) - 1:
            return read.golden_answers[0]
        query = search(read.golden_answers[0])  # the name the passage states for this hop
    return item.golden_answers[0]


def render_trajectory(tokenizer, prompt: str, turns: Sequence[tuple[str, str | None]], *,
                      hide_opening_choice: bool = False) -> dict[str, list[int]]:
    """Token ids and loss mask of one trajectory, exactly as `igpo_trainer.rollout.run_episodes` builds a rollout
    (`igpo_envs.transcript.render_turns`): ``completion_mask`` is 1 on policy-turn tokens and the closing EOS, 0 on
    the prompt and on observations.

    ``hide_opening_choice``: the token(s) of the opening query's first word are out of the loss too. That word is the
    choice of query (the question's first word or the alias's); the rest of the query is copying, which stays taught.
    """
    transcript = render_turns(tokenizer, prompt, turns)
    mask = list(transcript.agent_mask)
    if hide_opening_choice:
        ids, choice = opening_choice(tokenizer, turns[0][0])
        first = mask.index(1)
        if transcript.ids[first:first + len(ids)] != ids:
            raise ValueError(f"the opening turn's tokens differ in the transcript: {turns[0][0]!r}")
        for k in choice:
            mask[first + k] = 0
    # The policy learns to stop after its answer.
    return {"input_ids": transcript.ids + [tokenizer.eos_token_id], "completion_mask": mask + [1]}


def opening_choice(tokenizer, action: str) -> tuple[list[int], list[int]]:
    """Token ids of an agent turn (as `igpo_envs.transcript` renders it) and the positions among them of the tokens
    covering its first word after the opening tag (``<search> Neri Dobe Naki ...`` -> ``Neri``): the query's choice."""
    word = re.search(r">\s*(\S+)", action)
    if word is None:
        raise ValueError(f"no word after an opening tag in {action!r}")
    ids, offsets = turn_encoding(tokenizer, action)
    begin, end = word.span(1)
    return ids, [k for k, (b, e) in enumerate(offsets) if b < end and e > begin]


def opening_word_probability(model, tokenizer, prompts: Sequence[str], actions: Sequence[str]) -> float:
    """Mean probability ``model`` gives the first word of ``actions[i]`` (after its opening tag) when it opens
    an episode of ``prompts[i]``, rendered as rollouts render them: how often it would sample that query's choice."""
    import torch

    from igpo_envs.transcript import prompt_ids

    probabilities = []
    for prompt, action in zip(prompts, actions, strict=True):
        context = prompt_ids(tokenizer, prompt)
        ids, choice = opening_choice(tokenizer, action)
        inputs = torch.tensor([context + ids[: choice[-1] + 1]], device=model.device)
        with torch.no_grad():
            log_probs = model(inputs).logits[0, :-1].float().log_softmax(-1)
        # Logits at position t predict token t + 1: the word's probability is the product over its tokens.
        positions = [len(context) + k - 1 for k in choice]
        probabilities.append(float(sum(log_probs[t, inputs[0, t + 1]] for t in positions).exp()))
    return float(np.mean(probabilities)) if probabilities else float("nan")


def demonstrations(env, tokenizer, num: int, *, naive_share: float = 0.5, recover_share: float = 0.3,
                   reading_share: float = 0.0, seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """``num`` tokenised demonstrations over the env's questions and their plan mix.

    A share ``reading_share`` are ``reading`` demonstrations (the opening out of the loss). Of the others, a share
    ``naive_share`` starts with the naive query; of those, ``recover_share`` recover with the oracle plan and the rest
    read along (see the module docstring). So ``naive_share`` is the share of naive openings among the openings the
    policy is taught. Returns (rows, stats) with the plan shares and the EM of the demonstrations (how often the
    scripted plans are right).
    """
    for name, share in (("naive_share", naive_share), ("recover_share", recover_share),
                        ("reading_share", reading_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    n_items = len(env.unwrapped.items)
    rows, ems, plans = [], [], []
    for k in range(num):
        index = k % n_items
        if rng.random() < reading_share:
            plan = "reading"
        elif rng.random() < naive_share:
            plan = "naive_recover" if rng.random() < recover_share else "naive_read"
        else:
            plan = "oracle"
        prompt, turns, info = script_trajectory(env, index, plan)
        rows.append(render_trajectory(tokenizer, prompt, turns, hide_opening_choice=plan == "reading"))
        ems.append(float(info.get("em", 0.0)))
        plans.append(plan)
    stats = {f"share_{p}": plans.count(p) / max(1, num) for p in PLANS}
    stats["demo_em"] = float(np.mean(ems)) if ems else float("nan")
    stats["naive_read_em"] = float(np.mean([e for e, p in zip(ems, plans) if p == "naive_read"] or [float("nan")]))
    return rows, stats


@dataclass
class ConvergenceCriterion:
    """When the warm start is done: measured on held-out greedy episodes, not a fixed number of epochs.

    Every ``check_every`` optimizer steps the policy plays ``episodes`` held-out questions greedily; training stops as
    soon as both targets hold, or at ``max_epochs`` (the cap) whatever they are.
    """

    min_validity: float = field(default=0.98, metadata={"help": "share of held-out episodes that follow the "
                                                                "protocol to an answer (no format error)"})
    min_copy_accuracy: float = field(default=0.9, metadata={"help": "EM among held-out episodes whose searches "
                                                                    "retrieved every gold passage: copying the "
                                                                    "answer off the passage"})
    min_query_copy: float = field(default=0.9, metadata={"help": "share of held-out episodes that found the first "
                                                                 "gold passage and then the next one: copying the "
                                                                 "name read off a passage into the next query"})
    min_opening_share: float = field(default=0.0, metadata={"help": "mean probability the policy gives the "
                                                                    "oracle's first query word when it opens a "
                                                                    "held-out episode: that the start explores the "
                                                                    "right query sometimes (0: not checked)"})
    check_every: int = field(default=125, metadata={"help": "optimizer steps between checks"})
    episodes: int = field(default=64, metadata={"help": "held-out episodes per check"})
    max_epochs: float = field(default=12.0, metadata={"help": "cap on SFT epochs"})
    patience: int = field(default=1, metadata={"help": "consecutive checks that must meet the targets"})


def reading_figures(records: Sequence[dict[str, Any]], num_gold: int) -> dict[str, float]:
    """Protocol validity, answer-copy and query-copy accuracy of held-out episode records
    (`igpo_envs.evaluation.evaluate`'s ``per_episode``) of questions with ``num_gold`` gold passages each."""
    full = [r for r in records if r["gold_recall"] is not None and r["gold_recall"] >= 1.0]
    found_first = [r for r in records if r["gold_recall"] is not None and r["gold_recall"] * num_gold >= 1 - 1e-9]
    nan = float("nan")
    return {
        "validity": float(np.mean([r["error"] is None and not r["truncated"] for r in records])) if records else nan,
        "copy_accuracy": float(np.mean([r["em"] for r in full])) if full else nan,
        "query_copy": len(full) / len(found_first) if found_first else nan,
        "em": float(np.mean([r["em"] for r in records])) if records else nan,
        "gold_recall": float(np.mean([r["gold_recall"] or 0.0 for r in records])) if records else nan,
        "n_full_recall": len(full),
    }


def criterion_met(figures: dict[str, float], criterion: ConvergenceCriterion) -> bool:
    def at_least(key, target):
        value = figures.get(key)
        return value is not None and not np.isnan(value) and value >= target

    return (at_least("validity", criterion.min_validity) and at_least("copy_accuracy", criterion.min_copy_accuracy)
            and at_least("query_copy", criterion.min_query_copy)
            and (criterion.min_opening_share <= 0 or at_least("opening_share", criterion.min_opening_share)))


def annealed_learning_rate(start: float, done: int, steps: int) -> float:
    """Linear decay from ``start`` to zero over ``steps``: the rate of the step after ``done`` annealing steps."""
    return start * max(0.0, 1.0 - done / steps)


def warm_start(model_dir: str | Path, env, out_dir: str | Path, *, num_examples: int = 2000, epochs: float = 2.0,
               learning_rate: float = 1e-3, batch_size: int = 32, naive_share: float = 0.5,
               recover_share: float = 0.3, reading_share: float = 0.0, seed: int = 0, progress: bool = True,
               evaluate: Callable[[Any], Sequence[dict[str, Any]]] | None = None,
               criterion: ConvergenceCriterion | None = None, lr_scheduler_type: str = "cosine",
               examples: Sequence[dict] | None = None, warmup_steps: int = 10,
               reading_texts: Sequence[str] = (),
               opening_share: Callable[[Any], float] | None = None, anneal_steps: int = 0) -> dict[str, Any]:
    """SFT ``model_dir`` on scripted demonstrations of ``env`` with TRL's `SFTTrainer`; save to ``out_dir``.

    ``examples``: precomputed rows (``input_ids``, ``completion_mask``, tokenised with ``model_dir``'s tokenizer,
    e.g. `igpo_trainer.demonstrations.oracle_demonstrations`) to train on instead of the synthetic world's scripted
    plans. ``warmup_steps``: linear learning-rate warm-up.

    Without ``evaluate``, trains ``epochs`` epochs. With ``evaluate`` (model -> held-out greedy episode records, as
    `igpo_envs.evaluation.evaluate` returns them in ``per_episode``) it trains until ``criterion`` holds (see
    `ConvergenceCriterion`; its ``max_epochs`` is the cap and ``epochs`` is ignored) and reports every check.

    Returns a summary: demonstration stats, final training loss, seconds, and with ``evaluate`` the criterion, whether
    it was reached, at which step and epoch, and the figures of every check.

    ``opening_share`` (model -> the mean probability of the oracle's first query word at the opening, held-out
    questions) joins every check when given; ``criterion.min_opening_share`` is held against it.

    ``reading_texts`` (e.g. the corpus's passages) join the data as plain language modelling, every token in the loss:
    every name then has a trained embedding before the policy must copy it off a passage, including names that no
    demonstration's answer or query uses.

    ``anneal_steps`` (with ``evaluate``): once the criterion holds, train that many more steps with the learning rate
    falling linearly from its current value to zero, then check once more and stop. At a constant high rate the last
    iterate wanders from one check to the next; annealing lets it settle into a more reliable reader (the README's
    CPU reproduction measures by how much).
    """
    import time

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    tokenizer = load_tokenizer(model_dir)
    if examples is not None:
        rows, stats = list(examples), {}
    else:
        rows, stats = demonstrations(env, tokenizer, num_examples, naive_share=naive_share,
                                     recover_share=recover_share, reading_share=reading_share, seed=seed)
    num_demos = len(rows)
    for text in reading_texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": ids, "completion_mask": [1] * len(ids)})
    dataset = Dataset.from_list(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    if evaluate is not None:
        criterion = criterion or ConvergenceCriterion()
        epochs = criterion.max_epochs
    args = SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        max_length=longest,  # never truncate a demonstration
        completion_only_loss=True,  # use our completion_mask: policy turns only, observations masked
        packing=False,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    num_gold = len(env.unwrapped.items[0].gold_passage_ids)
    checks: list[dict[str, Any]] = []

    class UntilConverged(TrainerCallback):
        """Held-out greedy check every ``criterion.check_every`` steps; once the targets held ``patience`` times in a
        row, stop, or first anneal for ``anneal_steps`` steps."""

        anneal: dict[str, Any] | None = None  # set when annealing starts: its first step and learning rate

        def check(self, state, model) -> None:
            was_training = model.training
            model.eval()
            figures = reading_figures(evaluate(model), num_gold)
            if opening_share is not None:
                figures["opening_share"] = float(opening_share(model))
            model.train(was_training)
            figures.update(step=state.global_step, epoch=float(state.epoch or 0.0),
                           met=criterion_met(figures, criterion))
            checks.append(figures)
            if progress:
                print(f"[warm start] step {state.global_step} epoch {figures['epoch']:.2f}: validity "
                      f"{figures['validity']:.3f} answer copy {figures['copy_accuracy']:.3f} query copy "
                      f"{figures['query_copy']:.3f} opening share {figures.get('opening_share', float('nan')):.3f} "
                      f"EM {figures['em']:.3f} gold recall {figures['gold_recall']:.3f}", flush=True)

        def on_pre_optimizer_step(self, _args, state, control, optimizer=None, **kwargs):
            if self.anneal is not None:
                done = state.global_step - self.anneal["from_step"]
                for group in optimizer.param_groups:
                    group["lr"] = annealed_learning_rate(self.anneal["learning_rate"], done, anneal_steps)

        def on_step_end(self, _args, state, control, model=None, optimizer=None, **kwargs):
            if self.anneal is not None:  # no decision is left to make until the anneal ends: one check there
                if state.global_step - self.anneal["from_step"] >= anneal_steps:
                    self.check(state, model)
                    control.should_training_stop = True
                return
            if state.global_step % criterion.check_every == 0:
                self.check(state, model)
                recent = checks[-criterion.patience:]
                if len(recent) == criterion.patience and all(c["met"] for c in recent):
                    if anneal_steps > 0:
                        self.anneal = {"from_step": state.global_step,
                                       "learning_rate": float(optimizer.param_groups[0]["lr"])}
                    else:
                        control.should_training_stop = True

        def on_train_end(self, _args, state, control, model=None, **kwargs):
            if not checks or checks[-1]["step"] != state.global_step:  # the cap ended training between checks
                self.check(state, model)

    until_converged = UntilConverged()
    callbacks = [until_converged] if evaluate is not None else []
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    summary = {**stats, "examples": num_demos, "reading_texts": len(reading_texts),
               "train_loss": float(result.training_loss),
               "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0.0),
               "seconds": time.perf_counter() - start}
    if evaluate is not None:
        summary["criterion"] = asdict(criterion)
        # Converged: the criterion held where training stopped, or where annealing began.
        met_at = until_converged.anneal["from_step"] if until_converged.anneal else trainer.state.global_step
        summary["converged"] = any(c["met"] and c["step"] == met_at for c in checks)
        summary["anneal"] = until_converged.anneal and {**until_converged.anneal, "steps": anneal_steps}
        summary["checks"] = checks
    return summary
