"""How a dico command stops on SIGINT (Ctrl-C) and SIGTERM (`kill`, schedulers before preemption): the same way at
any moment, as one line and exit 130 or 143, with nothing half-written.

Both signals raise a KeyboardInterrupt in the main thread (`Terminated` for SIGTERM), so every cleanup written for
Ctrl-C (temporary files removed, emergency checkpoints) serves both. Python loses such an exception where it cannot
propagate: raised inside a weakref callback, a __del__ or a C++ destructor during an import, it is printed as
"Exception ignored ..." (or not at all) and the program carries on. The handlers therefore also remember the signal,
and `stop_if_signalled()` raises it again at the safe points: right before an output is renamed into place, and
before a command reports success.

Imports are where most of that happened (issue 21: the lost Ctrl-C, a RecursionError from a diffusers module left
half-built in sys.modules, an abort from torch's C++ unable to unwind, a process killed by SIGINT after it had
handled it because the interrupt crossed an exec() of a string), so a signal that arrives during an import is
raised just after it: the handler asks for the signal again every DEFER_S seconds until no import is under way
(or DEFER_LIMIT_S have passed).
"""

import os
import signal
import threading
import time
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as Ctrl-C stops."""


MESSAGES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
DEFER_S = 0.02
DEFER_LIMIT_S = 10.0  # an import that hangs (a network mount, a lock) is interrupted all the same
IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_received = []  # the signals that arrived while the handlers were installed (signals are per process, so is this)
_first_at = []  # when the first of them arrived (time.monotonic)


def exception_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_of(stop: KeyboardInterrupt) -> int:
    return signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT


def message(signum: int) -> str:
    """'interrupted' (SIGINT) or 'terminated' (SIGTERM)."""
    return MESSAGES[signum]


def exit_code(signum: int) -> int:
    """128 + the signal number, as shells report a process that a signal stopped: 130 or 143."""
    return 128 + int(signum)


def _importing(frame) -> bool:
    """Whether the interrupted code runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


def _handle(signum, frame):
    if signum not in _received:
        _received.append(signum)
        _first_at.append(time.monotonic())
    if _importing(frame) and time.monotonic() - _first_at[0] < DEFER_LIMIT_S:  # ask again once the import is over
        timer = threading.Timer(DEFER_S, _ask_again, (signum,))
        timer.daemon = True
        timer.start()
        return
    raise exception_for(signum)


def _ask_again(signum: int) -> None:
    if signal.getsignal(signum) is _handle:  # still ours: the command has not finished meanwhile
        os.kill(os.getpid(), signum)


def received():
    """The first signal that arrived while the handlers were installed, or None."""
    return _received[0] if _received else None


def stop_if_signalled() -> None:
    """Raise the remembered signal again (KeyboardInterrupt or Terminated), if one arrived; a no-op otherwise, and
    where dico's handlers are not installed (a library user's own program). Call it right before making an output
    final, so a signal that some library swallowed never lets a run the user stopped report success."""
    if _received:
        raise exception_for(_received[0])


def install() -> None:
    """Install the handlers for the rest of the process: the `dico` program does it first thing, so that a signal
    during its own start-up (a second or more of imports) stops it the same way. Handlers someone else installed
    and signals the process was started to ignore are left alone, as is any thread but the main one."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in MESSAGES:
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(signum, _handle)


@contextmanager
def stop_on_signals(then_ignore: bool = False):
    """While active, SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated, and both are remembered for
    `stop_if_signalled`; one remembered before (during start-up) is raised on entry. The previous handlers come back
    after, or with `then_ignore` (a program about to exit, its work done or its error reported) the signals are
    ignored from then on. A signal the process was started to ignore (nohup, `cmd &` in a script) stays ignored.
    Outside the main thread, where Python cannot install handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in MESSAGES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _handle)
    try:
        stop_if_signalled()  # one that install()'s handlers deferred while the program was starting
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if then_ignore else handler)
        _received.clear()
        _first_at.clear()
