"""`SearchQAVectorEnv`: a native vector env whose step answers all sub-env searches with one retriever call.

Registered (by string path, so ``EnvSpec.to_json()`` works) as the ``vector_entry_point`` of every ``igpo/`` id, so
``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")`` builds it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from igpo_envs.arguments import integer
from igpo_envs.env import InfoSnapshot, SearchQAEnv, step_batch


class BatchedInfo(dict):
    """The batched info dict of one vector step, built on first use.

    Building Gymnasium's batched layout costs several microseconds per sub-env per step, and most callers that play
    many episodes (`igpo_envs.evaluation.evaluate`, the trainer) read `SearchQAVectorEnv.last_infos` instead. So the
    columns are built the first time the dict is read, from the per-sub-env infos of its own step; after that it is
    a plain dict in every respect."""

    def __init__(self, build: Callable[[], dict[str, Any]]):
        super().__init__()
        self._build: Callable[[], dict[str, Any]] | None = build

    def _filled(self) -> BatchedInfo:
        if self._build is not None:
            build, self._build = self._build, None
            dict.update(self, build())
        return self

    def __getitem__(self, key):
        return dict.__getitem__(self._filled(), key)

    def __setitem__(self, key, value):
        dict.__setitem__(self._filled(), key, value)

    def __delitem__(self, key):
        dict.__delitem__(self._filled(), key)

    def __contains__(self, key):
        return dict.__contains__(self._filled(), key)

    def __iter__(self):
        return dict.__iter__(self._filled())

    def __len__(self):
        return dict.__len__(self._filled())

    def __eq__(self, other):
        return dict.__eq__(self._filled(), other)

    def __ne__(self, other):
        return dict.__ne__(self._filled(), other)

    def __repr__(self):
        return dict.__repr__(self._filled())

    def __or__(self, other):
        return dict(self) | other

    def __ror__(self, other):
        return other | dict(self)

    def __ior__(self, other):
        dict.update(self._filled(), other)
        return self

    def __reduce__(self):
        return dict, (dict(self.items()),)

    def __copy__(self):
        return dict(self.items())

    def __deepcopy__(self, memo):
        return copy.deepcopy(dict(self.items()), memo)

    def keys(self):
        return dict.keys(self._filled())

    def values(self):
        return dict.values(self._filled())

    def items(self):
        return dict.items(self._filled())

    def get(self, key, default=None):
        return dict.get(self._filled(), key, default)

    def copy(self):
        return dict(self.items())

    def pop(self, *args):
        return dict.pop(self._filled(), *args)

    def popitem(self):
        return dict.popitem(self._filled())

    def setdefault(self, key, default=None):
        return dict.setdefault(self._filled(), key, default)

    def update(self, *args, **kwargs):
        dict.update(self._filled(), *args, **kwargs)

    def clear(self):
        self._build = None
        dict.clear(self)

    __hash__ = None


class SubEnvInfos(Sequence):
    """Each sub-env's latest info dict (`SearchQAVectorEnv.last_infos`), a plain dict built the first time it is
    read: a step keeps each sub-env's `InfoSnapshot`, and an info nobody reads is never built."""

    def __init__(self, num_envs: int):
        self._infos: list[dict[str, Any] | InfoSnapshot] = [{} for _ in range(num_envs)]

    def __len__(self) -> int:
        return len(self._infos)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        info = self._infos[index]
        return info.build() if isinstance(info, InfoSnapshot) else info

    def __setitem__(self, index, info) -> None:
        self._infos[index] = info

    def held(self, index: int) -> dict[str, Any] | InfoSnapshot:
        """Sub-env ``index``'s info as held: a dict, or the `InfoSnapshot` it will be built from."""
        return self._infos[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"SubEnvInfos({list(self)!r})"


def _per_env(value: Any, num_envs: int, name: str) -> list[Any]:
    """An option given once for all sub-envs, or as a sequence with one entry per sub-env."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != num_envs:
            raise ValueError(f"options[{name!r}] has {len(value)} entries, expected num_envs={num_envs}")
        return list(value)
    return [value] * num_envs


class SearchQAVectorEnv(VectorEnv):
    """
    ``num_envs`` `SearchQAEnv` sub-envs stepped together: every step parses all actions, then issues one batched
    ``retriever.search`` for all searching sub-envs (`igpo_envs.env.step_batch`). This is how everything that plays
    many episodes steps them: `igpo_envs.evaluation.evaluate`, the trainer's rollouts and its diagnostics.
    `from_envs` wraps sub-envs that already exist.

    Observations are a tuple of strings (as `SyncVectorEnv` gives for `spaces.Text`); rewards, terminations and
    truncations are numpy arrays; infos are batched the Gymnasium way (``info[key]`` arrays with ``info["_key"]``
    masks), built when first read (`BatchedInfo`); ``last_infos`` holds each sub-env's own latest info, also built
    when first read (`SubEnvInfos`).

    Reset options (scalars apply to every sub-env, sequences give one value per sub-env):
    ``question_index`` / ``question_id`` pin questions, e.g. ``{"question_index": [i, i, i, i, j, j, j, j]}`` for two
    GRPO groups of four; ``reset_mask`` (a bool array) resets only some sub-envs.

    Autoreset follows `gymnasium.vector.AutoresetMode`:
    - ``NEXT_STEP`` (default): a sub-env that ended is reset on the following ``step`` (its action is ignored, reward
      0, not done).
    - ``SAME_STEP``: an ended sub-env is reset within the step; its last observation and info are in
      ``info["final_obs"]`` / ``info["final_info"]``.
    - ``DISABLED``: reset sub-envs yourself with ``reset(options={"reset_mask": ...})``. A sub-env that ended and was
      not reset is skipped: its action is ignored and it returns ``""``, reward 0 and its previous done flags (this
      lets evaluators drain a fixed list of episodes without stepping finished sub-envs).

    Args:
        num_envs: number of sub-envs.
        env_fn: builds the first sub-env from ``env_kwargs`` (a callable or ``"module:function"``); the others are
            `SearchQAEnv.spawn` siblings sharing its questions and retriever.
        autoreset_mode: an `AutoresetMode` (or its string value).
        **env_kwargs: arguments of ``env_fn``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["ansi"]}

    def __init__(
        self,
        num_envs: int,
        env_fn: Callable[..., SearchQAEnv] | str = SearchQAEnv,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        **env_kwargs: Any,
    ):
        num_envs = integer("num_envs", num_envs, 1)
        if isinstance(env_fn, str):
            env_fn = load_env_creator(env_fn)
        first = env_fn(**env_kwargs)
        if not isinstance(first.unwrapped, SearchQAEnv):
            raise TypeError(f"env_fn must build a SearchQAEnv, got {type(first)}")
        self._setup([first.unwrapped] + [first.unwrapped.spawn() for _ in range(num_envs - 1)], autoreset_mode)

    @classmethod
    def from_envs(cls, envs: Sequence[SearchQAEnv],
                  autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP) -> SearchQAVectorEnv:
        """A vector env over existing sub-envs (unwrapped `SearchQAEnv` instances, e.g. `SearchQAEnv.spawn`
        siblings), stepped together; searches are batched per shared retriever."""
        envs = [env.unwrapped for env in envs]
        if not envs or not all(isinstance(env, SearchQAEnv) for env in envs):
            kinds = [type(env).__name__ for env in envs]
            raise TypeError(f"from_envs needs one or more SearchQAEnv instances, got {kinds}")
        vector_env = cls.__new__(cls)
        vector_env._setup(envs, autoreset_mode)
        return vector_env

    def _setup(self, envs: list[SearchQAEnv], autoreset_mode: AutoresetMode | str) -> None:
        first = envs[0]
        self.envs = envs
        self.num_envs = len(envs)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs: list[str] = [""] * self.num_envs
        self._terminations = np.zeros(self.num_envs, dtype=np.bool_)
        self._truncations = np.zeros(self.num_envs, dtype=np.bool_)
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        #: The latest info dict of each sub-env, unbatched (what per-episode agents and evaluators read).
        self.last_infos = SubEnvInfos(self.num_envs)

    # Shared settings, read by agents and the trainer.
    @property
    def items(self):
        return self.envs[0].items

    @property
    def protocol(self) -> str:
        return self.envs[0].protocol

    @property
    def retriever(self):
        return self.envs[0].retriever

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            if not isinstance(seed, (Sequence, np.ndarray)) or isinstance(seed, str):
                raise TypeError(f"seed must be an integer, None or one per sub-env, got {seed!r}")
            seeds = [None if s is None else integer("seed", s) for s in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for num_envs={self.num_envs}")
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},)")
        per_env = {key: _per_env(value, self.num_envs, key) for key, value in options.items()}
        rows = np.flatnonzero(mask).tolist()
        for i in rows:
            env_options = {key: values[i] for key, values in per_env.items()}
            self._obs[i], self.last_infos[i] = self.envs[i].start(seed=seeds[i], options=env_options)
        self._terminations[mask] = False
        self._truncations[mask] = False
        self._autoreset[mask] = False
        return tuple(self._obs), BatchedInfo(partial(self._batch_infos, rows, [self.last_infos.held(i) for i in rows]))

    def step(self, actions: Sequence[str]):
        actions = list(actions)
        n = self.num_envs
        if len(actions) != n:
            raise ValueError(f"got {len(actions)} actions for num_envs={n}")
        if not self._autoreset.any() and self.autoreset_mode != AutoresetMode.SAME_STEP:
            # The usual step: every sub-env acts and none is reset, so the results are the columns as they come.
            results = step_batch(self.envs, actions, build_infos=False)
            observations, rewards, terminations, truncations, infos = zip(*results)
            self._obs[:] = observations
            self.last_infos[:] = infos
            rows = range(n)
        else:
            rewards, terminations, truncations, rows, infos = self._step_with_resets(actions)
        self._terminations = np.array(terminations, dtype=np.bool_)
        self._truncations = np.array(truncations, dtype=np.bool_)
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            self._autoreset[:] = False
        else:
            self._autoreset = self._terminations | self._truncations
        return (tuple(self._obs), np.array(rewards, dtype=np.float64), self._terminations.copy(),
                self._truncations.copy(), BatchedInfo(partial(self._batch_infos, rows, infos)))

    def _step_with_resets(self, actions: list[str]):
        """A step where some sub-envs are reset first (``NEXT_STEP``), skipped (``DISABLED``) or reset within it
        (``SAME_STEP``): ``(rewards, terminations, truncations, rows, infos)``, the infos in sub-env order."""
        infos: list[tuple[int, dict]] = []
        stepping = []
        for i, ended in enumerate(self._autoreset.tolist()):
            if not ended:
                stepping.append(i)
            elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
                self._obs[i], info = self.envs[i].start()
                self.last_infos[i] = info
                infos.append((i, info))
            else:  # DISABLED: an ended sub-env that was not reset is skipped
                self._obs[i] = ""
        rewards = [0.0] * self.num_envs
        # NEXT_STEP: reset sub-envs are not done; DISABLED: skipped sub-envs keep their done flags.
        keep = self.autoreset_mode == AutoresetMode.DISABLED
        terminations = self._terminations.tolist() if keep else [False] * self.num_envs
        truncations = self._truncations.tolist() if keep else [False] * self.num_envs
        if len(stepping) == self.num_envs:
            results = step_batch(self.envs, actions, build_infos=False)
        else:
            results = step_batch([self.envs[i] for i in stepping], [actions[i] for i in stepping], build_infos=False)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        for i, (obs, reward, terminated, truncated, info) in zip(stepping, results):
            rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
            if same_step and (terminated or truncated):
                final = {"final_obs": obs, "final_info": info.build()}
                obs, info = self.envs[i].reset()
                info = {**info, **final}
            self._obs[i] = obs
            self.last_infos[i] = info
            infos.append((i, info))
        if len(infos) > len(stepping):  # some sub-envs were reset first: back into sub-env order
            infos.sort(key=lambda pair: pair[0])
        rows, dicts = zip(*infos) if infos else ((), ())
        return rewards, terminations, truncations, rows, dicts

    def _batch_infos(self, rows: Sequence[int], dicts: Sequence[dict[str, Any] | InfoSnapshot]) -> dict[str, Any]:
        """Gymnasium's batched info layout (``info[key]``: one entry per sub-env, ``info["_key"]``: which sub-envs
        have it; nested dicts batched recursively; ``final_obs`` an object array), built one column per key.

        Unlike `VectorEnv._add_info`, a key whose values mix types (e.g. ``gold_recall`` None for some questions, a
        float for others) becomes an object array instead of failing."""
        if not dicts:
            return {}
        rows = list(rows)
        dicts = [info.build() if isinstance(info, InfoSnapshot) else info for info in dicts]
        try:  # the usual case: every sub-env reports the same keys (as many as the first, and each of its keys)
            if set(map(len, dicts)) != {len(dicts[0])}:
                raise KeyError
            columns = {key: (rows, [info[key] for info in dicts]) for key in dicts[0]}
        except KeyError:
            columns = {}
            for i, info in zip(rows, dicts):
                for key, value in info.items():
                    column = columns.setdefault(key, ([], []))
                    column[0].append(i)
                    column[1].append(value)
        batched: dict[str, Any] = {}
        for key, (rows, values) in columns.items():
            batched[key] = self._batch_column(key, rows, values)
            if len(rows) == self.num_envs:
                batched[f"_{key}"] = np.ones(self.num_envs, dtype=np.bool_)
            else:
                batched[f"_{key}"] = mask = np.zeros(self.num_envs, dtype=np.bool_)
                mask[rows] = True
        return batched

    def _batch_column(self, key: str, rows: list[int], values: list[Any]) -> Any:
        kinds = set(map(type, values))
        kind = kinds.pop() if len(kinds) == 1 and key != "final_obs" else object
        if kind is dict:
            return self._batch_infos(rows, values)
        full = len(rows) == self.num_envs
        if kind in (int, float, bool) or issubclass(kind, np.number):
            if full:
                return np.array(values, dtype=kind)
            array = np.zeros(self.num_envs, dtype=kind)
        else:  # object column: fromiter keeps each value (a list stays one entry)
            values = np.fromiter(values, dtype=object, count=len(values))
            if full:
                return values
            array = np.full(self.num_envs, None, dtype=object)
        array[rows] = values
        return array

    def render(self) -> tuple[Any, ...]:
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def _vector_entry_point(entry_point: str) -> Callable[..., SearchQAVectorEnv]:
    def make(num_envs: int, **kwargs: Any) -> SearchQAVectorEnv:
        return SearchQAVectorEnv(num_envs=num_envs, env_fn=entry_point, **kwargs)

    make.__doc__ = f"The native vector env over ``{entry_point}`` sub-envs (a registered ``vector_entry_point``)."
    return make


# The vector entry points of the registered ids, one module attribute each so they register by string path.
make_search_qa_vector_env = _vector_entry_point("igpo_envs.env:SearchQAEnv")
make_paper_vector_env = _vector_entry_point("igpo_envs.tasks.paper:make_paper_env")
make_hotpotqa_distractor_vector_env = _vector_entry_point("igpo_envs.tasks.hotpotqa:make_hotpotqa_distractor_env")
make_synth_vector_env = _vector_entry_point("igpo_envs.tasks.synthetic:make_synth_env")
