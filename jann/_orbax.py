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


def _is_closed_loop_completion(unraisable) -> bool:
    """A read's completion posted to an event loop that was closed (asyncio's
    call_soon_threadsafe on a closed loop)."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    frame, names = unraisable.exc_traceback, set()
    while frame is not None:
        names.add(frame.tb_frame.f_code.co_name)
        frame = frame.tb_next
    return "call_soon_threadsafe" in names


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
