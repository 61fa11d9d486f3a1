"""A chat through the agents' own pipelines (webui.chat.session): a scripted memory manager over real HTTP,
a real SQLite bank with real embeddings, the tiny model; every bad input refused with its reason."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from memfactory.errors import MemFactoryError
from memfactory.memory.store import MemoryStore
from tests.waiting import wait_until
from webui.chat import bankfiles
from webui.chat.session import ChatSession, ChatStopped
from webui.chat.target import ChatTarget

TINY = "tiny://qwen3-mini"


def endpoint(server, preset: str = "memory_r1_tiny_cpu") -> ChatTarget:
    return ChatTarget(preset=preset, base_url=server.url, model="scripted", api_key_env="NO_KEY_NEEDED")


def talk(chat: ChatSession, message: str):
    """One whole turn; returns it with every step consumed."""
    turn = chat.begin(message)
    steps = [t.step for t in chat.steps(turn)]
    assert steps[-1] == ""  # the last yield is the finished turn
    return turn


def test_memory_r1_remembers_a_fact_its_correction_and_answers_from_the_corrected_memory(session, scripted):
    session.use(endpoint(scripted))
    first = talk(session, "I live in Paris")
    assert first.status == "done" and first.facts == ["The user lives in Paris"] and first.applied
    assert [(o["op"], o["old"], o["new"]) for o in first.ops] == [("ADD", None, "The user lives in Paris")]
    second = talk(session, "Actually, I moved to Berlin")
    assert [(o["op"], o["old"], o["new"]) for o in second.ops] == [("UPDATE", "The user lives in Paris",
                                                                     "The user lives in Berlin")]
    third = talk(session, "Where do I live?")
    assert third.facts == [] and third.ops == [] and third.applied is None  # a question: nothing to remember
    assert third.retrieved[0]["text"] == "The user lives in Berlin" and third.retrieved[0]["score"] > 0
    assert third.answer == "\\boxed{Berlin}"
    assert [m.text for m in session.bank.all()] == ["The user lives in Berlin"]
    assert [h.op for h in session.bank.history()] == ["ADD", "UPDATE"]
    # one extraction per turn, an update only for turns with facts, one answer per turn: the pipeline's calls
    assert scripted.app.state.calls == {"extract": 3, "update": 2, "answer": 3}
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3

    # a new session keeps the bank, and the bank is a named file that reopens in another chat
    session.new_session()
    assert session.messages == [] and session.session == 2 and session.bank.count() == 1
    assert bankfiles.list_banks() == ["chat"]
    copy = session.download()
    with MemoryStore.open_existing(copy) as downloaded:
        assert [m.text for m in downloaded.all()] == ["The user lives in Berlin"]
    later = ChatSession(session.cache)
    loads = session.cache.loads
    try:
        assert later.use(endpoint(scripted)).backend is session.loaded.backend  # one model for both chats
        assert session.cache.loads == loads
        later.open_bank("chat")
        assert talk(later, "Where do I live?").answer == "\\boxed{Berlin}"
    finally:
        later.close()
    assert session.reset_memory() == 1 and session.bank.count() == 0


def test_rmm_stores_turns_and_shows_the_reranked_candidates_with_scores(session, scripted):
    loaded = session.use(endpoint(scripted, "rmm_tiny_cpu"))
    assert loaded.kind == "bank" and not loaded.agent.reflects  # memory_source: observations -> turns as they are
    session.open_bank("rmm")
    first = talk(session, "I live in Paris")
    assert [(o["op"], o["new"]) for o in first.ops] == [("ADD", "User: I live in Paris")] and first.applied
    second = talk(session, "Which city do I live in?")
    assert {r["text"] for r in second.retrieved} == {"User: I live in Paris", "User: Which city do I live in?"}
    assert all(isinstance(r["score"], float) for r in second.retrieved)
    assert sum(r["selected"] for r in second.retrieved) == 1  # the scripted reranker keeps candidate 0
    assert second.answer == "\\boxed{Paris}"
    assert any(r["cited"] for r in second.retrieved)  # citations by content: the memory holding "Paris"
    assert "extract" not in scripted.app.state.calls and scripted.app.state.calls["rerank"] == 2


def test_memagent_reads_a_document_chunk_by_chunk_and_follow_ups_reuse_the_memory(session, scripted):
    session.use(endpoint(scripted, "memagent_tiny_test"))
    document = " ".join(f"Fact {i}: the box {i} is red." for i in range(12))  # 3 chunks of 128 characters
    session.set_document(document)
    turn = talk(session, "Which box is red?")
    chunks = [e for e in turn.trace if "chunk" in e]
    assert [e["chunk"] for e in chunks] == [0, 1, 2] and scripted.app.state.calls["read"] == 3
    assert all(e["memory"].startswith("Memory: ") for e in chunks)
    assert turn.answer.startswith("\\boxed{Memory: ") and not turn.reused_memory
    follow = talk(session, "And which one is blue?")
    assert follow.reused_memory and scripted.app.state.calls["read"] == 3  # not read again
    assert scripted.app.state.calls["memagent_answer"] == 2
    session.set_document(document + " One more.")
    talk(session, "Which box is red?")
    assert scripted.app.state.calls["read"] == 6  # a new document is read again


def test_the_no_memory_baseline_on_the_tiny_model(session):
    session.use(ChatTarget(preset="tiny_test", model=TINY))
    session.set_document("Document 1: Ava lives in Berlin.")
    turn = talk(session, "Where does Ava live?")
    assert turn.status == "done" and turn.answer.startswith("\\boxed{")
    with pytest.raises(MemFactoryError, match="keeps no memory bank"):
        session.open_bank("chat")
    session.set_document("word " * 400)
    with pytest.raises(MemFactoryError, match=r"the document is [\d,]+ tokens; the no-memory baseline reads at most 256"):
        session.begin("Where does Ava live?")


def test_bad_input_is_refused_before_anything_is_sent(session, scripted, ws):
    with pytest.raises(MemFactoryError, match="choose what to talk to first"):
        session.begin("hello")
    session.use(endpoint(scripted))
    for empty in ("", "   \n"):
        with pytest.raises(MemFactoryError, match="type a message first"):
            session.begin(empty)
    # the memagent preset caps a document at max_chunks x chunk_tokens
    session.use(endpoint(scripted, "memagent_tiny_test"))
    with pytest.raises(MemFactoryError, match="paste or upload a document first"):
        session.begin("Which box?")
    session.set_document("x" * 2000)
    with pytest.raises(MemFactoryError, match=r"the document is 500 tokens; this preset reads at most max_chunks x "
                                              r"chunk_tokens = 3 x 32 = 96"):
        session.begin("Which box?")
    assert scripted.app.state.calls == {} and session.turns == []  # nothing was sent

    # a message over the local model's context: its length, the prompt's and the context's are named
    session.use(ChatTarget(preset="memory_r1_tiny_cpu", model=TINY))
    with pytest.raises(MemFactoryError, match=r"your message is [\d,]+ tokens; the extractor's call would be [\d,]+ "
                                              r"prompt tokens \+ up to 48 new ones = [\d,]+, over the model's "
                                              r"context of 8,192 tokens. Nothing was sent"):
        session.begin("Paris " * 9000)
    assert session.turns == [] and session.bank.count() == 0

    # a checkpoint that does not exist (any more), and an endpoint that does not answer
    with pytest.raises(MemFactoryError, match="no-such-run"):
        session.use(ChatTarget(preset="memory_r1_tiny_cpu", model=TINY, checkpoint="no-such-run"))
    with pytest.raises(MemFactoryError, match="cannot reach"):
        session.use(ChatTarget(preset="memory_r1_tiny_cpu", base_url="http://127.0.0.1:9/v1", model="m"))


def test_a_bank_file_that_is_not_a_bank_or_is_locked(session, scripted, ws):
    session.use(endpoint(scripted))
    runs = bankfiles.bank_path("runs")
    with sqlite3.connect(runs) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    with pytest.raises(MemFactoryError, match="not a memory bank"):
        session.open_bank("runs")
    with pytest.raises(MemFactoryError, match="bank name '../x' may only hold"):
        session.open_bank("../x")
    session.open_bank("locked")
    talk(session, "I live in Paris")
    holder = sqlite3.connect(bankfiles.bank_path("locked"), timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another writer (a trainer, another chat) holds the bank
    try:
        turn = talk(session, "Actually, I moved to Berlin")
    finally:
        holder.rollback()
        holder.close()
    # the turn still answers; its note says the memory was not updated and why
    assert turn.status == "done" and turn.applied is False and "is locked by another connection" in turn.note
    assert "Nothing was written" in turn.note and "Traceback" not in turn.note
    assert [o["applied"] for o in turn.ops] == [False]
    assert [m.text for m in session.bank.all()] == ["The user lives in Paris"]  # the UPDATE did not half-apply
    assert talk(session, "Actually, I moved to Berlin").applied  # the lock gone, the same turn goes in


def test_stop_while_the_update_is_decided_leaves_the_bank_unchanged(session, scripted):
    session.use(endpoint(scripted))
    talk(session, "I live in Paris")
    hold = scripted.app.state.hold["update"] = threading.Event()
    scripted.app.state.arrived.pop("update", None)
    turn = session.begin("Actually, I moved to Berlin")
    seen = []
    runner = threading.Thread(target=lambda: seen.extend(t.status for t in session.steps(turn)))
    runner.start()
    arrived = scripted.app.state
    assert wait_until(lambda: "update" in arrived.arrived)  # the update call is in flight
    said: list[str] = []
    stopper = threading.Thread(target=lambda: said.append(session.stop()))
    stopper.start()
    assert wait_until(lambda: turn.cancel.is_set())
    hold.set()  # the call in flight returns; its operations must not be applied after Stop
    stopper.join(30)
    runner.join(30)
    assert said == ["Stopped. The bank is unchanged: nothing of this turn was written."]
    assert turn.status == "stopped" and turn.applied is None and seen[-1] == "stopped"
    assert [m.text for m in session.bank.all()] == ["The user lives in Paris"]
    assert session.messages[-1]["content"] == "⏹ " + said[0]
    assert talk(session, "Actually, I moved to Berlin").ops[0]["op"] == "UPDATE"  # the next turn runs normally
    assert session.stop() == "Nothing is running."


def test_a_stop_while_the_send_was_loading_the_model_sends_nothing(session, scripted):
    stops_seen = session.stops  # what the Send handler notes before it loads the model
    session.use(endpoint(scripted))
    assert session.stop() == "Nothing is running."  # Stop pressed during the load
    with pytest.raises(ChatStopped):
        session.begin("I live in Paris", stops_seen=stops_seen)
    assert session.turns == [] and session.messages == [] and scripted.app.state.calls == {}
    assert talk(session, "I live in Paris").status == "done"  # the next send is not affected


def test_the_answer_streams_and_stop_mid_answer_keeps_what_was_written(session, scripted):
    session.use(endpoint(scripted))
    talk(session, "I live in Paris")
    hold = scripted.app.state.hold_stream["answer"] = threading.Event()  # the stream pauses after "Par"
    turn = session.begin("Where do I live?")
    partials: list[str] = []
    runner = threading.Thread(target=lambda: partials.extend(t.partial for t in session.steps(turn)
                                                              if t.status == "running"))
    runner.start()
    try:
        assert wait_until(lambda: turn.partial == "\\boxed{Par")  # the first piece is shown while the answer is written
        assert session.transcript()[-1] == {"role": "assistant", "content": "\\boxed{Par ▌"}
        said: list[str] = []
        stopper = threading.Thread(target=lambda: said.append(session.stop()))
        stopper.start()
        assert wait_until(lambda: turn.cancel.is_set())
    finally:
        hold.set()  # the next piece arrives; the generation ends there, nothing more is asked
    stopper.join(30)
    runner.join(30)
    assert "\\boxed{Par" in partials and turn.status == "stopped" and turn.answer == ""
    assert said == ["Stopped mid-answer. The bank is unchanged: nothing of this turn was written."]
    assert session.messages[-1]["content"] == "\\boxed{Par …\n\n⏹ " + said[0]  # what had been written, then why it ends
    assert [m.text for m in session.bank.all()] == ["The user lives in Paris"]
    del scripted.app.state.hold_stream["answer"]
    done = talk(session, "Where do I live?")  # the next turn streams to its end
    assert done.answer == done.partial == "\\boxed{Paris}" and session.messages[-1]["content"] == done.answer


def test_two_chats_generate_at_the_same_time(ws, cache, scripted):
    """One chat's generation does not wait for another's: both answer calls are in flight at once."""
    hold = scripted.app.state.hold["answer"] = threading.Event()
    chats = [ChatSession(cache), ChatSession(cache)]
    try:
        for i, chat in enumerate(chats):
            chat.use(endpoint(scripted))
            chat.open_bank(f"tab{i}")
        threads = [threading.Thread(target=talk, args=(chat, "Where do I live?")) for chat in chats]
        for thread in threads:
            thread.start()
        both = wait_until(lambda: scripted.app.state.calls.get("answer", 0) == 2)
        hold.set()
        for thread in threads:
            thread.join(30)
        assert both, scripted.app.state.calls
        assert [c.turns[-1].status for c in chats] == ["done", "done"]
    finally:
        hold.set()
        for chat in chats:
            chat.close()


