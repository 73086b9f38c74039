"""wasi:clocks/monotonic-clock and wasi:clocks/wall-clock.

The monotonic clock is ``time.monotonic_ns``, the same clock that
:class:`~wasmhost.wasi.io_poll.Pollable` deadlines and ``WasiCtx.block_until``
use, so instants handed to the guest can be used as deadlines directly.

``wasi:clocks/timezone`` is ``@unstable(feature = clocks-timezone)`` in 0.2.12
and is deliberately not provided.
"""
from __future__ import annotations

import threading
import time
from typing import Literal

from .ctx import WasiCtx
from .interface import HostInterface, Trap
from .io_poll import Pollable

monotonic_clock = HostInterface("wasi:clocks/monotonic-clock")
wall_clock = HostInterface("wasi:clocks/wall-clock")

NS_PER_S = 1_000_000_000

# Condition.wait rejects timeouts above threading.TIMEOUT_MAX (OverflowError),
# so a deadline further away than this is treated as "never" (see _deadline).
_MAX_WAIT_NS = int(threading.TIMEOUT_MAX) * NS_PER_S


def _resolution_ns(clock: Literal["monotonic", "time"]) -> int:
    return max(1, round(time.get_clock_info(clock).resolution * NS_PER_S))


def _never() -> bool:
    return False


def _deadline(deadline_ns: int) -> Pollable:
    """A pollable ready at the monotonic ``deadline_ns``.

    A deadline too far away to wait for (durations near u64::MAX) waits
    forever instead of trapping, as the spec gives no error path; the wait
    still ends when the store is interrupted.
    """
    if deadline_ns - time.monotonic_ns() > _MAX_WAIT_NS:
        return Pollable(check=_never)
    return Pollable(deadline_ns=deadline_ns)


# -- wasi:clocks/monotonic-clock ------------------------------------------------

@monotonic_clock.func("now")
def monotonic_now(ctx: WasiCtx) -> int:
    return time.monotonic_ns()


@monotonic_clock.func("resolution")
def monotonic_resolution(ctx: WasiCtx) -> int:
    return _resolution_ns("monotonic")


@monotonic_clock.func("subscribe-instant")
def subscribe_instant(ctx: WasiCtx, when: int) -> Pollable:
    # An instant in the past gives a pollable that is ready at once.
    return _deadline(when)


@monotonic_clock.func("subscribe-duration")
def subscribe_duration(ctx: WasiCtx, when: int) -> Pollable:
    return _deadline(time.monotonic_ns() + when)


# -- wasi:clocks/wall-clock -------------------------------------------------------

def _datetime(ns: int) -> dict[str, int]:
    seconds, nanoseconds = divmod(ns, NS_PER_S)
    return {"seconds": seconds, "nanoseconds": nanoseconds}


@wall_clock.func("now")
def wall_now(ctx: WasiCtx) -> dict[str, int]:
    ns = time.time_ns()
    if ns < 0:
        # datetime.seconds is a u64: a system clock set before 1970 cannot be represented.
        raise Trap("wall-clock.now: the system clock is before the Unix epoch")
    return _datetime(ns)


@wall_clock.func("resolution")
def wall_resolution(ctx: WasiCtx) -> dict[str, int]:
    return _datetime(_resolution_ns("time"))


INTERFACES = (monotonic_clock, wall_clock)
