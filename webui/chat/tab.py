"""Chat tab: talk to a memory agent and watch its memory beside the conversation.

What to talk to, the turns and the memory are ``webui.chat``'s Gradio-free modules; this file draws
the widgets and wires the events. Each browser tab has its own :class:`ChatSession` (a ``gr.State``,
closed with the tab); the models are shared through one cache, and the Send event runs several
sessions at once, so one chat's generation does not wait for another's. The answer streams into the
chat token by token. Stop tells the session, and the Send event ends by itself: the answer being
written ends at its next token, any other call in flight is waited for, nothing starts after it, and a
message whose model was still loading is not sent; Send is off until that event has ended. (Not
Gradio's ``cancels=``: a cancelled event can mark every output of Send with "Error" after Stop's own
update, hiding what the turn wrote.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from memfactory.errors import MemFactoryError
from webui import workspace
from webui.chat import bankfiles, view
from webui.chat.session import ChatSession, ChatStopped
from webui.chat.target import DEFAULT_PRESET, ChatTarget, preset_kind
from webui.i18n import t
from webui.models import BackendCache
from webui.playground.compare import checkpoint_choices, describe_error
from webui.state import UIContext, Updates, refreshed_choices, run_while_off

_CACHE = BackendCache(max_items=2)  # the chats' models (the Playground keeps its own)
SEND_CONCURRENCY = 4  # chats generating at once, across browser tabs
DOC_SUFFIXES = [".txt", ".md", ".json", ".csv"]


def _close(session: ChatSession | None) -> None:
    if session is not None:
        session.close()


@dataclass(frozen=True)
class Target:
    """The "what to talk to" widgets."""

    preset: Any
    checkpoint: Any
    model: Any
    base_url: Any
    served: Any
    key_env: Any
    temperature: Any
    max_tokens: Any

    @property
    def components(self) -> list[Any]:
        return [self.preset, self.checkpoint, self.model, self.base_url, self.served, self.key_env,
                self.temperature, self.max_tokens]

    def read(self, data: dict[Any, Any]) -> ChatTarget:
        endpoint = _text(data[self.base_url])
        return ChatTarget(preset=_text(data[self.preset]), checkpoint=_text(data[self.checkpoint]),
                          base_url=endpoint, model=_text(data[self.served] if endpoint else data[self.model]),
                          api_key_env=_text(data[self.key_env]) or "OPENAI_API_KEY",
                          temperature=float(data[self.temperature] or 0.0),
                          max_new_tokens=int(data[self.max_tokens]) if data[self.max_tokens] else None)


def _text(value: Any) -> str:
    return str(value or "").strip()


@dataclass(frozen=True)
class ChatView:
    """Every component a chat event shows; :meth:`show` is the one place that fills them."""

    state: Any
    status: Any
    chatbot: Any
    ops: Any
    retrieved: Any
    bank_table: Any
    trace: Any
    download: Any
    bank: Any
    bank_box: Any
    doc_box: Any

    @property
    def components(self) -> list[Any]:
        return [self.state, self.status, self.chatbot, self.ops, self.retrieved, self.bank_table, self.trace,
                self.download, self.bank, self.bank_box, self.doc_box]

    def show(self, session: ChatSession | None, message: str | None = None) -> Updates:
        """Updates showing ``session`` (``message``: an error or note for the status line instead)."""
        loaded = session.loaded if session is not None else None
        turn = session.turns[-1] if session is not None and session.turns else None
        bank = session.bank if session is not None else None
        if message is None:
            message = (view.status_markdown(loaded.describe(), turn, Path(bank.path).stem if bank else None,
                                            session.session)
                       if loaded is not None and session is not None else "")
        updates: Updates = {
            self.state: session, self.status: message,
            self.chatbot: session.transcript() if session is not None else [],
            self.ops: view.ops_frame(session.turns if session is not None else []),
            self.retrieved: view.retrieved_frame(turn), self.bank_table: view.bank_frame(bank),
            self.trace: view.memagent_html(turn if turn is not None and turn.trace else None),
            self.download: _download(session),
        }
        if loaded is not None:
            updates[self.bank_box] = gr.update(visible=loaded.kind == "bank")
            updates[self.doc_box] = gr.update(visible=loaded.kind != "bank")
        if bank is not None:
            updates[self.bank] = gr.update(choices=bankfiles.list_banks(), value=Path(bank.path).stem)
        return updates


def _download(session: ChatSession | None) -> Any:
    if session is None or session.bank is None or session.busy:
        return gr.update(value=None, interactive=False)
    try:
        return gr.update(value=str(session.download()), interactive=True)
    except MemFactoryError:
        return gr.update(value=None, interactive=False)


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    presets = workspace.list_presets()
    with gr.Tab(t("tab.chat"), id="chat", elem_id="mf-tab-chat") as tab:
        labels.add(tab, "tab.chat")
        labels.add(gr.Markdown(t("chat.intro")), "chat.intro", "value")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                preset = gr.Dropdown(choices=presets, value=DEFAULT_PRESET if DEFAULT_PRESET in presets else None,
                                     allow_custom_value=True, label=t("chat.preset"), elem_id="mf-chat-preset")
                labels.add(preset, "chat.preset")
                checkpoint = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label=t("pg.checkpoint"),
                                         elem_id="mf-chat-ckpt")
                labels.add(checkpoint, "pg.checkpoint")
                model = gr.Textbox(label=t("chat.model"), elem_id="mf-chat-model")
                labels.add(model, "chat.model")
                with gr.Accordion(t("pg.endpoint"), open=False) as acc:
                    labels.add(acc, "pg.endpoint")
                    base_url = gr.Textbox(placeholder="http://127.0.0.1:8000/v1", label=t("pg.base_url"),
                                          elem_id="mf-chat-url")
                    labels.add(base_url, "pg.base_url")
                    served = gr.Textbox(label=t("pg.served_model"), elem_id="mf-chat-served")
                    labels.add(served, "pg.served_model")
                    key_env = gr.Textbox(value="OPENAI_API_KEY", label=t("pg.key_env"), elem_id="mf-chat-keyenv")
                    labels.add(key_env, "pg.key_env")
                with gr.Row():
                    temperature = gr.Number(value=0.0, minimum=0.0, maximum=2.0, step=0.1,
                                            label=t("pg.temperature"), elem_id="mf-chat-temp")
                    labels.add(temperature, "pg.temperature")
                    max_tokens = gr.Number(value=0, precision=0, minimum=0, label=t("chat.max_tokens"),
                                           elem_id="mf-chat-max-tokens")
                    labels.add(max_tokens, "chat.max_tokens")
                refresh = gr.Button(t("refresh"), elem_id="mf-chat-refresh", size="sm")
                labels.add(refresh, "refresh", "value")
                kind = preset_kind(preset.value) if preset.value else None
                with gr.Group(visible=kind in (None, "bank"), elem_id="mf-chat-bank-box") as bank_box:
                    labels.add(gr.Markdown(t("chat.bank_box")), "chat.bank_box", "value")
                    bank = gr.Dropdown(choices=bankfiles.list_banks(), value=bankfiles.DEFAULT_BANK,
                                       allow_custom_value=True, label=t("chat.bank"), elem_id="mf-chat-bank")
                    labels.add(bank, "chat.bank")
                    open_bank = gr.Button(t("chat.bank_open"), elem_id="mf-chat-bank-open", size="sm")
                    labels.add(open_bank, "chat.bank_open", "value")
                    upload = gr.File(label=t("chat.bank_upload"), file_types=[bankfiles.SUFFIX, ".sqlite"],
                                     elem_id="mf-chat-bank-upload", height=90)
                    labels.add(upload, "chat.bank_upload")
                    download = gr.DownloadButton(t("chat.bank_download"), interactive=False, size="sm",
                                                 elem_id="mf-chat-bank-download")
                    labels.add(download, "chat.bank_download", "value")
                    new_session = gr.Button(t("chat.new_session"), elem_id="mf-chat-new-session", size="sm")
                    labels.add(new_session, "chat.new_session", "value")
                    confirm = gr.Checkbox(value=False, label=t("chat.reset_confirm"), elem_id="mf-chat-reset-confirm")
                    labels.add(confirm, "chat.reset_confirm")
                    reset = gr.Button(t("chat.reset"), variant="stop", elem_id="mf-chat-reset", size="sm")
                    labels.add(reset, "chat.reset", "value")
                with gr.Group(visible=kind in (None, "memagent", "direct"), elem_id="mf-chat-doc-box") as doc_box:
                    labels.add(gr.Markdown(t("chat.doc_box")), "chat.doc_box", "value")
                    document = gr.Textbox(lines=8, max_lines=20, label=t("chat.doc"), elem_id="mf-chat-doc")
                    labels.add(document, "chat.doc")
                    doc_upload = gr.File(label=t("chat.doc_upload"), file_types=DOC_SUFFIXES,
                                         elem_id="mf-chat-doc-upload", height=90)
                    labels.add(doc_upload, "chat.doc_upload")
            with gr.Column(scale=2, min_width=360):
                status = gr.Markdown(elem_id="mf-chat-status")
                chatbot = gr.Chatbot(label=t("chat.chatbot"), elem_id="mf-chat-chatbot", height=460)
                labels.add(chatbot, "chat.chatbot")
                with gr.Row(equal_height=True):
                    message = gr.Textbox(label=t("chat.message"), lines=2, scale=5, elem_id="mf-chat-msg")
                    labels.add(message, "chat.message")
                    send = gr.Button(t("chat.send"), variant="primary", scale=1, elem_id="mf-chat-send")
                    labels.add(send, "chat.send", "value")
                    stop = gr.Button(t("chat.stop"), variant="stop", scale=1, elem_id="mf-chat-stop")
                    labels.add(stop, "chat.stop", "value")
            with gr.Column(scale=2, min_width=360):
                ops = gr.Dataframe(headers=view.OPS_COLUMNS, interactive=False, wrap=True, label=t("chat.ops"),
                                   elem_id="mf-chat-ops", max_height=300)
                labels.add(ops, "chat.ops")
                retrieved = gr.Dataframe(headers=view.RETRIEVED_COLUMNS, interactive=False, wrap=True,
                                         label=t("chat.retrieved"), elem_id="mf-chat-retrieved", max_height=260)
                labels.add(retrieved, "chat.retrieved")
                bank_table = gr.Dataframe(headers=view.BANK_COLUMNS, interactive=False, wrap=True,
                                          label=t("chat.bank_table"), elem_id="mf-chat-bank-table", max_height=300)
                labels.add(bank_table, "chat.bank_table")
                with gr.Accordion(t("chat.trace"), open=True) as trace_acc:
                    labels.add(trace_acc, "chat.trace")
                    trace = gr.HTML(view.memagent_html(None), elem_id="mf-chat-trace-box")
        state = gr.State(None, delete_callback=_close)

    fields = Target(preset, checkpoint, model, base_url, served, key_env, temperature, max_tokens)
    shown = ChatView(state, status, chatbot, ops, retrieved, bank_table, trace, download, bank, bank_box, doc_box)

    def session_of(data: dict[Any, Any]) -> ChatSession:
        return data[state] if data[state] is not None else ChatSession(_CACHE)

    def failed(session: ChatSession | None, exc: BaseException) -> Updates:
        text = describe_error(exc)
        gr.Warning(text.splitlines()[0][:300])
        return shown.show(session, f"❌ {text}")

    def on_send(data: dict[Any, Any]) -> Iterator[Updates]:
        session = session_of(data)
        stops_seen = session.stops
        try:
            if session.loaded is None or session.loaded.target != fields.read(data):
                yield {**shown.show(session, "⏳ loading the model…"), message: gr.update()}
            session.use(fields.read(data))
            if session.loaded is not None and session.loaded.kind != "bank":
                session.set_document(data[document])
            turn = session.begin(data[message], stops_seen=stops_seen)
        except ChatStopped:
            yield {**shown.show(session, "⏹ Stopped before sending: the message was not sent."), message: gr.update()}
            return
        except Exception as exc:  # noqa: BLE001 - a readable line, never a traceback; the message stays typed
            yield {**failed(session, exc), message: gr.update()}
            return
        yield {**shown.show(session), message: ""}
        step = turn.step
        for _ in session.steps(turn):
            if turn.status == "running" and turn.step == step and turn.partial:  # a token: only the chat changes
                yield {chatbot: session.transcript()}
            else:
                yield {**shown.show(session), message: gr.update()}
            step = turn.step
        if turn.note and turn.status == "done":
            gr.Warning(turn.note[:300])

    send_inputs = {state, message, document, *fields.components}
    send_outputs = [*shown.components, message]
    # Send is off from the click (or Enter) until the send has ended, however it ends: a click on it before
    # then would be dropped without a word, e.g. right after Stop, while the stopped answer still waits for
    # its next token, or right after a refusal
    for trigger in (send.click, message.submit):
        run_while_off(trigger, send, on_send, send_inputs, send_outputs, concurrency_limit=SEND_CONCURRENCY,
                      concurrency_id="chat")

    def on_stop(session: ChatSession | None) -> Updates:
        if session is None:
            return shown.show(None, "Nothing is running.")
        note = session.stop()
        return shown.show(session, f"⏹ {note}" if note != "Nothing is running." else None)

    stop.click(on_stop, state, shown.components, concurrency_limit=None, show_progress="hidden")

    def guarded(action: Callable[[ChatSession, dict[Any, Any]], Updates]) -> Callable[[dict[Any, Any]], Updates]:
        """A bank or session handler whose errors become the status line."""

        def handler(data: dict[Any, Any]) -> Updates:
            session = session_of(data)
            try:
                return action(session, data)
            except Exception as exc:  # noqa: BLE001 - a readable line, never a traceback
                return failed(session, exc)
        return handler

    def do_open(session: ChatSession, data: dict[Any, Any]) -> Updates:
        session.use(fields.read(data))
        session.open_bank(_text(data[bank]))
        return shown.show(session)

    def do_upload(session: ChatSession, data: dict[Any, Any]) -> Updates:
        if not data[upload]:
            return shown.show(session)
        session.use(fields.read(data))
        session.open_bank(bankfiles.import_bank(data[upload]))
        return {**shown.show(session), upload: None}

    def do_new_session(session: ChatSession, data: dict[Any, Any]) -> Updates:
        session.new_session()
        return shown.show(session)

    def do_reset(session: ChatSession, data: dict[Any, Any]) -> Updates:
        if not data[confirm]:
            raise MemFactoryError("tick the confirmation first: Reset empties the bank, history included")
        count = session.reset_memory()
        return {**shown.show(session, f"🗑️ the bank is empty now ({count} memories removed)"), confirm: False}

    bank_inputs = {state, bank, upload, confirm, *fields.components}
    open_bank.click(guarded(do_open), bank_inputs, shown.components)
    upload.upload(guarded(do_upload), bank_inputs, [*shown.components, upload])
    new_session.click(guarded(do_new_session), bank_inputs, shown.components)
    reset.click(guarded(do_reset), bank_inputs, [*shown.components, confirm])

    def on_doc_upload(path: str | None) -> Any:
        if not path:
            return gr.update()
        try:
            return Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            gr.Warning(f"{Path(path).name} is not a UTF-8 text file ({type(exc).__name__}); paste the text instead")
            return gr.update()

    doc_upload.upload(on_doc_upload, doc_upload, document)

    def on_preset(name: str | None) -> Updates:
        kind = preset_kind(name) if name else None
        return {bank_box: gr.update(visible=kind in (None, "bank")),
                doc_box: gr.update(visible=kind in (None, "memagent", "direct"))}

    preset.change(on_preset, preset, [bank_box, doc_box], show_progress="hidden")

    def on_refresh(current_preset: str | None) -> Updates:
        # checkpoints and banks take typed values too (a folder, a new bank's name): only their lists change
        names = workspace.list_presets()
        return {preset: refreshed_choices(names, current_preset, DEFAULT_PRESET),
                checkpoint: gr.update(choices=checkpoint_choices()), bank: gr.update(choices=bankfiles.list_banks())}

    refresh_outputs = [preset, checkpoint, bank]
    refresh.click(on_refresh, preset, refresh_outputs, show_progress="hidden")
    ctx.demo.load(on_refresh, preset, refresh_outputs, show_progress="hidden")
