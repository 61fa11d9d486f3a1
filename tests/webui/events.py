"""Reading a built app's event wiring in tests: which functions an event runs, in order."""

from __future__ import annotations

from typing import Any

from webui.state import button_on


def event_chain(demo, first) -> list:
    """``first`` (a block function of ``demo``) and every ``.then`` step after it, in order."""
    chain = [first]
    while after := [fn for fn in demo.fns.values() if fn.trigger_after == chain[-1]._id]:
        chain.append(after[0])
    return chain


def turns_a_button_off(fn) -> bool:
    """Whether ``fn`` is the first step of ``webui.state.run_while_off``."""
    return not fn.inputs and len(fn.outputs) == 1 and fn.fn() == button_on(False)


def handlers(demo, block, event: str | None = None) -> list[Any]:
    """The functions events of ``block`` (or only its ``event``) run; for a ``run_while_off`` event,
    the work between turning the button off and on."""
    firsts = [fn for fn in demo.fns.values()
              if any(t[0] == block._id and event in (None, t[1]) for t in fn.targets)]
    return [event_chain(demo, fn)[1] if turns_a_button_off(fn) else fn for fn in firsts]
