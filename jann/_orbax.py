"""Orbax as the checkpoint module uses it: a checkpointer, and the leftovers of a failed
read kept off stderr.

Orbax runs each read in an event loop of its own and closes that loop when the read
fails; the tensorstore reads still in flight then complete into the closed loop, and
Python prints each as an unraisable `RuntimeError: Event loop is closed` traceback,
seconds later, while the user already holds jann's CheckpointError. After a failed read
those errors, and only those, are dropped; every other unraisable exception still
reaches the hook that was there before.
"""

from __future__ import annotations

import sys

__all__ = ["checkpointer", "quiet_failed_read_leftovers"]


def checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


_CLOSED = "Event loop is closed"


def _posted_to_closed_loop(exc, traceback) -> bool:
    """exc is asyncio's error for call_soon_threadsafe on a closed loop."""
    if not isinstance(exc, RuntimeError) or str(exc) != _CLOSED:
        return False
    names = set()
    while traceback is not None:
        names.add(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    return "call_soon_threadsafe" in names


def _is_closed_loop_completion(unraisable) -> bool:
    """A read's completion posted to an event loop that was closed: asyncio's error
    itself, or an error raised from it (its cause or context, or one whose message
    quotes it: a completion callback that wrapped it, seen once in a CI run)."""
    exc, traceback, seen = unraisable.exc_value, unraisable.exc_traceback, 0
    while exc is not None and seen < 8:
        if _posted_to_closed_loop(exc, traceback) or repr(RuntimeError(_CLOSED)) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        traceback, seen = getattr(exc, "__traceback__", None), seen + 1
    return False


def quiet_failed_read_leftovers() -> None:
    """From now on, drop the closed-loop completions of reads that a failed Orbax read
    left in flight (installed once; other unraisable exceptions pass through)."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_completions", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_completion(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_completions = True
    sys.unraisablehook = hook
