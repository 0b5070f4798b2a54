"""Logging for the server process that an attacker can neither flood nor block.

Why: two incidents were measured with the plain ``logging.basicConfig`` setup.

1. Flood. Refused connections from one address wrote 629 KB/s of log (54 GB a
   day): one line per refused connection, and nothing limited how many.
2. Block. With stderr on a pipe nobody drained, the write inside the logging
   call blocked, and since the accept thread logs, it stopped accepting: new
   users timed out.

How:

- :func:`configure` puts one :class:`logging.handlers.QueueHandler` on the root
  logger. A log call only formats the record and puts it in a *bounded* queue
  with ``put_nowait``; when the queue is full the record is dropped and
  counted, never waited for. One daemon thread (a
  :class:`logging.handlers.QueueListener` owned by :class:`LogService`) drains
  the queue and writes to the stream. If the stream blocks forever, only that
  thread is stuck; when it is free again it writes one line saying how many
  records were lost ("N linhas de log descartadas: fila cheia").
- :class:`RateLimitFilter`, on that handler, lets at most N records of one kind
  through per time window and counts the rest. A kind is the logger, the
  level and the *unformatted* message template (plus an optional
  ``extra={"chave": ...}`` to tell apart, e.g., client addresses), so an
  attacker who varies the arguments still hits the same limit. When the window
  ends, one summary line says how many were suppressed
  ("... (N mensagens semelhantes suprimidas nos últimos X s)"). Errors are
  limited too, with a larger allowance.
- A stream that raises (closed, EPIPE) costs a counter, never a traceback:
  printing one would be the very write to stderr that can block.
- At exit, ``logging.shutdown()`` must not wait for a write stuck on a full
  pipe, so the writer holds no handler lock while writing and its ``flush()``
  does nothing (each line is flushed as it is written).

Callers must never pass message contents, passwords or other secrets to a log
call: this module limits *how much* is logged, not *what*.

Usage in the server's ``main()``::

    service = diario.configure(args.log_level)
    try:
        ...  # run the server
    finally:
        service.stop()
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_SIZE = 10_000
RATE_WINDOW = 10.0  # seconds
RATE_ALLOWANCE = 10  # records of one kind per window, below ERROR
ERROR_ALLOWANCE = 50  # records of one kind per window, at ERROR and above
MAX_TRACKED_KINDS = 1024  # bound on the rate limiter's memory
SWEEP_INTERVAL = 1.0  # seconds between checks for summaries that are due
FLUSH_INTERVAL = 1.0  # seconds between the listener's checks when idle
STOP_TIMEOUT = 1.0
EXAMPLE_MAX_CHARS = 200  # of the message quoted in a summary line
GROUP_ATTRIBUTE = "chave"  # extra={"chave": ...} groups records further
SUMMARY_ATTRIBUTE = "diario_resumo"  # marks records this module made

DROPPED_TEXT = "%d linhas de log descartadas: fila cheia"
SUMMARY_TEXT = "%s (%d mensagens semelhantes suprimidas nos últimos %s s)"
MALFORMED_TEXT = "mensagem de log malformada em %s:%d: %r"

Clock = Callable[[], float]
Sink = Callable[[logging.LogRecord], object]
Kind = tuple[str, int, str, Hashable]  # logger name, level, template, group


def _own_record(name: str, level: int, msg: str, args: tuple) -> logging.LogRecord:
    """A record made by this module; the rate limiter always lets it through."""
    record = logging.LogRecord(name, level, __file__, 0, msg, args, None)
    setattr(record, SUMMARY_ATTRIBUTE, True)
    return record


class _KindState:
    """Counts for one kind of record in its current window."""

    __slots__ = ("example", "passed", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.passed = 0
        self.suppressed = 0
        self.example = ""  # the first suppressed message, quoted in the summary


class RateLimitFilter(logging.Filter):
    """Let at most ``allowance`` records of one kind through per ``window`` seconds.

    A kind is ``(logger name, level, unformatted template, extra "chave")``.
    Suppressed records are counted; when a kind's window ends (seen on its next
    record, on a sweep at most once per second on any record, or on
    :meth:`flush`), a summary record goes to ``sink``. Records at ERROR and
    above get ``error_allowance`` instead, so an attacker cannot trigger
    unbounded error logging either. At most ``max_kinds`` kinds are tracked;
    the least recently seen is forgotten first (after its summary is sent).

    ``sink`` defaults to the record's own logger, which suits a filter placed
    on a handler: summaries carry a mark that lets them through. ``clock`` is
    injectable so tests need no sleeping. Thread-safe; the sink is never called
    with the lock held.
    """

    def __init__(
        self,
        allowance: int = RATE_ALLOWANCE,
        error_allowance: int = ERROR_ALLOWANCE,
        window: float = RATE_WINDOW,
        max_kinds: int = MAX_TRACKED_KINDS,
        clock: Clock = time.monotonic,
        sink: Sink | None = None,
    ) -> None:
        super().__init__()
        if allowance < 0 or error_allowance < 0 or window <= 0 or max_kinds < 1:
            raise ValueError("limites do filtro de log inválidos")
        self.allowance = allowance
        self.error_allowance = error_allowance
        self.window = window
        self.max_kinds = max_kinds
        self.clock = clock
        self.sink: Sink = sink or _send_to_own_logger
        self.suppressed = 0  # records suppressed since creation, for tests and metrics
        self._kinds: OrderedDict[Kind, _KindState] = OrderedDict()
        self._next_sweep = clock() + SWEEP_INTERVAL
        # Reentrant: formatting an example can run arbitrary __str__ code that logs.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        """How many kinds are tracked now (never more than ``max_kinds``)."""
        return len(self._kinds)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY_ATTRIBUTE, False):
            return True
        kind = _kind_of(record)
        with self._lock:
            now = self.clock()
            summaries = self._sweep(now) if now >= self._next_sweep else []
            passes = self._count(kind, record, now, summaries)
        self._send(summaries)
        return passes

    def flush(self, force: bool = False) -> None:
        """Send the summaries that are due; with ``force``, every pending one."""
        with self._lock:
            now = self.clock()
            summaries = self._sweep(now, force)
        self._send(summaries)

    def _count(
        self, kind: Kind, record: logging.LogRecord, now: float,
        summaries: list[logging.LogRecord],
    ) -> bool:
        """Count ``record`` in its kind's window; True if it may pass."""
        state = self._kinds.get(kind)
        if state is None:
            state = self._track(kind, now, summaries)
        else:
            self._kinds.move_to_end(kind)
            if now - state.start >= self.window:
                self._close_window(kind, state, now, summaries)
        limit = self.error_allowance if record.levelno >= logging.ERROR else self.allowance
        if state.passed < limit:
            state.passed += 1
            return True
        if not state.suppressed:
            state.example = _example_of(record)
        state.suppressed += 1
        self.suppressed += 1
        return False

    def _track(
        self, kind: Kind, now: float, summaries: list[logging.LogRecord],
    ) -> _KindState:
        """Start tracking ``kind``, forgetting the least recently seen if full."""
        while len(self._kinds) >= self.max_kinds:
            old_kind, old_state = self._kinds.popitem(last=False)
            if old_state.suppressed:
                summaries.append(self._summary(old_kind, old_state, now))
        state = self._kinds[kind] = _KindState(now)
        return state

    def _sweep(self, now: float, force: bool = False) -> list[logging.LogRecord]:
        """Close every window that has ended (every window, with ``force``)."""
        self._next_sweep = now + SWEEP_INTERVAL
        summaries: list[logging.LogRecord] = []
        for kind, state in self._kinds.items():
            if state.suppressed and (force or now - state.start >= self.window):
                self._close_window(kind, state, now, summaries)
        return summaries

    def _close_window(
        self, kind: Kind, state: _KindState, now: float,
        summaries: list[logging.LogRecord],
    ) -> None:
        if state.suppressed:
            summaries.append(self._summary(kind, state, now))
        state.start = now
        state.passed = 0
        state.suppressed = 0
        state.example = ""

    def _summary(self, kind: Kind, state: _KindState, now: float) -> logging.LogRecord:
        name, level = kind[0], kind[1]
        seconds = min(max(now - state.start, 0.0), self.window)
        seconds_text = f"{round(seconds, 1):g}".replace(".", ",")
        return _own_record(name, level, SUMMARY_TEXT,
                           (state.example, state.suppressed, seconds_text))

    def _send(self, summaries: list[logging.LogRecord]) -> None:
        for summary in summaries:
            self.sink(summary)


def _kind_of(record: logging.LogRecord) -> Kind:
    """The rate limiter's key: logger, level, template and the optional group."""
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__qualname__
    group = getattr(record, GROUP_ATTRIBUTE, None)
    kind = (record.name, record.levelno, template, group)
    try:
        hash(kind)
    except TypeError:  # an unhashable "chave": group by its text instead
        kind = (record.name, record.levelno, template, repr(group))
    return kind


def _example_of(record: logging.LogRecord) -> str:
    """The formatted message, cut short, to show in a summary line."""
    try:
        message = record.getMessage()
    except Exception:  # bad arguments: the template still says what it was
        message = str(record.msg)
    if len(message) > EXAMPLE_MAX_CHARS:
        message = message[:EXAMPLE_MAX_CHARS] + "…"
    return message


def _send_to_own_logger(record: logging.LogRecord) -> None:
    logging.getLogger(record.name).handle(record)


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """Put records in a bounded queue without ever waiting; count what is lost.

    ``enqueue`` runs under the handler's lock (``Handler.handle`` takes it), so
    the counters need no other lock. After records were lost, the next one that
    fits is preceded by a line saying how many, so the gap shows where it was.
    """

    def __init__(self, records: queue.Queue) -> None:
        super().__init__(records)
        self.dropped = 0
        self.unreported = 0
        self.malformed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.queue.full():  # lose it before paying for formatting it
            self._lose()
            return
        super().emit(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.unreported:
            if not self._offer(_dropped_report(self.unreported)):
                self._lose()
                return
            self.unreported = 0
        if not self._offer(record):
            self._lose()

    def handleError(self, record: logging.LogRecord) -> None:
        """A record that cannot be formatted: log where it came from, no traceback.

        The default prints a traceback to stderr, the very write that may block.
        """
        self.malformed += 1
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__qualname__
        notice = _own_record(record.name, logging.ERROR, MALFORMED_TEXT,
                             (record.filename, record.lineno, template))
        self.enqueue(notice)

    def take_unreported(self) -> int:
        """How many losses no line has reported yet; they count as reported now."""
        with self.lock:
            count, self.unreported = self.unreported, 0
        return count

    def _offer(self, record: logging.LogRecord) -> bool:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            return False
        return True

    def _lose(self) -> None:
        self.dropped += 1
        self.unreported += 1


def _dropped_report(count: int) -> logging.LogRecord:
    return _own_record(__name__, logging.WARNING, DROPPED_TEXT, (count,))


class _StreamWriter(logging.StreamHandler):
    """The listener's output: writes one line at a time, never raises.

    Only the listener thread writes, so no handler lock is taken while writing:
    ``logging.shutdown()`` at exit takes every handler's lock and would wait
    forever for a write stuck on a full pipe. For the same reason ``flush()``
    does nothing; each line is flushed as it is written.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.write_errors = 0

    def handle(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        # A broken stream has nowhere to report to; a traceback on stderr
        # could block or fail the same way. Count it for tests and move on.
        self.write_errors += 1


class _Listener(logging.handlers.QueueListener):
    """A QueueListener that wakes every ``interval`` seconds to run ``tick``.

    ``tick`` sends the rate limiter's due summaries and reports losses once the
    flood has stopped; it runs even while records keep coming. Stopping never
    waits: if the sentinel does not fit in a full queue, the thread puts it
    there itself once it has drained the queue.
    """

    def __init__(self, records: queue.Queue, writer: _StreamWriter,
                 tick: Callable[[], None], interval: float) -> None:
        super().__init__(records, writer)
        self._tick = tick
        self._interval = interval
        self._next_tick = time.monotonic() + interval
        self._stopping = threading.Event()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def dequeue(self, block: bool) -> logging.LogRecord | None:
        while True:
            now = time.monotonic()
            if now >= self._next_tick:
                self._tick()
                self._next_tick = now + self._interval
            try:
                record = self.queue.get(timeout=max(self._next_tick - now, 0.0))
            except queue.Empty:
                if self._stopping.is_set():
                    self._offer_sentinel()
                continue
            if record is self._sentinel:
                self._tick()  # report the last losses before the thread ends
            return record

    def request_stop(self) -> None:
        """Ask the thread to end once it has written what is queued; never waits."""
        self._stopping.set()
        self._offer_sentinel()

    def _offer_sentinel(self) -> None:
        # When full, the thread tries again once it finds the queue empty.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(self._sentinel)


class LogService:
    """The running log pipeline: queue handler, rate limiter, listener thread.

    Built by :func:`configure`. :meth:`stop` detaches it from the root logger,
    sends pending summaries and loss reports, and waits a bounded time for the
    listener thread; a thread stuck on a blocked stream is left behind (it is
    a daemon). Usable as a context manager.
    """

    def __init__(self, stream: TextIO, limiter: RateLimitFilter,
                 queue_size: int = QUEUE_SIZE, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.limiter = limiter
        self.handler = _BoundedQueueHandler(queue.Queue(maxsize=queue_size))
        self.handler.addFilter(limiter)
        limiter.sink = self.handler.handle
        self.writer = _StreamWriter(stream)
        self._listener = _Listener(self.handler.queue, self.writer, self._tick, flush_interval)
        self._stop_lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def dropped(self) -> int:
        """Records lost because the queue was full."""
        return self.handler.dropped

    @property
    def suppressed(self) -> int:
        """Records held back by the rate limiter."""
        return self.limiter.suppressed

    @property
    def write_errors(self) -> int:
        """Writes to the stream that raised."""
        return self.writer.write_errors

    @property
    def thread(self) -> threading.Thread | None:
        """The listener thread (a daemon), once started."""
        return self._listener.thread

    def start(self) -> None:
        with self._stop_lock:
            if self._started:
                return
            self._started = True
        self._listener.start()
        self._listener.thread.name = "diario"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Detach, flush summaries and wait at most ``timeout`` s for the thread."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        logging.getLogger().removeHandler(self.handler)
        self.limiter.flush(force=True)
        if self._listener.thread is None:
            return
        self._listener.request_stop()
        self._listener.thread.join(timeout)

    def _tick(self) -> None:
        """Runs on the listener thread: due summaries, then unreported losses."""
        self.limiter.flush()
        lost = self.handler.take_unreported()
        if lost:
            self.writer.handle(_dropped_report(lost))

    def __enter__(self) -> LogService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_current: LogService | None = None
_configure_lock = threading.Lock()


def configure(
    level: str | int = "INFO",
    stream: TextIO | None = None,
    *,
    limiter: RateLimitFilter | None = None,
    queue_size: int = QUEUE_SIZE,
    flush_interval: float = FLUSH_INTERVAL,
) -> LogService:
    """Route the root logger through a new :class:`LogService` and start it.

    Like ``logging.basicConfig(force=True)``: every handler already on the root
    logger is removed, so no other handler can write synchronously to a stream
    that may block. The previous service from this function is stopped; other
    handlers are detached but not closed (their owners may still use them).
    ``stream`` defaults to ``sys.stderr`` as it is now; ``limiter`` to a
    :class:`RateLimitFilter` with the module's defaults.
    """
    global _current
    root = logging.getLogger()
    with _configure_lock:
        root.setLevel(level)  # first: a bad level changes nothing else
        if _current is not None:
            _current.stop()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        service = LogService(stream if stream is not None else sys.stderr,
                             limiter if limiter is not None else RateLimitFilter(),
                             queue_size, flush_interval)
        service.start()
        root.addHandler(service.handler)
        _current = service
    return service
