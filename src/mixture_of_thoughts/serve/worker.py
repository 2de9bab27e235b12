"""A bounded job queue and the generation threads that serve it.

Generation is CPU- (or GPU-) bound PyTorch work; running it on the event loop would freeze every
other request, so each request becomes a :class:`Job` run by one of a few worker threads while the
loop only relays the job's events to its client. The queue is bounded: at most ``max_pending``
jobs wait or run at once, and :meth:`Worker.submit` refuses the next one with :class:`Busy` (the
server's 429) rather than letting requests pile up behind a slow model.

A job is cancelled when its client goes away: the stream sets :attr:`Job.cancelled`, and the
generation code calls :meth:`Job.check` at every model forward, which raises :class:`Cancelled` and
frees the thread within one step. A job cancelled while still waiting is dropped without running.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import MotError

log = logging.getLogger(__name__)
END = "end"  # the last event of every job; the stream closes after it


class Busy(Exception):
    """The queue is full (HTTP 429)."""


class Cancelled(Exception):
    """Raised inside a job whose client has gone away."""


@dataclass
class Job:
    """One request's generation: ``fn(job)`` runs on a worker thread and reports through :meth:`emit`.

    Attributes:
        fn: the work; it calls ``job.emit(event, data)`` and ``job.check()``.
        loop: the event loop of the request; events are handed to it thread-safely.
        events: ``(event, data)`` pairs for the request's stream, ``(END, None)`` last.
        cancelled: set when the client disconnects.
    """

    fn: Callable[[Job], None]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: str, data) -> None:
        """Queue an event for the client (a no-op once the loop is closed)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (event, data))
        except RuntimeError:  # the event loop has shut down: nobody is listening
            self.cancelled.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the client has gone away."""
        if self.cancelled.is_set():
            raise Cancelled

    def cancel(self) -> None:
        self.cancelled.set()


class Worker:
    """``threads`` generation threads over a queue of at most ``max_pending`` waiting or running jobs.

    Counters (read by ``/api/status`` and by the tests): ``pending`` jobs accepted and not finished,
    ``running`` now, and ``finished`` / ``cancelled`` / ``failed`` totals.
    """

    def __init__(self, *, threads: int = 1, max_pending: int = 16):
        if threads < 1 or max_pending < 1:
            raise ValueError("threads and max_pending must be >= 1")
        self.max_pending = max_pending
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.pending = self.running = self.finished = self.cancelled = self.failed = 0
        self._threads = [threading.Thread(target=self._loop, name=f"mot-serve-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``, or raise :class:`Busy` when ``max_pending`` jobs are already waiting or running."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise Busy(f"the server is busy ({self.pending} requests waiting or running); try again shortly")
            self.pending += 1
        self._queue.put(job)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": self.pending, "running": self.running, "finished": self.finished,
                    "cancelled": self.cancelled, "failed": self.failed, "max_pending": self.max_pending}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads after the jobs they are running (waiting jobs are cancelled)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                self._finish(job, "cancelled")
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    def _finish(self, job: Job, outcome: str) -> None:
        job.emit(END, None)
        with self._lock:
            self.pending -= 1
            setattr(self, outcome, getattr(self, outcome) + 1)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            outcome = "finished"
            with self._lock:
                self.running += 1
            try:
                job.check()
                job.fn(job)
            except Cancelled:
                outcome = "cancelled"
            except MotError as e:  # a user's mistake found only while generating: one line, no traceback
                outcome = "failed"
                job.emit("error", {"error": str(e)})
            except Exception:  # a bug: logged with its traceback here, a plain line for the client
                outcome = "failed"
                log.exception("generation failed")
                job.emit("error", {"error": "internal error while generating (see the server's log)"})
            finally:
                with self._lock:
                    self.running -= 1
                self._finish(job, outcome)
