"""Stop requests from SIGINT/SIGTERM that survive libraries swallowing the exception.

The CLI's signal handlers record the signal here *and* raise (KeyboardInterrupt / Terminated). The raise stops
most work at once, but a signal can land where Python or a library discards exceptions: a bare ``except:`` around
an import, a weakref callback ("Exception ignored in ..."), ``__del__``. :func:`check`, called between the steps of
long operations and before their final write, raises the recorded stop again, so such a command still stops before
writing its result and exits 130/143.
"""

from __future__ import annotations

import signal

from accelserve.errors import Terminated

_received: list[int] = []


def record(signum: int) -> None:
    _received.append(signum)


def reset() -> None:
    _received.clear()


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _received[-1] if _received else None


def check() -> None:
    """Raise the recorded stop (Terminated for SIGTERM, KeyboardInterrupt for SIGINT), if there is one."""
    signum = requested()
    if signum == signal.SIGTERM:
        raise Terminated()
    if signum is not None:
        raise KeyboardInterrupt()
