"""HFBackend on real models: padding, EOS/stop handling, log-probs, seeds, SmolLM2 answers."""

from __future__ import annotations

import copy
import itertools
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from memfactory.backends.base import Backend
from memfactory.backends.hf import GenerationBatch, HFBackend
from memfactory.backends.logprobs import to_host
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY
from memfactory.types import ChatPrompt, SamplingParams


def chat(text: str, prefix: str = "") -> ChatPrompt:
    return ChatPrompt(messages=[{"role": "user", "content": text}], assistant_prefix=prefix)


PROMPTS = [
    chat("Hi"),
    chat("Document 1: The capital of Freedonia is Zorbia. Question: What is the capital of Freedonia?"),
    chat("Remember 1987.", prefix="\\boxed{"),
    chat("Document 12: Kalumar was founded in 301 by the king of Velgon, who later married the queen."),
]
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)


def test_registered_and_follows_protocol(tiny_backend):
    assert REGISTRY.get("backend", "hf").target is HFBackend
    assert isinstance(tiny_backend, Backend)
    assert tiny_backend.exposes_tokens is True
    assert tiny_backend.name == "hf"


def test_render_prompt_appends_prefix_and_toggles_thinking(tiny_backend):
    tok = tiny_backend.tokenizer
    ids = tiny_backend.render_prompt(chat("Hello", prefix="\\boxed{"))
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith("</think>\n\n\\boxed{")  # enable_thinking=False pre-fills an empty think block
    thinking = HFBackend(tiny_backend.model, tok, enable_thinking=True)
    assert tok.decode(thinking.render_prompt(chat("Hello"))).endswith("<|im_start|>assistant\n")


def test_left_padded_batch_equals_one_by_one(tiny_backend):
    lengths = {len(tiny_backend.render_prompt(p)) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # really different lengths, so padding is exercised
    batch = tiny_backend.generate_batch(PROMPTS, GREEDY)
    assert isinstance(batch, GenerationBatch)
    assert batch.prompt_ids.shape == batch.prompt_mask.shape == (len(PROMPTS), max(lengths))
    pad = tiny_backend.tokenizer.pad_token_id
    for i, prompt in enumerate(PROMPTS):
        alone = tiny_backend.generate([prompt], GREEDY)[0]
        n = len(alone.prompt_ids)
        # left padding: pads first, the prompt flush right
        assert batch.prompt_mask[i, -n:].all() and not batch.prompt_mask[i, :-n].any()
        assert (batch.prompt_ids[i, :-n] == pad).all()
        assert batch.prompt_ids[i, -n:].tolist() == alone.prompt_ids == tiny_backend.render_prompt(prompt)
        assert batch.response_ids[i][batch.response_mask[i].bool()].tolist() == alone.response_ids
        assert batch.texts[i] == alone.text
    # micro-batching (sorted by length, reassembled in order) changes nothing
    small = HFBackend(tiny_backend.model, tiny_backend.tokenizer, micro_batch_size=1)
    assert small.generate_batch(PROMPTS, GREEDY).texts == batch.texts


def test_greedy_tiny_output_is_varied(tiny_backend):
    gen = tiny_backend.generate([PROMPTS[1]], SamplingParams(max_new_tokens=32, temperature=0.0))[0]
    assert gen.finish_reason == "length" and len(gen.response_ids) == 32
    assert len(set(gen.response_ids)) >= 8, gen.response_ids


def _forward_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(response_ids)[:, None]).squeeze(1)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=20, temperature=0.7, top_p=0.8, top_k=50, seed=1),
        SamplingParams(max_new_tokens=20, temperature=0.0),
    ],
    ids=["sampled", "greedy"],
)
def test_logprobs_equal_a_forward_pass(tiny_backend, params):
    batch = tiny_backend.generate_batch(PROMPTS, params)
    temperature = params.temperature if params.temperature > 0 else 1.0
    for gen in batch.to_generations():
        assert len(gen.logprobs) == len(gen.response_ids) > 0
        expected = _forward_logprobs(tiny_backend.model, gen.prompt_ids, gen.response_ids, temperature)
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4), (gen.logprobs, expected)
    # padded positions carry nothing
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    assert (batch.logprobs[batch.response_mask == 1] <= 0).all()


def test_seed_makes_sampling_reproducible_without_touching_global_rng(tiny_backend):
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=123)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first = tiny_backend.generate(PROMPTS, params)
    assert torch.equal(torch.get_rng_state(), before)
    second = tiny_backend.generate(PROMPTS, params)
    other = tiny_backend.generate(PROMPTS, SamplingParams(max_new_tokens=24, temperature=1.0, seed=124))
    assert [g.response_ids for g in first] == [g.response_ids for g in second]
    assert [g.logprobs for g in first] == [g.logprobs for g in second]
    assert [g.response_ids for g in first] != [g.response_ids for g in other]
    greedy = tiny_backend.generate(PROMPTS, SamplingParams(max_new_tokens=24, temperature=0.0))
    assert [g.response_ids for g in first] != [g.response_ids for g in greedy]


def test_stop_string_truncates_text_ids_and_mask(tiny_backend):
    prompt = PROMPTS[1]
    full = tiny_backend.generate([prompt], SamplingParams(max_new_tokens=24, temperature=0.0))[0]
    stop = full.text[6:9]  # a string that first appears mid-way through the greedy answer
    assert len(stop) == 3 and full.text.find(stop) < len(full.text) - 3
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop=[stop, "never-occurs"])
    batch = tiny_backend.generate_batch([prompt, PROMPTS[0]], params)
    cut = batch.to_generations()[0]
    end = full.text.find(stop) + len(stop)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:end]
    # ids are the shortest prefix of the unstopped answer whose text holds the stop string
    n = len(cut.response_ids)
    assert cut.response_ids == full.response_ids[:n]
    assert stop in tiny_backend.tokenizer.decode(cut.response_ids)
    assert stop not in tiny_backend.tokenizer.decode(cut.response_ids[:-1])
    assert cut.logprobs == pytest.approx(full.logprobs[:n], abs=1e-5)
    assert batch.response_mask[0].sum() == n and not batch.response_mask[0, n:].any()
    # the earliest-ending of several stop strings wins
    early = full.text[2:4]
    both = tiny_backend.generate([prompt], SamplingParams(max_new_tokens=24, temperature=0.0, stop=[stop, early]))[0]
    assert both.text == full.text[: full.text.find(early) + 2]


def test_eos_ends_a_row_and_pads_after(tiny_backend):
    """Declare a token the tiny model emits mid-answer as an extra EOS: rows must end there."""
    full = tiny_backend.generate_batch(PROMPTS, GREEDY)
    first = full.to_generations()[1]
    eos_extra = first.response_ids[5]
    k = first.response_ids.index(eos_extra)
    model = copy.copy(tiny_backend.model)
    model.generation_config = copy.deepcopy(tiny_backend.model.generation_config)
    model.generation_config.eos_token_id = [tiny_backend.tokenizer.eos_token_id, eos_extra]
    backend = HFBackend(model, tiny_backend.tokenizer)
    batch = backend.generate_batch(PROMPTS, GREEDY)
    pad = tiny_backend.tokenizer.pad_token_id
    for i, (old, new) in enumerate(zip(full.to_generations(), batch.to_generations())):
        if eos_extra in old.response_ids:
            cut = old.response_ids.index(eos_extra) + 1
            assert new.finish_reason == "stop"
            assert new.response_ids == old.response_ids[:cut]  # EOS kept, nothing after it
            assert batch.response_mask[i, :cut].all() and not batch.response_mask[i, cut:].any()
            assert (batch.response_ids[i, cut:] == pad).all()
            assert new.text == tiny_backend.tokenizer.decode(old.response_ids[: cut - 1], skip_special_tokens=True)
        else:
            assert new.response_ids == old.response_ids and new.finish_reason == "length"
    assert batch.to_generations()[1].response_ids == first.response_ids[: k + 1]


def test_generation_restores_train_mode_and_needs_no_grad(fresh_tiny_backend):
    model = fresh_tiny_backend.model
    model.train()
    batch = fresh_tiny_backend.generate_batch(PROMPTS[:2], GREEDY)
    assert model.training
    assert not batch.logprobs.requires_grad
    model.eval()
    fresh_tiny_backend.generate_batch(PROMPTS[:1], GREEDY)
    assert not model.training


def test_from_config_builds_a_backend():
    from memfactory.config import ModelConfig

    backend = HFBackend.from_config(ModelConfig(path="tiny://qwen3-mini", enable_thinking=True), device="cpu")
    assert backend.enable_thinking and backend.tokenizer.padding_side == "left"
    assert len(backend.generate([chat("Hi")], SamplingParams(max_new_tokens=3, temperature=0))[0].response_ids) == 3


# --------------------------------------------------------------------------- a real instruct model


@pytest.mark.timeout(600)  # the first use on a machine converts the GGUF (~25 s), cached after
def test_smollm2_answers_a_document_question(smollm2_backend):
    questions = [
        ("Document 1: The capital of Freedonia is Zorbia. Question: What is the capital of Freedonia?", "Zorbia"),
        (
            (
                "Document 1: Marie Curie was born in Warsaw. Document 2: The Eiffel Tower is in Paris. "
                "Question: Where was Marie Curie born?"
            ),
            "Warsaw",
        ),
    ]
    batch = smollm2_backend.generate_batch(
        [chat(q) for q, _ in questions], SamplingParams(max_new_tokens=40, temperature=0)
    )
    eos = smollm2_backend.tokenizer.eos_token_id
    for i, (gen, (_, answer)) in enumerate(zip(batch.to_generations(), questions)):
        assert answer in gen.text, gen.text
        # it ends its turn on its own: EOS is the last masked token, pads after it
        assert gen.finish_reason == "stop" and gen.response_ids[-1] == eos
        assert "<|im_end|>" not in gen.text
        n = len(gen.response_ids)
        assert batch.response_mask[i].sum() == n and not batch.response_mask[i, n:].any()
    # its log-probs match a forward pass as well (30 layers, float32)
    gen = batch.to_generations()[0]
    expected = _forward_logprobs(smollm2_backend.model, gen.prompt_ids, gen.response_ids, 1.0)
    assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-3)


@pytest.mark.timeout(600)
def test_smollm2_sampling_varies_and_stops_on_strings(smollm2_backend):
    prompt = chat("Write one short sentence about the sea.")
    gens = smollm2_backend.generate([prompt] * 4, SamplingParams(max_new_tokens=12, temperature=1.0, seed=0))
    assert len({tuple(g.response_ids) for g in gens}) > 1  # group rewards can differ
    stopped = smollm2_backend.generate([prompt], SamplingParams(max_new_tokens=40, temperature=0, stop=[" "]))[0]
    assert stopped.finish_reason == "stop" and stopped.text.endswith(" ") and stopped.text.count(" ") == 1


def test_works_on_a_peft_wrapped_policy(fresh_tiny_backend):
    """The trainer wraps the policy in LoRA adapters; generation and log-probs must still hold."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        fresh_tiny_backend.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    backend = HFBackend(model, fresh_tiny_backend.tokenizer)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    for gen in backend.generate(PROMPTS[:2], params):
        expected = _forward_logprobs(model, gen.prompt_ids, gen.response_ids, 1.0)
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4)


def test_empty_batch(tiny_backend):
    batch = tiny_backend.generate_batch([], GREEDY)
    assert len(batch) == 0 and batch.response_ids.shape == (0, 0)
    assert tiny_backend.generate([], GREEDY) == []


def test_tokenizer_without_chat_template_is_a_user_error(tiny_backend):
    tokenizer = copy.deepcopy(tiny_backend.tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(MemFactoryError, match="no chat template"):
        HFBackend(tiny_backend.model, tokenizer).render_prompt(chat("Hi"))


# --------------------------------------------------------------------------- prefill once per group


def _group_prompts(group: int = 4) -> list[ChatPrompt]:
    """A GRPO rollout batch: each prompt ``group`` times, group members adjacent (as agents ask)."""
    return [p for p in PROMPTS for _ in range(group)]


def _prefill_shapes(model) -> list[tuple[int, int]]:
    """(rows, tokens) of every forward through the decoder, recorded by a hook."""
    shapes: list[tuple[int, int]] = []

    def hook(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        tensor = ids if ids is not None else kwargs["inputs_embeds"]
        shapes.append(tuple(tensor.shape[:2]))

    model.model.register_forward_pre_hook(hook, with_kwargs=True)
    return shapes


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)],
                         ids=["greedy", "sampled"])
def test_shared_prefill_gives_the_same_tokens_and_logprobs(fresh_tiny_backend, params):
    model, tokenizer = fresh_tiny_backend.model, fresh_tiny_backend.tokenizer
    plain = HFBackend(model, tokenizer, shared_prefill=False).generate(_group_prompts(), params)
    shared_backend = HFBackend(model, tokenizer)
    shared = shared_backend.generate(_group_prompts(), params)
    assert [g.response_ids for g in shared] == [g.response_ids for g in plain]
    assert [g.text for g in shared] == [g.text for g in plain]
    for a, b in zip(shared, plain):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    assert shared_backend.prefill_stats == {"rows": 16, "prefilled": 4}
    # Group members still sample independently (one RNG stream over the batch, as unshared).
    if params.temperature > 0:
        assert len({tuple(g.response_ids) for g in shared[:4]}) > 1


def test_each_distinct_prompt_is_prefilled_once(fresh_tiny_backend):
    model, tokenizer = fresh_tiny_backend.model, fresh_tiny_backend.tokenizer
    shapes = _prefill_shapes(model)
    prompts = [PROMPTS[1]] * 6 + [PROMPTS[3]] * 2
    HFBackend(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=3, temperature=1.0, seed=0))
    width = max(len(tokenizer.apply_chat_template(p.messages, add_generation_prompt=True)) for p in prompts[-1:])
    # One prefill of the 2 distinct prompts (all but the last token), then one token per row per step.
    assert shapes[0][0] == 2 and shapes[0][1] >= width - 1
    assert all(shape == (8, 1) for shape in shapes[1:]), shapes


def test_distinct_prompts_and_sharing_off_take_the_plain_path(fresh_tiny_backend):
    model, tokenizer = fresh_tiny_backend.model, fresh_tiny_backend.tokenizer
    shapes = _prefill_shapes(model)
    backend = HFBackend(model, tokenizer)
    backend.generate(PROMPTS, SamplingParams(max_new_tokens=2))
    assert backend.prefill_stats == {"rows": 4, "prefilled": 4}
    assert shapes[0][0] == 4 and shapes[0][1] > 1  # generate's own prefill of every row
    off = HFBackend(model, tokenizer, shared_prefill=False)
    off.generate(_group_prompts(2), SamplingParams(max_new_tokens=2))
    assert off.prefill_stats == {"rows": 8, "prefilled": 8}


def test_shared_prefill_on_a_peft_policy_matches_a_forward_pass(fresh_tiny_backend):
    """The trainer's policy is peft-wrapped: shared prefill must go through the adapters too."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        fresh_tiny_backend.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    backend = HFBackend(model, fresh_tiny_backend.tokenizer)
    gens = backend.generate([PROMPTS[1]] * 3, SamplingParams(max_new_tokens=8, temperature=1.0, seed=5))
    assert backend.prefill_stats["prefilled"] == 1
    for gen in gens:
        expected = _forward_logprobs(model, gen.prompt_ids, gen.response_ids, 1.0)
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4)


def test_generate_streaming_shows_the_text_as_it_grows_and_returns_generate_s_generation(tiny_backend):
    prompt = chat("Remember 1987.", prefix="\\boxed{")
    [whole] = tiny_backend.generate([prompt], GREEDY)
    seen: list[str] = []
    streamed = tiny_backend.generate_streaming(prompt, GREEDY, seen.append)
    assert (streamed.text, streamed.response_ids, streamed.finish_reason) == (
        whole.text, whole.response_ids, whole.finish_reason)
    assert len(seen) > 3 and all(b.startswith(a) for a, b in itertools.pairwise(seen))  # it grows, piece by piece
    assert seen[-1] == whole.text

    class Stop(Exception):
        pass

    def stop_after_two(text: str) -> None:
        if len(text) > len(seen[1]):
            raise Stop  # a chat's Stop: the generation ends at the next token
    with pytest.raises(Stop):
        tiny_backend.generate_streaming(prompt, GREEDY, stop_after_two)
    assert tiny_backend.generate([prompt], GREEDY)[0].text == whole.text  # the backend is unharmed


# --------------------------------------------------------------------------- host transfers


def test_to_host_is_exact_for_token_ids_and_log_probs():
    """One float64 copy carries all: ids up to a large vocabulary, float32 log-probs (-inf included), each in its shape."""
    tokens = torch.tensor([[0, 151_935, 2**31 - 1], [7, 3, 1]])
    logprobs = torch.tensor([[-1e-8, -123.456789, float("-inf")], [0.0, -3.4e38, -1.17e-38]])
    top = torch.tensor([[[-0.5, -2.0]], [[-0.1, -9.0]]])  # [steps, B, k]
    ids, lps, back = to_host(tokens, logprobs, top)
    assert ids.dtype == torch.long and lps.dtype == torch.float32
    assert torch.equal(ids, tokens) and torch.equal(lps, logprobs) and torch.equal(back, top)
    assert to_host() == []


class HostTransfers(TorchFunctionMode):
    """Counts the tensor-to-host conversions that the backend's own code (``memfactory/backends/``:
    hf.py, logprobs.py) makes on tensors of ``device_type`` (transformers' own, inside ``generate``,
    are its business)."""

    NAMES = frozenset({"tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__"})
    OURS = os.path.join("memfactory", "backends", "")

    def __init__(self, device_type: str = "cuda"):
        super().__init__()
        self.device_type = device_type
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        to_cpu = name == "to" and any(str(a).startswith("cpu") for a in [*args[1:], kwargs.get("device")] if a is not None)
        if tensor is not None and tensor.device.type == self.device_type and (name in self.NAMES or to_cpu):
            frame = sys._getframe(1)
            while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and self.OURS in frame.f_code.co_filename:
                self.calls.append(f"{name} at {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}")
        return func(*args, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("extra", "per_micro_batch"), [({}, 1), ({"top_logprobs": 3, "prompt_logprobs": True}, 2)])
def test_each_micro_batch_comes_back_to_the_host_in_one_transfer(fresh_tiny_backend, extra, per_micro_batch):
    """Training's generation: the sampled ids and log-probs in one copy per micro-batch (they were 2
    copies and a device prompt ``tolist``). Serving's top lists ride along; prompt log-probs take one
    more copy for all rows (they were one per row and position)."""
    backend = fresh_tiny_backend
    backend.model.to("cuda")
    backend.micro_batch_size = 2
    backend.decode = "eager"
    prompts = [PROMPTS[1], PROMPTS[1], PROMPTS[3], PROMPTS[3]]  # shared prefill in both micro-batches
    with HostTransfers() as seen:
        batch = backend.generate_batch(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0, **extra))
    assert len(batch) == 4 and batch.response_mask.sum() > 0
    assert backend.prefill_stats["prefilled"] < backend.prefill_stats["rows"]
    assert len(seen.calls) == 2 * per_micro_batch, seen.calls
