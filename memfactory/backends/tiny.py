"""The tiny offline model: a random-init Qwen3-architecture model plus a locally trained tokenizer.

It exists so the demo and the tests can run the whole stack (chat template, batched generation,
log-probs, GRPO) in milliseconds with no download. It knows no language; it is for mechanics,
not for learning demos (REFERENCE.md: GRPO on it learns essentially nothing).

Built once per (name, seed) into ``cache_dir("models")/tiny-<name>-s<seed>-v<N>`` with
``save_pretrained``; the build goes into a temporary folder that is renamed into place, so
concurrent processes never see half a model, and later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memfactory.errors import MemFactoryError
from memfactory.paths import cache_dir

SCHEME = "tiny://"
# Bump when the corpus, tokenizer or architecture changes so stale caches are not reused.
BUILD_VERSION = 1

# Qwen3-like chat template: ChatML turns; with enable_thinking=False an empty think block is
# pre-filled, exactly as Qwen3's own template does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
# Qwen2/3's pre-tokenizer split: single digits, words with an optional leading symbol, punctuation runs.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# name -> architecture; all share the tokenizer.
ARCHITECTURES: dict[str, dict] = {
    "qwen3-mini": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 8192,
        # The default 0.02 makes greedy decoding repeat one token forever; 0.5 gives varied text.
        "initializer_range": 0.5,
        "tie_word_embeddings": True,
    },
    # Qwen3-1.7B's shape with random weights, for GPU benchmarks (bench/gpu_check.py): the real
    # vocabulary size, so the LM head costs what it costs; ids past the local tokenizer's 2000
    # decode to nothing. Saved in bfloat16 (3.4 GB); it knows no language.
    "qwen3-1.7b-shape": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}
# Qwen3-4B-Instruct-2507's shape, likewise (8 GB in bfloat16), for the 4B GPU presets.
ARCHITECTURES["qwen3-4b-shape"] = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 262144,
    "rope_theta": 5000000.0,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
SAVED_DTYPE = {"qwen3-1.7b-shape": "bfloat16", "qwen3-4b-shape": "bfloat16"}  # default float32
VOCAB_SIZE = 2000

_COMMON_WORDS = """
the of and to in is was for on that with as by at from it an be this are which or his her their has
have had not but who what where when how why one two three four five six seven eight nine ten first
second last new old city country river mountain capital king queen born died year years document
question answer memory chunk read update keep remember note fact facts final evidence name called
known located near north south east west large small famous team song film book wrote directed
played founded built married founder member president author singer actor player company school
university village island lake state province region war army ship church museum is are were will
would could should may might can did do does yes no true false unknown because then also only more
most some any all each other about after before between during under over please think step give
short reply using given following text based problem current previous user assistant system you your
helpful
""".split()  # noqa: SIM905
_SYLLABLES = (  # noqa: SIM905
    "ka ri to mo la ne su vi da ze bo lu fen dor mar tis gal ven rho qui sar lin bel cor dan "
    "el an or is ur ath ber cal dri fal gon hel jor kel lom nar pel ras tor vel wyn zor bia don ia"
).split()
_PUNCT = [".", ",", "?", "!", ":", ";", "(", ")", '"', "'", "-", "/", "{", "}", "[", "]", "\\", "*", "#", "="]


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def build_corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    """A seeded English-ish corpus in the shapes our prompts use (documents, questions, boxed answers)."""
    rng = random.Random(seed)
    names = sorted({_pseudo_word(rng).capitalize() for _ in range(600)})
    words = _COMMON_WORDS + [n.lower() for n in names[:150]]
    out = []
    for i in range(lines):
        kind = i % 6
        a, b = rng.choice(names), rng.choice(names)
        n = rng.randint(0, 2100)
        if kind == 0:
            out.append(f"Document {rng.randint(1, 99)}: The capital of {a} is {b}, founded in {n}.")
        elif kind == 1:
            out.append(f"Question: What is the capital of {a}? Answer: \\boxed{{{b}}}")
        elif kind == 2:
            out.append(f"<think>\nThe memory says {a} was born in {n}.\n</think>\n\nThe answer is {b}.")
        elif kind == 3:
            body = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16)))
            out.append(body.capitalize() + rng.choice(_PUNCT[:4]))
        elif kind == 4:
            out.append(f'{{"op": "ADD", "text": "{a} likes {b}", "id": {rng.randint(0, 50)}}} {rng.choice(_PUNCT)}')
        elif i % 12 == 5:
            out.append("user\nRead the document.\nassistant\nsystem\nYou are a helpful assistant.")
        else:
            out.append(
                f"{rng.randint(0, 9999)} + {rng.randint(0, 99)} = {rng.randint(0, 9999)}; {a} ({b}) - {n}/{rng.randint(1, 12)}"
            )
    return out


def build_tokenizer(seed: int = 0):
    """Byte-level BPE trained on :func:`build_corpus`, wrapped with ChatML special tokens and template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(THINK_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
        model_max_length=ARCHITECTURES["qwen3-mini"]["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(THINK_TOKENS)  # single tokens, but not special: they stay in decoded text
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(name: str, tokenizer, seed: int = 0):
    """Random-init Qwen3ForCausalLM sized for ``tokenizer``; deterministic for ``seed``."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    arch = {"vocab_size": len(tokenizer), **ARCHITECTURES[name]}
    config = Qwen3Config(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **arch,
    )
    # The GPU-sized shapes initialise on the GPU when there is one (minutes on a CPU for 4B weights).
    device = "cuda" if name in SAVED_DTYPE and torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model.to(device="cpu", dtype=getattr(torch, SAVED_DTYPE.get(name, "float32"))).eval()


def parse_tiny_path(path: str) -> str:
    """``tiny://qwen3-mini`` -> ``qwen3-mini``; unknown names raise a MemFactoryError listing the valid ones."""
    name = path.removeprefix(SCHEME)
    if name not in ARCHITECTURES:
        valid = ", ".join(SCHEME + n for n in ARCHITECTURES)
        raise MemFactoryError(f"unknown tiny model {path!r}; valid: {valid}")
    return name


@contextmanager
def build_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive file lock so concurrent processes build a cached model once, not N times."""
    with open(root / f".{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_cached(root: Path, key: str, build) -> Path:
    """Return ``root/key``, creating it once with ``build(tmp_folder)`` and an atomic rename."""
    final = root / key
    if (final / "config.json").exists():
        return final
    with build_lock(root, key):
        if (final / "config.json").exists():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
            if final.exists():  # a leftover without config.json: an interrupted older build
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_model_dir(path: str = "tiny://qwen3-mini", seed: int = 0) -> Path:
    """The cached folder of a tiny model (built on first use, ~1 s)."""
    name = parse_tiny_path(path)

    def build(folder: Path) -> None:
        tokenizer = build_tokenizer(seed)
        model = build_model(name, tokenizer, seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_cached(cache_dir("models"), f"tiny-{name}-s{seed}-v{BUILD_VERSION}", build)
