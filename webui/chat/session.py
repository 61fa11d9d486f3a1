"""One browser tab's chat (no Gradio): the transcript, the open memory bank or the document read, the turns.

Every turn goes through the agent's own pipeline, the one training and evaluation run:

* memory-bank agents (Memory-R1, RMM): the message is one conversation step of the current session.
  A reflecting agent extracts facts and its updater decides ADD / UPDATE / DELETE / NONE against the
  related memories (:func:`memfactory.agents.banks.step_updates`, then the updater's own call and
  ``apply_response``: one SQLite transaction); RMM with ``memory_source: turns`` (or ``observations``)
  stores the turn as it is (:func:`memfactory.agents.rmm.turn_operations`). Then the agent answers
  from the bank (:meth:`memfactory.agents.bank_agent.BankAgent.respond`).
* MemAgent: the document is read chunk by chunk with the first question as the problem (the memory
  after each chunk is kept for the trace view), then answered from the final memory; follow-up
  questions reuse that memory without reading again.
* the no-memory baseline: one call with the document and the question.

:meth:`ChatSession.steps` yields the turn after every model call, and while the answer is written, at
every token (:mod:`webui.chat.stream`: ``Turn.partial``). Stop sets a flag: the answer being written
ends at its next token; another call in flight (the extractor's, the updater's) is waited for and
nothing starts after it. The operations decided for the bank are applied whole or not at all (in a
step of their own, after their model call), so a stopped turn never leaves the bank half-written.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from memfactory.agents.banks import Episode, Step, step_updates
from memfactory.agents.rmm import turn_operations
from memfactory.errors import MemFactoryError
from memfactory.memory.ops import ApplyResult
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import ExtractRequest
from memfactory.modules.memory_ops import apply_operations
from memfactory.modules.recurrent import MemoryState
from memfactory.modules.reranker import RerankRequest
from memfactory.types import Sample, Trajectory
from webui.chat import bankfiles
from webui.chat.stream import StreamingBackend, in_thread
from webui.chat.target import ChatTarget, Loaded, check_prompt, load, token_count
from webui.models import BackendCache
from webui.playground.compare import describe_error

USER = "User"
Status = Literal["running", "done", "stopped", "failed"]


class ChatStopped(Exception):
    """Stop was pressed: the turn ends before its next step."""


@dataclass
class Turn:
    """One message and everything the agent did with it."""

    number: int
    session: int
    message: str
    status: Status = "running"
    step: str = ""  # what is happening now, for the status line
    answer: str = ""
    partial: str = ""  # the answer as it is being written (streamed), until the turn ends
    facts: list[str] = field(default_factory=list)  # what the extractor found
    ops: list[dict[str, Any]] = field(default_factory=list)  # the updater's trace entries (op, id, old, new, applied)
    applied: bool | None = None  # None: no memory update (yet); True / False: applied whole / not at all
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # id, text, score, selected, cited
    trace: list[dict[str, Any]] = field(default_factory=list)  # MemAgent: memory per chunk, then the answer
    reused_memory: bool = False  # MemAgent follow-up: answered from the memory already read
    note: str = ""  # why it stopped or failed
    streaming: bool = False  # the answer is being written (Stop ends it at its next token)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # Stop


def retrieved_rows(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The memories an answer saw, with their scores: Memory-R1's ``retrieved`` entry, or RMM's ``rerank``
    candidates (``selected``: kept by the reranker); ``cited``: named by the answer."""
    cited = set(next((e.get("cited") or [] for e in reversed(trace) if e.get("kind") == "answer"), []))
    for entry in reversed(trace):
        if entry.get("kind") == "rerank":
            selected = set(entry.get("selected") or [])
            return [{**m, "selected": m["id"] in selected, "cited": m["id"] in cited} for m in entry["candidates"]]
        if entry.get("kind") == "retrieved":
            return [{**m, "selected": None, "cited": m["id"] in cited} for m in entry["memories"]]
    return []


class ChatSession:
    """A chat with one agent: what it talks to, its bank or document, and the turns so far."""

    def __init__(self, cache: BackendCache):
        self.cache = cache
        self.loaded: Loaded | None = None
        self.bank: MemoryStore | None = None
        self.bank_name = bankfiles.DEFAULT_BANK
        self.session = 1
        self.session_date = _now()
        self.turns: list[Turn] = []
        self.messages: list[dict[str, str]] = []  # this session's transcript, as the chatbot shows it
        self.document = ""
        self.reading: MemoryState | None = None  # MemAgent: the document being / already read
        self.read_trace: list[dict[str, Any]] = []
        self.current: Turn | None = None
        self.stops = 0  # Stop presses so far: a message whose send began before one is not sent
        self._lock = threading.Lock()  # held for one step (one model call, or one bank write)
        self._ending = threading.Lock()  # a turn ends once: done, stopped or failed
        self._downloads = Path(tempfile.mkdtemp(prefix="memfactory-chat-"))

    # ------------------------------------------------------------------ what to talk to

    @property
    def busy(self) -> bool:
        return self.current is not None and self.current.status == "running"

    def use(self, target: ChatTarget) -> Loaded:
        """Load ``target`` unless it is what the session already talks to (then nothing reloads)."""
        if self.loaded is not None and self.loaded.target == target:
            return self.loaded
        if self.busy:
            raise MemFactoryError("a turn is still running: wait for its answer or press Stop before changing settings")
        loaded = load(target, self.cache)
        old = self.loaded
        self.loaded = loaded
        if old is None or old.kind != loaded.kind or _embedder(old) != _embedder(loaded):
            self.close_bank()
        self.reading, self.read_trace = None, []  # a memory another agent or model wrote is not this one's
        return loaded

    def open_bank(self, name: str) -> MemoryStore:
        """Open (or create) the named bank with the agent's embedder; needs a memory-bank agent."""
        loaded = self._require("bank")
        if self.busy:
            raise MemFactoryError("a turn is still running: wait for its answer or press Stop before opening a bank")
        bank = bankfiles.open_bank(name, _embedder(loaded))
        self.close_bank()
        self.bank, self.bank_name = bank, Path(bank.path).stem
        return bank

    def close_bank(self) -> None:
        if self.bank is not None:
            self.bank.close()
            self.bank = None

    def set_document(self, text: str) -> None:
        """A new document is read again at the next question; the same one keeps its memory."""
        text = text or ""
        if text != self.document:
            self.document, self.reading, self.read_trace = text, None, []

    # ------------------------------------------------------------------ sessions and memory

    def new_session(self) -> None:
        """A new conversation session: the transcript starts over, the bank stays (what these agents
        remember across); MemAgent forgets what it read."""
        self._idle("start a new session")
        self.session += 1
        self.session_date = _now()
        self.messages = []
        self.reading, self.read_trace = None, []

    def reset_memory(self) -> int:
        """Empty the open bank, history included; returns how many memories it held."""
        self._idle("reset the memory")
        if self.bank is None:
            raise MemFactoryError("no bank is open: there is nothing to reset")
        return self.bank.reset()

    def download(self) -> Path:
        """A consistent copy of the open bank for a download."""
        if self.bank is None:
            raise MemFactoryError("no bank is open: send a message or open a bank first")
        return bankfiles.download_copy(self.bank, self._downloads)

    def transcript(self) -> list[dict[str, str]]:
        """This session's messages, and the answer being written (a cursor at its end) while a turn runs."""
        turn = self.current
        if turn is None or turn.status != "running" or not turn.partial or turn.session != self.session:
            return list(self.messages)
        return [*self.messages, {"role": "assistant", "content": turn.partial + " ▌"}]

    def close(self) -> None:
        self.close_bank()
        shutil.rmtree(self._downloads, ignore_errors=True)

    # ------------------------------------------------------------------ turns

    def begin(self, message: str, *, stops_seen: int | None = None) -> Turn:
        """Check ``message`` (and the document) and start a turn; a refusal raises before anything is sent.
        ``stops_seen``: :attr:`stops` when the send began (say, before the model loaded); a Stop since then
        raises :class:`ChatStopped` and nothing is sent."""
        if stops_seen is not None and self.stops != stops_seen:
            raise ChatStopped
        loaded = self._require()
        message = (message or "").strip()
        if not message:
            raise MemFactoryError("type a message first: an empty message is not sent")
        self._idle("send another message")
        if loaded.kind == "bank" and self.bank is None:
            self.open_bank(self.bank_name)
        self._check(loaded, message)
        turn = Turn(len(self.turns) + 1, self.session, message)
        self.turns.append(turn)
        self.current = turn
        self.messages.append({"role": "user", "content": message})
        return turn

    def steps(self, turn: Turn) -> Iterator[Turn]:
        """Run ``turn``, yielding it after each step; it ends ``done``, ``stopped`` or ``failed`` (its
        ``note`` says why), never with an exception."""
        loaded = self._require()
        run = {"bank": self._bank_turn, "memagent": self._memagent_turn, "direct": self._direct_turn}[loaded.kind]
        try:
            yield from run(loaded, turn)
            self._end(turn, "done", turn.answer or "(empty answer)")
            yield turn
        except ChatStopped:
            self._stopped(turn)
            yield turn
        except Exception as exc:  # noqa: BLE001 - shown in the tab, never a traceback
            note = describe_error(exc)
            if turn.applied is None:
                note += " (the bank is unchanged)" if loaded.kind == "bank" else ""
            self._end(turn, "failed", f"❌ {note}", note)
            yield turn
        finally:  # a closed generator (the tab went away mid-turn) ends the turn as stopped
            turn.cancel.set()
            self._stopped(turn)

    def stop(self) -> str:
        """Stop the running turn: the answer being written ends at its next token (the turn is stopped at
        once, with what it had written); another model call in flight is waited for; nothing starts after."""
        self.stops += 1
        turn = self.current
        if turn is None or turn.status != "running":
            return "Nothing is running."
        turn.cancel.set()
        if not turn.streaming:
            with self._lock:  # the call in flight ends; what it decided is not applied
                pass
        self._stopped(turn)
        return turn.note if turn.status == "stopped" else "Nothing is running."

    # ------------------------------------------------------------------ the three kinds of chat

    def _bank_turn(self, loaded: Loaded, turn: Turn) -> Iterator[Turn]:
        agent, backend, params = loaded.agent, loaded.backend, loaded.params
        bank = self.bank
        assert bank is not None
        sample = Sample(f"chat-{turn.number}", turn.message, [])
        trajectory = Trajectory(sample=sample, group=0)
        if agent.reflects:
            extractor, updater = agent.modules["extractor"], agent.modules["updater"]
            episode = Episode(trajectory, bank, [Step(self.session, self.session_date, f"{USER}: {turn.message}")])
            with self._step(turn, "extracting facts"):
                requests = step_updates([episode], extractor, updater, backend, params, train=False, trainable=False)
            turn.facts = [f.text for request in requests for f in request.facts]
            yield turn
            if requests:
                with self._step(turn, "deciding the memory operations"):
                    prompts, generations = updater.call_backend(requests, backend, params, train=False)
                yield turn
                with self._step(turn, "applying the operations"):
                    results = [updater.apply_response(r, p, g, train=False, trainable=False).result
                               for r, p, g in zip(requests, prompts, generations)]
                    self._applied(turn, results)
        else:  # RMM storing turns (or observations) as they are: no model call
            ops = turn_operations([{"date_time": self.session_date, "turns": [{"speaker": USER, "text": turn.message}]}])
            with self._step(turn, "storing the turn"):
                result, entries = apply_operations(bank, ops, actor="turns")
                trajectory.trace += [{"kind": "op", "session": self.session, **entry} for entry in entries]
                self._applied(turn, [result])
        turn.ops = [e for e in trajectory.trace if e.get("kind") == "op"]
        yield turn
        skip = 0 if agent.reflects or "reranker" not in agent.modules else 1  # RMM reranks first
        yield from self._streamed(turn, "answering from the memories", lambda streaming: agent.respond(
            [sample], [trajectory], [bank], streaming, params, group_size=1, train=False), skip=skip)
        turn.retrieved = retrieved_rows(trajectory.trace)
        turn.answer = trajectory.answer or ""

    def _memagent_turn(self, loaded: Loaded, turn: Turn) -> Iterator[Turn]:
        module, backend, params = loaded.agent.memory, loaded.backend, loaded.params
        sample = Sample(f"chat-{turn.number}", turn.message, [], context=self.document)
        if self.reading is None or not self.reading.done:
            state = module.init_states([sample], backend)[0]
            self.reading, self.read_trace = state, []
            while not state.done:
                with self._step(turn, f"reading chunk {state.step + 1} of {len(state.chunks)}"):
                    module.generate([state], backend, params, train=False, trainable=False)
                self.read_trace = list(state.trajectory.trace)
                turn.trace = list(self.read_trace)
                yield turn
        else:
            turn.reused_memory, turn.trace = True, list(self.read_trace)
        state = self.reading
        state.sample, state.trajectory = sample, Trajectory(sample=sample)
        yield from self._streamed(turn, "answering from the memory",
                                  lambda streaming: module.answer([state], streaming, params, train=False))
        turn.trace = [*self.read_trace, *state.trajectory.trace]
        turn.answer = state.trajectory.answer or ""

    def _direct_turn(self, loaded: Loaded, turn: Turn) -> Iterator[Turn]:
        sample = Sample(f"chat-{turn.number}", turn.message, [], context=self.document)
        done: list[Trajectory] = []
        yield from self._streamed(turn, "answering",
                                  lambda streaming: done.extend(loaded.agent.run([sample], streaming, params=loaded.params)))
        turn.answer = done[0].answer or ""

    # ------------------------------------------------------------------ checks before anything is sent

    def _check(self, loaded: Loaded, message: str) -> None:
        """Refuse a message or document the turn's first call cannot hold, naming the counts."""
        backend, params = loaded.backend, loaded.params
        tokens = token_count(backend, message)
        mine = {"text": "your message", "text_tokens": tokens}
        probe = Trajectory(sample=Sample("check", message, []))
        if loaded.kind == "bank":
            agent = loaded.agent
            if agent.reflects:
                extractor = agent.modules["extractor"]
                prompt = extractor.prompt(ExtractRequest(probe, f"{USER}: {message}", self.session_date))
                cap = min(params.max_new_tokens, extractor.options.max_tokens)
                check_prompt(loaded, prompt, cap, what="the extractor's call", **mine)
            elif "reranker" in agent.modules:
                reranker = agent.modules["reranker"]
                prompt = reranker.prompt(RerankRequest(probe, message, []))
                check_prompt(loaded, prompt, min(params.max_new_tokens, reranker.options.max_tokens),
                             what="the reranker's call", **mine)
            return
        document = self.document.strip()
        if not document:
            raise MemFactoryError("paste or upload a document first: this agent answers questions about a document")
        doc_tokens = token_count(backend, document)
        if loaded.kind == "direct":
            window = loaded.agent.options.max_context_tokens
            if doc_tokens > window:
                raise MemFactoryError(
                    f"the document is {doc_tokens:,} tokens; the no-memory baseline reads at most {window:,} "
                    "(agent_options.max_context_tokens) and would cut the rest. Nothing was sent: shorten the "
                    "document, or talk to MemAgent, which reads documents of any length chunk by chunk.")
            prompt = loaded.agent.prompt(document, message)
            check_prompt(loaded, prompt, params.max_new_tokens, what="the answer call", **mine)
            return
        module = loaded.agent.memory
        if self.reading is not None and self.reading.done:  # a follow-up: only the answer call
            state = MemoryState(Sample("check", message, []), [], probe, self.reading.memory)
            check_prompt(loaded, module.answer_prompt(state), module.answer_params(params).max_new_tokens,
                         what="the answer call", **mine)
            return
        opts = module.options
        if opts.max_chunks is not None and doc_tokens > opts.max_chunks * opts.chunk_tokens:
            raise MemFactoryError(
                f"the document is {doc_tokens:,} tokens; this preset reads at most max_chunks x chunk_tokens = "
                f"{opts.max_chunks} x {opts.chunk_tokens} = {opts.max_chunks * opts.chunk_tokens:,} and would cut "
                "the rest. Nothing was sent: shorten the document, or use a preset without max_chunks.")
        first = module.init_states([Sample("check", message, [], context=document)], backend)[0]
        check_prompt(loaded, module.update_prompt(first), module.update_params(params).max_new_tokens,
                     what="the first memory update (question + memory + one chunk)", **mine)

    # ------------------------------------------------------------------ plumbing

    def _require(self, kind: str | None = None) -> Loaded:
        if self.loaded is None:
            raise MemFactoryError("choose what to talk to first (a preset, or an endpoint)")
        if kind is not None and self.loaded.kind != kind:
            raise MemFactoryError(f"{self.loaded.describe()} keeps no memory bank; memory banks belong to the "
                                  "memory-bank agents (memory_r1, rmm)")
        return self.loaded

    def _idle(self, what: str) -> None:
        if self.busy:
            raise MemFactoryError(f"a turn is still running: wait for its answer or press Stop to {what}")

    @contextmanager
    def _step(self, turn: Turn, what: str) -> Iterator[None]:
        """One step of a turn (a model call, or one bank write), under the session's lock; none starts after Stop."""
        with self._lock:
            if turn.cancel.is_set():
                raise ChatStopped
            turn.step = what
            yield

    def _streamed(self, turn: Turn, what: str, call: Callable[[StreamingBackend], Any], *, skip: int = 0) -> Iterator[Turn]:
        """One step whose model calls end with the answer: run in a worker thread under the session's lock,
        the turn yielded each time the answer's text grows; Stop ends the generation at its next token."""
        changed = threading.Event()

        def on_text(text: str) -> None:
            if turn.cancel.is_set():
                raise ChatStopped
            turn.partial = text
            changed.set()

        def work() -> None:
            with self._step(turn, what):
                assert self.loaded is not None
                turn.streaming = True
                try:
                    call(StreamingBackend(self.loaded.backend, on_text, skip=skip))
                finally:
                    turn.streaming = False

        for _ in in_thread(work, changed, turn.cancel):
            yield turn

    @staticmethod
    def _applied(turn: Turn, results: list[ApplyResult]) -> None:
        """Record whether the turn's operations went in (each batch is one transaction: all or nothing)."""
        turn.applied = all(r.ok for r in results)
        failed = next((r.error for r in results if not r.ok), None)
        if failed:
            turn.note = f"The memory was not updated (nothing of this turn was written): {failed}"

    def _end(self, turn: Turn, status: Status, said: str, note: str | None = None) -> bool:
        """End a running turn once (Stop and the turn's own end may race): its status, what the chat says."""
        with self._ending:
            if turn.status != "running":
                return False
            turn.status, turn.step = status, ""
            turn.note = turn.note if note is None else note
            self.messages.append({"role": "assistant", "content": said})
            return True

    def _stopped(self, turn: Turn) -> None:
        if turn.status != "running":
            return
        if turn.applied:
            kept = "This turn's memory operations had already been applied (all of them)."
        elif self.loaded is not None and self.loaded.kind == "bank":
            kept = "The bank is unchanged: nothing of this turn was written."
        else:
            kept = "The answer was not finished." if turn.partial else "No answer was given."
        written = f"{turn.partial} …\n\n" if turn.partial else ""  # what the answer had said when stopped
        note = f"Stopped{' mid-answer' if turn.partial else ''}. {kept}"
        self._end(turn, "stopped", f"{written}⏹ {note}", note)


def _embedder(loaded: Loaded) -> str | None:
    return getattr(loaded.agent.options, "embedder", None)


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M")
