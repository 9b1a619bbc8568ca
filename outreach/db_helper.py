"""The dispatcher's database work in a helper process: ``[dispatch] db_process = true``.

Why: one Python process runs one thread of Python at a time (the GIL). A dispatcher sending
thousands of SMS is CPU-bound in Python on two fronts at once - the event loop driving the HTTP
requests, and the database thread claiming, preparing, hashing, chaining and recording - and
the two take turns on one core while the other idles. Measured (``bench/RESULTS.md``, 5,000
SMS to a 50 ms gateway at concurrency 100, both modes side by side in each run): with the
database work in a thread the process sat at 100-104 % of one core and the medians of five
runs were 1.35-1.98x the ideal time; with the helper each process used 55-77 % of a core and
the medians were 1.25x and 1.26x in the final code.

Why not simply two dispatcher processes: on SQLite they take turns on its single write lock,
and each holds it longer than its work needs because inside its transaction it waits for its
own event loop to let go of the GIL (measured: the lock held 97 % of such a run). One helper
is the only writer, and has no event loop to wait for.

What moves and what does not: the helper holds a dispatcher of its own, built from the same
config file, the same environment (the channels' ``prepare`` needs their settings) and the
same worker name (leases are held by name). The main process keeps everything that talks to
the outside world - sends, retries, concurrency, the heartbeat, signals - and asks the helper
for the named operations in :data:`outreach.dispatch.DB_OPERATIONS`, passing its own clock
reading with each, so a simulated ``--at`` clock means the same on both sides. The order of
operations, and so the proof and the crash guarantees, are the dispatcher's, unchanged: a
claim is committed before its sends start, an outcome counted once committed.

Failure: if the helper dies, the operations waiting for it and every later one fail with
:class:`HelperFailed`, and the pass ends with it (sends in flight finish; what could not be
recorded is recovered as ``unknown`` after its lease, as after any crash). If the main process
dies, the helper finds its request pipe closed and exits. The helper ignores SIGINT/SIGTERM:
the main process decides when work stops, and a Ctrl-C reaching the whole process group must
not kill the one process that records outcomes.

Cost: starting the helper imports the application once more (about a second here), so it is
started once per ``App`` - ``outreach worker`` keeps it for all its ticks - and stopped by
``App.close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import dataclasses
import io
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from channels.base import ChannelError, Outgoing, Permanent, Prepared, Receipt, Transient, Unknown

if TYPE_CHECKING:
    from outreach.dispatch import Dispatcher

__all__ = ["DbHelper", "HelperFailed"]

#: Longest a helper may take to import the application and build its dispatcher.
_START_TIMEOUT = 120.0


class HelperFailed(RuntimeError):
    """The helper process could not start, or stopped answering."""


class DbHelper:
    """A helper process running one dispatcher's database operations, one at a time.

    Requests and answers are pickled over the helper's stdin/stdout (its own prints go to
    stderr). Requests are pipelined: a writer thread sends each as soon as it is made, a reader
    thread hands each answer to its caller, so the helper starts its next operation while this
    process is still unpacking the last answer. The helper runs them in the order they were
    made - as the dispatcher's own database thread did.
    """

    def __init__(self, config_path: Path, env: Mapping[str, str], owner: str) -> None:
        self.config_path = config_path
        self.owner = owner
        self._env = dict(env)  # the channels' settings, secrets included: never logged
        self._proc: subprocess.Popen[bytes] | None = None
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = deque()
        self._lock = threading.Lock()  # _waiting's order is the order requests are queued
        self._threads: list[threading.Thread] = []
        self._failed: HelperFailed | None = None

    def start(self) -> None:
        """Start the process and wait until its dispatcher is built (about a second)."""
        if self._proc is not None:
            return
        proc = subprocess.Popen(
            # (not "-m outreach.db_helper": the helper's functions must pickle by their
            # module's real name, not as __main__'s)
            [sys.executable, "-c", "import sys, outreach.db_helper as h; sys.exit(h.main())"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._failed = None
        try:
            _write_frame(proc.stdin, _dumps((str(self.config_path), self._env, self.owner), {}))
            status, value = _loads(_read_frame(proc.stdout))
            if status == "error":
                raise value
        except Exception as exc:
            self.close()
            raise HelperFailed(
                f"the database helper process did not start ({type(exc).__name__}: {exc}); "
                "set [dispatch] db_process = false to run without it"
            ) from exc
        self._threads = [
            threading.Thread(target=self._send_requests, name="outreach-db-helper-w", daemon=True),
            threading.Thread(target=self._read_answers, name="outreach-db-helper-r", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def call(self, method: str, now: datetime, args: tuple[Any, ...]) -> Any:
        if self._proc is None:
            self.start()
        if method == "record_retry":  # (job, the transient failure, delay)
            args = (args[0], portable(args[1]), *args[2:])
        # Pickled here, so a request that cannot be sent fails its caller alone.
        frame = _dumps((method, now, args), _TO_HELPER)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._failed is not None:
                raise self._failed
            self._waiting.append((loop, future))
            self._outbox.put(frame)
        return await future

    def _send_requests(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        while True:
            frame = self._outbox.get()
            if frame is None:
                break
            try:
                _write_frame(proc.stdin, frame)
            except OSError:
                break  # the helper is gone: the reader reports it
        with contextlib.suppress(OSError):
            proc.stdin.close()

    def _read_answers(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while True:
            try:
                status, value = _loads(_read_frame(proc.stdout))
            except EOFError:
                break
            except Exception as exc:  # noqa: BLE001 - an answer that cannot be read
                self._answer(None, exc, broken=False)
                continue
            if status == "error":
                self._answer(None, value, broken=False)
            else:
                self._answer(value, None, broken=False)
        code = proc.wait()
        self._answer(None, None, broken=True, code=code)

    def _answer(
        self, value: Any, error: BaseException | None, *, broken: bool, code: int | None = None
    ) -> None:
        """Hand the oldest waiting caller its answer; when the helper is gone, fail them all."""
        with self._lock:
            if broken:
                if self._failed is None:
                    self._failed = HelperFailed(
                        "the database helper process stopped"
                        + (f" (exit status {code})" if code else "")
                    )
                failing = list(self._waiting)
                self._waiting.clear()
            else:
                failing = []
                if not self._waiting:
                    return
                loop, future = self._waiting.popleft()
        if broken:
            for loop, future in failing:
                loop.call_soon_threadsafe(_settle, future, None, self._failed)
            return
        loop.call_soon_threadsafe(_settle, future, value, error)

    def close(self) -> None:
        """Stop the helper: it finishes what it was asked, sees its input end, exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._threads:
            self._outbox.put(None)  # the writer closes the helper's stdin after the last request
        else:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._outbox = queue.SimpleQueue()
        if proc.stdout is not None:
            proc.stdout.close()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


# -------------------------------------------------------------------- in the helper process


def _serve(requests: IO[bytes], answers: IO[bytes]) -> int:
    dispatcher: Dispatcher | None = None
    while True:
        try:
            frame = _read_frame(requests)
        except EOFError:  # the main process closed us, or died
            return 0
        try:
            request = _loads(frame)
            if dispatcher is None:
                dispatcher = _build(*request)
                value: Any = "ready"
            else:
                value = _call(dispatcher, *request)
            answer = _dumps(("ok", value), _FROM_HELPER)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            answer = _error(exc)
        try:
            _write_frame(answers, answer)
        except BrokenPipeError:
            return 0


def _build(config_path: str, env: dict[str, str], owner: str) -> Dispatcher:
    from outreach.app import App
    from outreach.runtime import tune_gc

    app = App.open(Path(config_path), migrate=False)
    dispatcher = app.dispatcher(app.build_channels(env), helper=False)
    dispatcher.owner = owner
    tune_gc()
    return dispatcher


def _call(dispatcher: Dispatcher, method: str, now: datetime, args: tuple[Any, ...]) -> Any:
    from outreach.dispatch import DB_OPERATIONS

    if method not in DB_OPERATIONS:
        raise RuntimeError(f"database helper: no operation {method!r}")
    dispatcher.now = lambda: now
    value = getattr(dispatcher, method)(*args)
    if method == "claim_batch":
        for job in value[0]:
            _jobs[job.attempt_id] = job
    elif method == "record_outcomes":
        for outcome in args[0]:
            _jobs.pop(outcome.job.attempt_id, None)
    return value


def _error(exc: Exception) -> bytes:
    try:
        return _dumps(("error", exc), _FROM_HELPER)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: say what it was
        plain = RuntimeError(f"database helper: {type(exc).__name__}: {exc}")
        return _dumps(("error", plain), _FROM_HELPER)


# ------------------------------------------------------------------------------ the wire
#
# Pickle, with two costs taken out (measured per claimed job: 40 us to pickle and 40 to
# unpickle, each way, against well under a millisecond of work per SMS):
# - aware datetimes pickle through their time zone object (7 us each): here UTC instants
#   travel as integer microseconds;
# - a job going back with its outcome carried its whole notice: here it travels as its
#   attempt id, and the helper uses its own copy, kept since the claim (``_jobs``).

_FRAME = struct.Struct("!Q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_jobs: dict[int, Any] = {}  # in the helper: claimed jobs whose outcome is not yet recorded


def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_FRAME.pack(len(data)))
    out.write(data)
    out.flush()


def _read_frame(inp: IO[bytes]) -> bytes:
    head = inp.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _FRAME.unpack(head)
    data = inp.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return data


def _utc(us: int) -> datetime:
    return _EPOCH + us * _US


def _reduce_datetime(value: datetime) -> Any:
    if value.tzinfo is UTC:
        return _utc, ((value - _EPOCH) // _US,)
    return value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _by_fields(cls: type[Any]) -> Callable[[Any], Any]:
    names = tuple(f.name for f in dataclasses.fields(cls))

    def reduce(value: Any) -> Any:
        return cls, tuple([getattr(value, n) for n in names])

    return reduce


class Relayed(Exception):
    """An exception from a channel that is not one of the three failure types, as the helper
    sees it: its type's name and message (and ``code``), which is all the dispatcher records."""

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


def portable(exc: BaseException | None) -> BaseException | None:
    """The failure as the records need it, in a form that surely pickles.

    A channel may raise its own subclass of Transient/Permanent/Unknown (with an ``__init__``
    of its own) or any other exception (holding a socket, say). The dispatcher records only
    the detail, code, reply, transcript, Retry-After and bad-recipient flag - and for any other
    exception ``"Type: message"`` - so that is what crosses, as the plain class.
    """
    if exc is None or type(exc) in (Transient, Permanent, Unknown):
        return exc
    if isinstance(exc, ChannelError):
        kw: dict[str, Any] = {
            "code": exc.code,
            "response": exc.response,
            "transcript": exc.transcript,
        }
        if isinstance(exc, Transient):
            return Transient(exc.detail, retry_after=exc.retry_after, **kw)
        if isinstance(exc, Permanent):
            return Permanent(exc.detail, bad_recipient=exc.bad_recipient, **kw)
        return Unknown(exc.detail, **kw)
    code = getattr(exc, "code", None)
    return Relayed(f"{type(exc).__name__}: {exc}", None if code is None else str(code))


def _reduce_outcome(outcome: Any) -> Any:
    o = outcome
    return type(o), (o.job, o.state, o.receipt, portable(o.error), o.at, o.tries, o.reason)


def _job(attempt_id: int, try_number: int) -> Any:
    job = _jobs[attempt_id]
    job.try_number = try_number
    return job


def _job_by_id(job: Any) -> Any:
    return _job, (job.attempt_id, job.try_number)


def _tables() -> tuple[dict[type[Any], Any], dict[type[Any], Any]]:
    from outreach.dispatch import DispatchReport, Job, Outcome

    common: dict[type[Any], Any] = dict(copyreg.dispatch_table)
    common[datetime] = _reduce_datetime
    for cls in (Outgoing, Prepared, Receipt, DispatchReport):
        common[cls] = _by_fields(cls)
    common[Outcome] = _reduce_outcome
    to_helper = {**common, Job: _job_by_id}
    from_helper = {**common, Job: _by_fields(Job)}
    return to_helper, from_helper


_TO_HELPER, _FROM_HELPER = _tables()


def _loads(data: bytes) -> Any:
    # Only ever what the other end of our own private pipe wrote: this process's parent or
    # child, same program, same user.
    return pickle.loads(data)  # noqa: S301


def _dumps(value: Any, table: dict[type[Any], Any]) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = table
    pickler.dump(value)
    return buffer.getvalue()


def main() -> int:
    # The main process decides when work stops (see the module docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answers get the real stdout; anything else printed goes to stderr, not into the pipe.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = os.fdopen(os.dup(0), "rb")
    return _serve(requests, answers)
