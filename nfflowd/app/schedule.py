"""Real-time scheduling for the daemon (config key ``sched_priority``,
1-99; off by default).  A table flush makes the kernel emit events faster
than in any steady state, and a daemon sharing its CPU with the flush falls
behind and may lose events; ulogd2 makes itself SCHED_RR 99 for that reason.
A real-time process that spins takes a CPU, hence opt-in.
"""
from __future__ import annotations

import os

__all__ = ["set_realtime", "realtime_priority", "describe", "NEEDS"]

# what a refusal of set_realtime usually means, for the daemon's warning and
# for check
NEEDS = ("SCHED_RR needs root or CAP_SYS_NICE, and under systemd RestrictRealtime=no "
         "(see init/nfflowd.service)")


def set_realtime(priority: int) -> None:
    """SCHED_RR at ``priority`` (1-99) for the calling thread, and the
    threads it starts afterwards (round robin: real-time processes of equal
    priority on one CPU take turns).  Raises OSError (EPERM without root or
    CAP_SYS_NICE, or under systemd's RestrictRealtime=yes)."""
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))


def realtime_priority(pid: int = 0) -> int:
    """The real-time priority of ``pid`` (0: this thread), 0 under a normal
    policy (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE)."""
    if os.sched_getscheduler(pid) in (os.SCHED_FIFO, os.SCHED_RR):
        return os.sched_getparam(pid).sched_priority
    return 0


def describe(pid: int = 0) -> str:
    """The scheduling policy of ``pid`` (0: this thread), as "SCHED_FIFO 99"
    or "SCHED_OTHER"."""
    policy = os.sched_getscheduler(pid)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO",
             os.SCHED_RR: "SCHED_RR", os.SCHED_BATCH: "SCHED_BATCH",
             os.SCHED_IDLE: "SCHED_IDLE"}
    name = names.get(policy, f"policy {policy}")
    prio = realtime_priority(pid)
    return f"{name} {prio}" if prio else name
