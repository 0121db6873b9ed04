"""Background threads of the agent that must not take CPU from Predict (the shadow mirror, the
model summaries' fold) run at the lowest scheduling priority the calling thread can get."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: Nice value of such a thread where SCHED_IDLE is refused (Linux: per thread; 19 is the lowest).
LOWEST_NICE = 19


def lower_priority(what: str) -> str:
    """Put the calling thread (``what``, for the log) under ``SCHED_IDLE``, or else give it the nice
    value :data:`LOWEST_NICE` (on Linux a thread id names one thread; neither needs a privilege);
    returns which. Where both fail the thread runs at normal priority, logged."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (OSError, AttributeError) as exc:
        log.debug("SCHED_IDLE refused for the %s: %s", what, exc)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, LOWEST_NICE)
        return f"nice {LOWEST_NICE}"
    except (OSError, AttributeError) as exc:
        log.info("the %s keeps its priority: %s", what, exc)
    return "normal"
