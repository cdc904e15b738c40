"""Beliefs v_0..v_K of a rollout in one forward pass: the rollout once, then one answer probe per prefix.

IGPO's belief after k observations is ``v_k = mean_j log p(a_j | history_k, probe_prefix, a_<j)`` over the gold answer
tokens. The official code runs one full forward pass over ``history_k + probe`` for every k
(`per_prefix_answer_logprobs` here, kept as the reference). Here the rollout is fed once and followed by K+1 copies
of the probe; a 4-D attention mask lets copy k see only the first ``b_k`` rollout tokens and itself (causally), and
its position ids continue from ``b_k``, so every copy computes exactly what a separate pass over
``rollout[:b_k] + probe`` computes. Layouts:

* ``method="packed"``: one call; rollout and probe copies share one 4-D mask of size (T, T).
* ``method="cached"``: two calls; the rollout alone (plain causal attention), then the
  probe copies against its KV cache with a (P, L + P) mask. Same numbers, smaller mask, no wasted
  rollout-to-probe block.
* ``method="auto"`` (default): "packed" up to `AUTO_PACKED_MAX_TOKENS` tokens per row, "cached" beyond (and always
  "packed" for sliding-window models, whose cache drops old keys).

Any attention implementation: the packed masks need one that takes a custom 4-D mask (``eager`` or ``sdpa``). A model
loaded with another (``flash_attention_2``, ``flex_attention``, a hub kernel...) is switched to ``sdpa`` (else
``eager``) for the no-grad scoring pass and switched back after it (`masked_attention`); a model that cannot switch
is scored one plain causal pass per prefix (`per_prefix_answer_logprobs`), which any implementation runs.

Only the probe positions that predict a scored token go through the LM head (``logits_to_keep`` with explicit
positions), and probe tokens after the last scored one are never fed: they cannot change an earlier prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

METHODS = ("auto", "packed", "cached")
#: With method="auto", passes wider than this many tokens use "cached". Measured (benchmarks/ig_scoring.py, CPU):
#: below ~1k tokens one call wins (a second call re-reads every weight); above it, the dense (T, T) masked attention
#: of "packed" costs more than the causal rollout attention of "cached".
AUTO_PACKED_MAX_TOKENS = 1024


@dataclass
class _Row:
    """One rollout prepared for scoring: the rollout tokens it needs, the probe inputs, and what to score."""

    seq: torch.Tensor  # rollout tokens up to the longest prefix
    bounds: list[int]  # prefix lengths b_0..b_K
    probe_in: torch.Tensor  # probe tokens fed after each prefix (up to, not including, the last scored token)
    targets: torch.Tensor  # scored probe tokens
    target_offsets: torch.Tensor  # their indices in the probe

    @property
    def probe_len(self) -> int:
        return len(self.probe_in)

    @property
    def packed_len(self) -> int:
        return len(self.seq) + len(self.bounds) * self.probe_len


def _as_ids(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty")
    if t.dtype == torch.bool or t.is_floating_point():
        raise ValueError(f"{what} must hold integer token ids, got dtype {t.dtype}")
    return t.long()


def _prepare_row(input_ids, boundaries, probe_ids, score_mask, where: str = "") -> _Row:
    seq = _as_ids(input_ids, f"{where}input_ids")
    probe = _as_ids(probe_ids, f"{where}probe_ids")
    mask = torch.as_tensor(score_mask)
    if mask.ndim != 1 or len(mask) != len(probe):
        raise ValueError(
            f"{where}score_mask must be 1-D with one entry per probe token ({len(probe)}), "
            f"got shape {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if not mask.any():
        raise ValueError(f"{where}score_mask selects no probe token: nothing to score (is the answer empty?)")
    bounds = [int(b) for b in boundaries]
    if not bounds:
        raise ValueError(f"{where}boundaries is empty: give at least one prefix length")
    for i, b in enumerate(bounds):
        if not 1 <= b <= len(seq):
            raise ValueError(
                f"{where}boundaries[{i}] = {b} is out of range: "
                f"a prefix length must be in [1, len(input_ids)={len(seq)}]"
            )
    offsets = mask.nonzero().flatten()
    last = int(offsets[-1])
    return _Row(seq[: max(bounds)], bounds, probe[:last], probe[offsets], offsets)


def _layer_windows(config) -> list[int | None]:
    """The distinct attention windows of the model's layers: None for full attention, an int for sliding window."""
    windows = []
    for kind in sorted(set(getattr(config, "layer_types", None) or ["full_attention"])):
        if kind == "full_attention":
            windows.append(None)
        elif kind == "sliding_attention":
            windows.append(int(config.sliding_window))
        else:
            raise NotImplementedError(f"answer_logprobs does not support {kind!r} layers (model {config.model_type!r})")
    return windows


_MASKED_ATTENTION = ("eager", "sdpa")


def _attention_of(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def _all_configs(model) -> list:
    """Every config object of the model and its submodels (and their sub-configs), each once."""
    seen, stack = {}, [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation_internal"):
            continue
        seen[id(config)] = config
        stack += [getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {}]
    return list(seen.values())


@contextmanager
def masked_attention(model) -> Iterator[bool]:
    """Within the block the model runs an attention implementation that takes the packed 4-D masks; yields whether
    it does. A model on another implementation is switched (``set_attn_implementation``: ``sdpa``, else ``eager``)
    and restored on exit, whatever happens in the block; one that cannot switch yields False."""
    if _attention_of(model) in _MASKED_ATTENTION:
        yield True
        return
    configs = _all_configs(model)
    saved = [(config, config._attn_implementation_internal) for config in configs]
    try:
        switched = False
        for implementation in _MASKED_ATTENTION[::-1]:  # sdpa first: the faster of the two
            try:
                model.set_attn_implementation(implementation)
            except (AttributeError, ValueError, ImportError, NotImplementedError, TypeError):
                continue
            if _attention_of(model) in _MASKED_ATTENTION:
                switched = True
                break
        yield switched
    finally:
        for config, implementation in saved:  # set back directly: re-checking e.g. flash-attn needs its GPU
            config._attn_implementation_internal = implementation


def _check_attention(config) -> None:
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in _MASKED_ATTENTION:
        raise ValueError(
            f"answer_logprobs needs an attention implementation that takes a custom 4-D mask {_MASKED_ATTENTION}; "
            f"the model uses {impl!r} (load it with attn_implementation='sdpa')"
        )


def _as_model_mask(allowed: torch.Tensor, q_pos, kv_pos, config, dtype) -> torch.Tensor | dict:
    """Turn a boolean (B, Q, KV) visibility into the additive (B, 1, Q, KV) float mask(s) the model takes.

    Float, not boolean: eager attention adds the mask to the scores, so a boolean mask would be added as 0/1.
    Models with sliding-window layers get one mask per layer type (the model accepts that dict as-is).
    """
    _check_attention(config)
    masks = {}
    for window in _layer_windows(config):
        visible = allowed if window is None else allowed & (q_pos[:, :, None] - kv_pos[:, None, :] < window)
        additive = torch.where(visible, torch.zeros((), dtype=dtype, device=visible.device), torch.finfo(dtype).min)
        masks["full_attention" if window is None else "sliding_attention"] = additive[:, None]
    return masks["full_attention"] if list(masks) == ["full_attention"] else masks


def _layout(rows: list[_Row], seq_width: int, probe_width: int, include_seq: bool, device):
    """Token ids, position ids and a visibility matrix for rows laid out as [rollout | probe copies], right-padded.

    ``seq_width`` / ``probe_width`` are the padded widths of the two parts. With ``include_seq=False`` only the probe
    part is queried (the rollout is in the KV cache), but keys still span both parts. Visibility is filled block by
    block (rollout: causal; probe copy k: the first b_k rollout tokens plus itself, causally; padding: only itself, so
    no softmax row is empty), which is far cheaper than comparing index grids of size (T, T).
    """
    B, W = len(rows), seq_width + probe_width
    q0 = 0 if include_seq else seq_width
    ids = torch.zeros(B, W, dtype=torch.long)
    pos = torch.zeros(B, W, dtype=torch.long)
    allowed = torch.zeros(B, W - q0, W, dtype=torch.bool)
    allowed[:, torch.arange(W - q0), torch.arange(q0, W)] = True  # every query sees itself (all padding needs)
    for r, row in enumerate(rows):
        n, m = len(row.seq), row.probe_len
        ids[r, :n] = row.seq
        pos[r, :n] = torch.arange(n)
        if include_seq:
            allowed[r, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril_()
        causal_m = torch.ones(m, m, dtype=torch.bool).tril_()
        for k, b in enumerate(row.bounds):
            s = seq_width + k * m
            ids[r, s : s + m] = row.probe_in
            pos[r, s : s + m] = torch.arange(b, b + m)
            allowed[r, s - q0 : s - q0 + m, :b] = True
            allowed[r, s - q0 : s - q0 + m, s : s + m] = causal_m
    return ids[:, q0:].to(device), pos[:, q0:].to(device), allowed.to(device), pos.to(device)


def _predictor_positions(rows: list[_Row], seq_width: int, probe_offset: int):
    """For each row, the index of the hidden state that predicts each scored probe token, in copy order.

    A probe token at offset t > 0 is predicted by probe input t-1 of its copy; offset 0 by the last prefix token
    ``b_k - 1``, which lies in the rollout part (``probe_offset`` is where the probe part starts in the model output).
    Returns a (B, N) index tensor padded with 0, and the per-row counts.
    """
    per_row = []
    for row in rows:
        m, idx = row.probe_len, []
        for k, b in enumerate(row.bounds):
            for t in row.target_offsets.tolist():
                idx.append(b - 1 if t == 0 else probe_offset + k * m + t - 1)
        per_row.append(idx)
    width = max(len(i) for i in per_row)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for r, idx in enumerate(per_row):
        out[r, : len(idx)] = torch.tensor(idx)
    return out, [len(i) for i in per_row]


def _mean_logprobs(logits: torch.Tensor, rows: list[_Row], counts: list[int]) -> list[torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for r, row in enumerate(rows):
        targets = row.targets.to(logits.device).repeat(len(row.bounds))
        picked = logp[r, : counts[r]].gather(-1, targets[:, None]).squeeze(-1)
        out.append(picked.view(len(row.bounds), len(row.targets)).mean(-1))
    return out


def _model_dtype(model) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _score_packed(model, rows: list[_Row]) -> list[torch.Tensor]:
    device, dtype = _model_device(model), _model_dtype(model)
    seq_width = max(len(r.seq) for r in rows)
    probe_width = max(len(r.bounds) * r.probe_len for r in rows)
    ids, pos, allowed, _ = _layout(rows, seq_width, probe_width, True, device)
    mask = _as_model_mask(allowed, pos, pos, model.config, dtype)
    keep, counts = _predictor_positions(rows, seq_width, seq_width)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=keep.to(device))
    return _mean_logprobs(out.logits, rows, counts)


@dataclass
class _RolloutPass:
    """The first call of ``method="cached"``: the rollouts' KV cache and the logits of predictions made inside them."""

    cache: object
    logits: torch.Tensor
    keep: torch.Tensor
    counts: list[int]
    seq_width: int


def _rollout_pass(model, rows: list[_Row]) -> _RolloutPass:
    """The rollouts alone, plain causal attention with right padding (a 2-D mask), keeping the KV cache."""
    from transformers import DynamicCache

    if any(w is not None for w in _layer_windows(model.config)):
        raise ValueError(
            "method='cached' does not support sliding-window layers (their cache drops old keys); use 'packed'"
        )
    device = _model_device(model)
    seq_width = max(len(r.seq) for r in rows)
    keep, counts = _predictor_positions(rows, seq_width, seq_width)
    seq_ids = torch.zeros(len(rows), seq_width, dtype=torch.long)
    pad = torch.zeros(len(rows), seq_width, dtype=torch.long)
    for r, row in enumerate(rows):
        seq_ids[r, : len(row.seq)], pad[r, : len(row.seq)] = row.seq, 1
    cache = DynamicCache(config=model.config)
    first = model(
        input_ids=seq_ids.to(device),
        attention_mask=pad.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=torch.where(keep < seq_width, keep, 0).to(device),
    )
    return _RolloutPass(cache, first.logits, keep, counts, seq_width)


def _probe_pass(model, rows: list[_Row], rollout: _RolloutPass) -> list[torch.Tensor]:
    """All probe copies at once against the rollouts' KV cache; keys are [rollout | probe copies]."""
    device, dtype, seq_width = _model_device(model), _model_dtype(model), rollout.seq_width
    in_rollout = rollout.keep < seq_width
    probe_width = max(len(r.bounds) * r.probe_len for r in rows)
    if probe_width == 0:  # only the first probe token is scored: every prediction comes from the rollout
        return _mean_logprobs(rollout.logits, rows, rollout.counts)
    ids, pos, allowed, kv_pos = _layout(rows, seq_width, probe_width, False, device)
    mask = _as_model_mask(allowed, pos, kv_pos, model.config, dtype)
    second = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        cache=rollout.cache,
        use_cache=True,
        logits_to_keep=torch.where(in_rollout, 0, rollout.keep - seq_width).to(device),
    )
    logits = torch.where(in_rollout.to(device)[..., None], rollout.logits, second.logits)
    return _mean_logprobs(logits, rows, rollout.counts)


class CachedRollout:
    """One rollout fed once with its KV cache kept (the first of ``method="cached"``'s two calls), whose probes
    `cached_probe_logprobs` scores against that cache as often as asked: what IG costs on top of a forward pass over
    the rollout that keeps its cache (``benchmarks/ig_scoring.py`` times the two apart). Arguments as
    `answer_logprobs`."""

    @torch.no_grad()
    def __init__(self, model, input_ids, boundaries, probe_ids, score_mask):
        self.rows = [_prepare_row(input_ids, boundaries, probe_ids, score_mask)]
        self.rollout = _rollout_pass(model, self.rows)


@torch.no_grad()
def cached_probe_logprobs(model, cached: CachedRollout) -> torch.Tensor:
    """The probe call of ``method="cached"`` on a `CachedRollout`: the same values as `answer_logprobs`. The cache
    is cropped back to the rollout first, so repeated calls score against the rollout alone."""
    extra = cached.rollout.cache.get_seq_length() - cached.rollout.seq_width
    if extra:
        cached.rollout.cache.crop(-extra)
    return _probe_pass(model, cached.rows, cached.rollout)[0]


def _score_cached(model, rows: list[_Row]) -> list[torch.Tensor]:
    return _probe_pass(model, rows, _rollout_pass(model, rows))


def _score_auto(model, rows: list[_Row]) -> list[torch.Tensor]:
    wide = max(r.packed_len for r in rows) > AUTO_PACKED_MAX_TOKENS
    sliding = any(w is not None for w in _layer_windows(model.config))
    return _score_cached(model, rows) if wide and not sliding else _score_packed(model, rows)


_SCORERS = {"auto": _score_auto, "packed": _score_packed, "cached": _score_cached}


def _broadcast(value, n: int, what: str) -> list:
    """A per-rollout list, or one value shared by every rollout (a tensor or a flat list of ints/bools)."""
    if isinstance(value, torch.Tensor) or (isinstance(value, Sequence) and value and not hasattr(value[0], "__len__")):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what} has {len(value)} entries for {n} sequences")
    return value


@torch.no_grad()
def batch_answer_logprobs(
    model,
    sequences: Sequence,
    boundaries: Sequence[Sequence[int]],
    probe_ids,
    score_masks,
    *,
    method: str = "auto",
    max_rows: int | None = None,
    max_mask_elements: int = 2**26,
    max_padding: float = 0.25,
) -> list[torch.Tensor]:
    """`answer_logprobs` for a group of rollouts of different lengths, scored together.

    Args:
        model: a transformers causal LM (any mode; it is not switched to eval, and no gradient is kept).
        sequences: one 1-D token-id sequence per rollout.
        boundaries: per rollout, the prefix lengths after which the probe is scored (v_0..v_K).
        probe_ids: one probe per rollout, or a single probe shared by all.
        score_masks: per probe, a boolean mask of the scored (answer) tokens; or a single mask shared by all.
        method: ``"packed"`` (one call, rollout and probes under one mask), ``"cached"`` (rollouts first, then the
            probes against their KV cache) or ``"auto"`` (the faster of the two by row width); all give the same
            numbers.
        max_rows: score at most this many rollouts per forward pass; None = as many as ``max_mask_elements`` allows.
        max_mask_elements: bound on rows x T x T of one pass's attention mask (2**26: 256 MiB in float32); longer
            groups are split into several passes. A single row is never split.
        max_padding: a rollout joins a pass only while padded tokens stay below this fraction of real ones
            (rollouts are sorted by length first); raise it on hardware where batch width is free.

    Returns:
        A list with, per rollout, a float32 tensor of shape ``(len(boundaries[i]),)`` on the model's device.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    n = len(sequences)
    if n == 0:
        return []
    if len(boundaries) != n:
        raise ValueError(f"boundaries has {len(boundaries)} entries for {n} sequences")
    probes, masks = _broadcast(probe_ids, n, "probe_ids"), _broadcast(score_masks, n, "score_masks")
    where = (lambda i: f"sequence {i}: ") if n > 1 else (lambda i: "")
    rows = [_prepare_row(sequences[i], boundaries[i], probes[i], masks[i], where(i)) for i in range(n)]
    score = _SCORERS[method]
    results: list[torch.Tensor | None] = [None] * n
    with masked_attention(model) as packed_ok:
        if not packed_ok:  # no implementation that takes the 4-D mask: one plain causal pass per prefix
            return [_score_per_prefix(model, sequences[i], rows[i]) for i in range(n)]
        for chunk in _chunks(rows, max_rows or n, max_mask_elements, max_padding):
            for i, value in zip(chunk, score(model, [rows[i] for i in chunk])):
                results[i] = value
    return results


def _chunks(rows: list[_Row], max_rows: int, max_mask_elements: int, max_padding: float) -> list[list[int]]:
    """Group rows into passes: rows of similar length together, each pass's (B, T, T) mask and padding bounded.

    Padding is real work (every padded token goes through every layer), so a row joins the current pass only while
    the padded tokens stay under ``max_padding`` of the real ones; otherwise it starts a new pass.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i].packed_len)
    chunks: list[list[int]] = []
    real = 0
    for i in order:  # ascending length: the row being added is the widest of its chunk
        width = rows[i].packed_len
        if chunks:
            size = len(chunks[-1]) + 1
            if (
                size <= max_rows
                and size * width * width <= max_mask_elements
                and size * width <= (1 + max_padding) * (real + width)
            ):
                chunks[-1].append(i)
                real += width
                continue
        chunks.append([i])
        real = width
    return chunks


def answer_logprobs(model, input_ids, boundaries, probe_ids, score_mask, *, method: str = "auto") -> torch.Tensor:
    """Mean log-prob of the scored probe tokens after each prefix of ``input_ids``, in one forward pass.

    Args:
        model: a transformers causal LM; used in its current mode, without gradient.
        input_ids: 1-D token ids of the rollout.
        boundaries: prefix lengths ``b_0..b_K`` (each in ``[1, len(input_ids)]``).
        probe_ids: 1-D ids of the probe appended after each prefix (e.g. ``<answer> {gold} </answer>``).
        score_mask: boolean mask over ``probe_ids``, True for the answer tokens that are scored.
        method: ``"auto"``, ``"packed"`` or ``"cached"`` (see the module docstring).

    Returns:
        float32 tensor of shape ``(len(boundaries),)``: equal to separate forward passes over
        ``input_ids[:b] + probe_ids`` for each ``b`` (see `per_prefix_answer_logprobs`).
    """
    return batch_answer_logprobs(model, [input_ids], [boundaries], [probe_ids], [score_mask], method=method)[0]


@torch.no_grad()
def per_prefix_answer_logprobs(model, input_ids, boundaries, probe_ids, score_mask) -> torch.Tensor:
    """The official method, kept as the reference: one full forward pass (all logits) over prefix + probe per prefix.
    Plain causal attention, so it runs with any attention implementation."""
    return _score_per_prefix(model, input_ids, _prepare_row(input_ids, boundaries, probe_ids, score_mask))


def _score_per_prefix(model, input_ids, row: _Row) -> torch.Tensor:
    seq = _as_ids(input_ids, "input_ids")
    probe = torch.cat([row.probe_in, row.targets[-1:]])  # the probe up to its last scored token
    device, values = _model_device(model), []
    for b in row.bounds:
        ids = torch.cat([seq[:b], probe]).to(device)
        logp = torch.log_softmax(model(input_ids=ids[None], use_cache=False).logits[0].float(), dim=-1)
        predictors = b - 1 + row.target_offsets.to(device)
        values.append(logp[predictors].gather(-1, row.targets.to(device)[:, None]).mean())
    return torch.stack(values)
