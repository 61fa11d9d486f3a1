"""A real OpenAI-compatible server that plays a scripted memory manager, for the chat's tests.

It reads each prompt the way a competent model would and answers in the agents' own formats, so a
conversation through the real Memory-R1 / RMM / MemAgent pipelines (real HTTP, real SQLite bank,
real embeddings) has a known outcome: "I live in Paris" extracts a fact the updater ADDs, "I moved to
Berlin" one it UPDATEs over the Paris memory, and "Where do I live?" finds nothing to remember and is
answered from the first memory retrieved. MemAgent's updates keep each section; its answers quote
the memory. ``app.state.calls`` counts the calls by kind; ``app.state.hold[kind]`` (a threading.Event)
holds calls of that kind until it is set, and ``app.state.arrived[kind]`` says one is waiting. A
``stream: true`` request is answered in server-sent chunks (``app.state.hold_stream[kind]`` holds the
stream after its first chunk).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

PLACE = re.compile(r"(?:live in|moved to|lives in) ([A-Z][a-z]+)")


def _user_and_prefix(messages: list[dict]) -> tuple[str, str]:
    prefix = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return user, prefix


def kind_of(user: str) -> str:
    if "<section>" in user:
        return "read"
    if "<memory>" in user:
        return "memagent_answer"
    if "worth remembering" in user:
        return "extract"
    if "You manage a memory bank" in user:
        return "update"
    if "Candidate memories:" in user:
        return "rerank"
    return "answer"


def reply(user: str) -> str:
    kind = kind_of(user)
    if kind == "read":
        section = user.split("<section>\n", 1)[1].split("\n</section>", 1)[0]
        return "Memory: " + " ".join(section.split())[:80]
    if kind == "memagent_answer":
        memory = user.split("<memory>\n", 1)[1].split("\n</memory>", 1)[0]
        return memory[:40] + "}"
    if kind == "extract":
        dialogue = user.split("\n\n", 1)[1].rsplit("\n\nAnswer with", 1)[0]
        facts = [{"key": "user", "value": f"The user lives in {m.group(1)}", "type": "fact", "tags": ["user"]}
                 for m in PLACE.finditer(dialogue)]
        return json.dumps(facts)
    if kind == "update":
        existing = user.split("Existing memories:\n", 1)[1].split("\n\nNew facts:", 1)[0]
        facts = user.split("New facts:\n", 1)[1].split("\n\nAnswer with", 1)[0]
        memories = [json.loads(line) for line in existing.splitlines() if line.startswith("{")]
        new = [json.loads(line)["fact"] for line in facts.splitlines() if line.startswith("{")]
        home = next((m for m in memories if "lives in" in m["text"]), None)
        if home is not None:
            return json.dumps([{"op": "UPDATE", "id": home["id"], "text": new[0]}])
        return json.dumps([{"op": "ADD", "text": text} for text in new])
    if kind == "rerank":  # keep the candidates that say where someone lives
        lines = re.findall(r"^\[(\d+)\] (.*)$", user.split("Candidate memories:\n", 1)[1], re.MULTILINE)
        return json.dumps([int(i) for i, text in lines if PLACE.search(text)][:1] or [0])
    found = PLACE.search(user.split("Question:", 1)[0])
    return f"{found.group(1) if found else 'unknown'}}}"


async def _pieces(app: FastAPI, kind: str, text: str):
    """``text`` as OpenAI's server-sent chunks, three characters a chunk; ``app.state.hold_stream[kind]``
    (an Event) holds the stream after its first chunk until it is set (a Stop mid-answer)."""
    for start in range(0, len(text), 3):
        chunk = {"choices": [{"index": 0, "delta": {"content": text[start:start + 3]}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
        hold = app.state.hold_stream.get(kind)
        if start == 0 and hold is not None:
            await asyncio.to_thread(hold.wait, 60)
    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    yield "data: [DONE]\n\n"


def scripted_manager_app() -> FastAPI:
    app = FastAPI()
    app.state.calls = {}
    app.state.hold = {}
    app.state.arrived = {}
    app.state.hold_stream = {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        user, prefix = _user_and_prefix(body["messages"])
        kind = kind_of(user)
        app.state.calls[kind] = app.state.calls.get(kind, 0) + 1
        app.state.arrived.setdefault(kind, threading.Event()).set()
        hold = app.state.hold.get(kind)
        if hold is not None:
            await asyncio.to_thread(hold.wait, 60)
        text = reply(user)
        if kind in ("answer", "memagent_answer") and not prefix.endswith("{"):
            text = "\\boxed{" + text
        if kind == "rerank" and prefix.endswith("["):
            text = text[1:]
        if body.get("stream"):
            return StreamingResponse(_pieces(app, kind, text), media_type="text/event-stream")
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app
