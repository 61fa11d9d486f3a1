"""What the Chat tab talks to (no Gradio): a preset, optionally a trained checkpoint, or an endpoint.

The choices are the Playground's and so is the builder (:func:`webui.playground.compare.build_preset`
-> :func:`memfactory.targets.workflow_preset`); the agent is built from the preset by the registry
(:func:`memfactory.agents.build.build_agent`) and the model comes from a :class:`webui.models.BackendCache`,
so a model is loaded once and kept while the settings do not change. :func:`check_prompt` refuses,
before anything is sent, a prompt that would not fit the model's context, naming both numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from memfactory.agents.bank_agent import BankAgent
from memfactory.agents.base import Agent
from memfactory.agents.build import build_agent
from memfactory.agents.direct import DirectAgent
from memfactory.agents.memagent import MemoryAgent
from memfactory.config import Preset, load_preset
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY
from memfactory.serve.protocol import model_context_length
from memfactory.text import codec_for
from memfactory.types import ChatPrompt, SamplingParams
from webui import workspace
from webui.models import BackendCache
from webui.playground.compare import RunSettings, WorkflowSpec, build_preset, sampling_params

Kind = Literal["bank", "memagent", "direct"]
DEFAULT_PRESET = "memory_r1_tiny_cpu"


@dataclass(frozen=True)
class ChatTarget:
    """The tab's "what to talk to" fields; two equal targets share one loaded agent and model."""

    preset: str = DEFAULT_PRESET
    checkpoint: str = ""  # a run id or a checkpoint / run folder ("" = base weights)
    base_url: str = ""  # set -> an OpenAI-compatible endpoint instead of a local model
    model: str = ""  # served model name (endpoint) or another local model path
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_new_tokens: int | None = None  # None = the preset's trainer.max_new_tokens

    def spec(self) -> WorkflowSpec:
        return WorkflowSpec(preset=self.preset, checkpoint=self.checkpoint, base_url=self.base_url,
                            model=self.model, api_key_env=self.api_key_env)

    def settings(self) -> RunSettings:
        if self.temperature < 0:
            raise MemFactoryError(f"temperature must be >= 0, got {self.temperature}")
        return RunSettings(temperature=self.temperature, max_new_tokens=self.max_new_tokens)


@dataclass
class Loaded:
    """A target made ready: its preset, agent, backend and sampling, and what kind of chat it holds."""

    target: ChatTarget
    preset: Preset
    agent: Agent
    backend: Any
    params: SamplingParams
    kind: Kind

    @property
    def context(self) -> int | None:
        """The model's context in tokens; None for an endpoint (its server checks its own)."""
        return model_context_length(self.backend)

    def describe(self) -> str:
        model = self.preset.model
        where = f"{model.path} at {model.base_url}" if model.backend == "openai" else model.path
        checkpoint = f" + checkpoint {model.checkpoint}" if model.checkpoint else ""
        return f"{self.preset.name} ({self.preset.agent}) on {where}{checkpoint}"


def kind_of(agent: Agent) -> Kind:
    """How the tab chats with ``agent``: bank agents remember across sessions, MemAgent reads a document,
    the no-memory baseline answers from the document alone."""
    if isinstance(agent, BankAgent):
        return "bank"
    if isinstance(agent, MemoryAgent):
        return "memagent"
    if isinstance(agent, DirectAgent):
        return "direct"
    raise MemFactoryError(f"agent {type(agent).__name__} has no chat: the Chat tab talks to memory-bank agents "
                          "(memory_r1, rmm), memagent and direct")


def preset_kind(name: str) -> Kind | None:
    """The chat a preset holds, read from its agent's class without loading a model (None: unknown)."""
    try:
        agent = REGISTRY.get("agent", load_preset(workspace.find_preset(name)).agent).target
    except Exception:  # noqa: BLE001 - a preset that cannot be read says why when it is loaded
        return None
    for kind, base in (("bank", BankAgent), ("memagent", MemoryAgent), ("direct", DirectAgent)):
        if isinstance(agent, type) and issubclass(agent, base):
            return kind  # type: ignore[return-value]
    return None


def load(target: ChatTarget, cache: BackendCache) -> Loaded:
    """The target's preset (the Playground's builder), its agent and its model (from ``cache``).

    An endpoint is asked for its models first, so one that does not answer fails here with its URL.
    """
    preset = build_preset(target.spec(), RunSettings())
    agent = build_agent(preset)
    kind = kind_of(agent)
    params = sampling_params(preset, target.settings())
    backend = cache.get(preset.model)
    if target.base_url.strip() and hasattr(backend, "list_models"):
        backend.list_models()  # a dead endpoint fails here, before any message is sent
    return Loaded(target, preset, agent, backend, params, kind)


def token_count(backend: Any, text: str) -> int:
    """``text`` in the backend's tokens (chars/4 for a backend without a tokenizer)."""
    return len(codec_for(backend).encode(text))


def prompt_tokens(backend: Any, prompt: ChatPrompt) -> int:
    """What ``prompt`` costs the model: rendered with its chat template where the backend renders
    prompts, else the messages' text counted."""
    render = getattr(backend, "render_prompt", None)
    if callable(render):
        return len(render(prompt))
    return token_count(backend, "\n".join(m["content"] for m in prompt.messages) + prompt.assistant_prefix)


def check_prompt(loaded: Loaded, prompt: ChatPrompt, max_new_tokens: int, *, what: str, text: str,
                 text_tokens: int) -> None:
    """Refuse ``prompt`` when it and ``max_new_tokens`` new tokens would not fit the model's context.

    ``what`` names the call (``the extractor's call``), ``text`` what the user sent in it ("your message",
    "the document"); the message names the text's length, the prompt's and the context's. Nothing is sent.
    """
    context = loaded.context
    if context is None:
        return
    used = prompt_tokens(loaded.backend, prompt)
    if used + max_new_tokens <= context:
        return
    raise MemFactoryError(
        f"{text} is {text_tokens:,} tokens; {what} would be {used:,} prompt tokens + up to {max_new_tokens:,} new ones = "
        f"{used + max_new_tokens:,}, over the model's context of {context:,} tokens. Nothing was sent: "
        f"shorten {text}."
    )
