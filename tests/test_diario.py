"""Tests for diario: logging that an attacker can neither flood nor block.

The rate limiter's clock is injected, so no test sleeps to let a window pass.
Waits for the listener thread poll with a deadline; every thread a test starts
is joined with a timeout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import diario

REPO = Path(__file__).resolve().parent.parent
SUMMARY_RE = re.compile(r"\((\d+) mensagens semelhantes suprimidas nos últimos ([\d,]+) s\)$")
DROPPED_RE = re.compile(r"(\d+) linhas de log descartadas: fila cheia$")
WAIT = 5.0  # seconds any single wait in these tests may take


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.005)


def record(msg: str, *args: object, name: str = "servidor", level: int = logging.WARNING,
           chave: object = None) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    if chave is not None:
        rec.chave = chave
    return rec


def summaries_in(lines: list[str]) -> list[tuple[int, str]]:
    found = (SUMMARY_RE.search(line) for line in lines)
    return [(int(m.group(1)), m.group(2)) for m in found if m]


@pytest.fixture
def configure() -> Iterator[Callable[..., diario.LogService]]:
    """diario.configure, with every service stopped and the root level restored."""
    root = logging.getLogger()
    level = root.level
    services: list[diario.LogService] = []

    def start(*args: object, **kwargs: object) -> diario.LogService:
        service = diario.configure(*args, **kwargs)
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop(timeout=WAIT)
    root.setLevel(level)


# --- the rate limiter alone -------------------------------------------------------


def test_flood_of_one_template_passes_the_allowance_and_counts_the_rest() -> None:
    clock = FakeClock()
    sent: list[logging.LogRecord] = []
    limiter = diario.RateLimitFilter(clock=clock, sink=sent.append)
    passed = sum(limiter.filter(record("conexão de %s:%d recusada", "10.0.0.9", port))
                 for port in range(100_000))
    assert passed == diario.RATE_ALLOWANCE
    assert limiter.suppressed == 100_000 - diario.RATE_ALLOWANCE
    assert sent == []  # nothing is due before the window ends

    clock.now += diario.RATE_WINDOW
    limiter.flush()
    assert len(sent) == 1
    assert sent[0].levelno == logging.WARNING and sent[0].name == "servidor"
    message = sent[0].getMessage()
    assert message.startswith("conexão de 10.0.0.9:10 recusada (")
    assert summaries_in([message]) == [(99_990, "10")]


def test_templates_levels_and_groups_are_limited_independently() -> None:
    limiter = diario.RateLimitFilter(allowance=3, clock=FakeClock(), sink=lambda r: None)
    kinds: list[dict[str, object]] = [
        {},
        {"msg": "modelo B %s"},
        {"level": logging.INFO},
        {"name": "armazem"},
        {"chave": "10.0.0.1"},
        {"chave": "10.0.0.2"},
    ]
    passed = [0] * len(kinds)
    for i in range(20):
        for k, kind in enumerate(kinds):
            options = {"msg": "modelo A %s", **kind}
            msg = options.pop("msg")
            passed[k] += limiter.filter(record(msg, i, **options))
    assert passed == [3] * len(kinds)
    assert limiter.suppressed == len(kinds) * 17


def test_errors_are_limited_too_with_a_larger_allowance() -> None:
    limiter = diario.RateLimitFilter(clock=FakeClock(), sink=lambda r: None)
    passed = sum(limiter.filter(record("falha: %s", i, level=logging.ERROR))
                 for i in range(10_000))
    assert passed == diario.ERROR_ALLOWANCE > diario.RATE_ALLOWANCE
    critical = sum(limiter.filter(record("pane: %s", i, level=logging.CRITICAL))
                   for i in range(10_000))
    assert critical == diario.ERROR_ALLOWANCE


def test_summary_goes_out_before_the_next_record_of_a_new_window() -> None:
    clock = FakeClock()
    order: list[str] = []
    limiter = diario.RateLimitFilter(allowance=2, clock=clock,
                                     sink=lambda r: order.append(r.getMessage()))
    for i in range(5):
        if limiter.filter(record("tentativa %d", i)):
            order.append(f"passou {i}")
    clock.now += diario.RATE_WINDOW + 0.5
    if limiter.filter(record("tentativa %d", 99)):
        order.append("passou 99")
    assert order[:2] == ["passou 0", "passou 1"]
    assert summaries_in(order[2:3]) == [(3, "10")]
    assert order[2].startswith("tentativa 2 (")  # quotes the first suppressed message
    assert order[3:] == ["passou 99"]


def test_summary_of_a_stopped_flood_comes_from_a_sweep_on_any_record() -> None:
    clock = FakeClock()
    sent: list[logging.LogRecord] = []
    limiter = diario.RateLimitFilter(allowance=1, clock=clock, sink=sent.append)
    for i in range(4):
        limiter.filter(record("ataque %d", i))
    clock.now += diario.RATE_WINDOW
    assert limiter.filter(record("outra coisa"))
    assert summaries_in([r.getMessage() for r in sent]) == [(3, "10")]


def test_forced_flush_reports_a_partial_window_once() -> None:
    clock = FakeClock()
    sent: list[logging.LogRecord] = []
    limiter = diario.RateLimitFilter(allowance=1, clock=clock, sink=sent.append)
    for i in range(4):
        limiter.filter(record("ataque %d", i))
    clock.now += 2.5
    limiter.flush(force=True)
    limiter.flush(force=True)
    assert summaries_in([r.getMessage() for r in sent]) == [(3, "2,5")]


def test_memory_stays_bounded_with_100000_distinct_templates() -> None:
    limiter = diario.RateLimitFilter(clock=FakeClock(), sink=lambda r: None)
    peak = 0
    for i in range(100_000):
        assert limiter.filter(record(f"modelo {i} %s", i))
        peak = max(peak, len(limiter))
    assert peak == diario.MAX_TRACKED_KINDS


def test_a_forgotten_kind_still_reports_what_it_suppressed() -> None:
    sent: list[logging.LogRecord] = []
    limiter = diario.RateLimitFilter(allowance=1, max_kinds=2, clock=FakeClock(),
                                     sink=sent.append)
    for i in range(6):
        limiter.filter(record("inundação %d", i))
    limiter.filter(record("b"))
    limiter.filter(record("c"))  # forgets the flood, the least recently seen
    assert len(limiter) == 2
    assert summaries_in([r.getMessage() for r in sent]) == [(5, "0")]


def test_a_message_whose_text_logs_does_not_deadlock() -> None:
    limiter = diario.RateLimitFilter(allowance=0, clock=FakeClock(), sink=lambda r: None)

    class LogsWhenPrinted:
        def __str__(self) -> str:
            limiter.filter(record("de dentro"))
            return "objeto"

    done = threading.Event()

    def run() -> None:
        limiter.filter(record("valor %s", LogsWhenPrinted()))
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(WAIT)
    assert limiter.suppressed == 2


def test_unhashable_group_is_grouped_by_its_text() -> None:
    limiter = diario.RateLimitFilter(allowance=1, clock=FakeClock(), sink=lambda r: None)
    assert limiter.filter(record("x", chave=["a"]))
    assert not limiter.filter(record("x", chave=["a"]))
    assert limiter.filter(record("x", chave=["b"]))


# --- the whole service --------------------------------------------------------------


def test_flood_through_the_service_writes_allowance_plus_one_summary(configure) -> None:
    out = io.StringIO()
    service = configure("INFO", out, limiter=diario.RateLimitFilter(clock=FakeClock()))
    log = logging.getLogger("servidor")
    for port in range(100_000):
        log.warning("conexão de %s:%d recusada: %s", "10.0.0.9", port, "limite por IP")
    service.stop(timeout=WAIT)
    lines = out.getvalue().splitlines()
    assert len(lines) == diario.RATE_ALLOWANCE + 1
    assert summaries_in(lines) == [(100_000 - diario.RATE_ALLOWANCE, "0")]
    assert service.suppressed == 100_000 - diario.RATE_ALLOWANCE
    assert service.dropped == 0


def test_summary_appears_after_the_flood_stops(configure) -> None:
    clock = FakeClock()
    out = io.StringIO()
    service = configure("INFO", out, limiter=diario.RateLimitFilter(clock=clock),
                        flush_interval=0.02)
    log = logging.getLogger("descoberta")
    for i in range(30):
        log.info("sondagem de %s", f"10.0.0.{i}")
    assert wait_until(lambda: out.getvalue().count("\n") == diario.RATE_ALLOWANCE)
    clock.now += diario.RATE_WINDOW  # no more records: only the listener can tell
    assert wait_until(lambda: summaries_in(out.getvalue().splitlines()))
    assert summaries_in(out.getvalue().splitlines()) == [(20, "10")]
    assert service.thread is not None and service.thread.is_alive()


def test_format_has_date_time_level_and_logger(configure) -> None:
    out = io.StringIO()
    service = configure("INFO", out)
    logging.getLogger("armazem").info("banco aberto")
    logging.getLogger("armazem").debug("invisível abaixo de INFO")
    service.stop(timeout=WAIT)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO armazem: banco aberto\n",
                        out.getvalue())


def test_configure_twice_leaves_exactly_one_handler(configure) -> None:
    first_out, second_out = io.StringIO(), io.StringIO()
    first = configure("INFO", first_out)
    second = configure("WARNING", second_out)
    root = logging.getLogger()
    assert root.handlers == [second.handler]
    assert root.level == logging.WARNING
    assert first.thread is not None and not first.thread.is_alive()
    logging.getLogger("servidor").warning("só no segundo")
    second.stop(timeout=WAIT)
    assert first_out.getvalue() == ""
    assert second_out.getvalue().endswith("servidor: só no segundo\n")
    assert root.handlers == []


def test_bad_level_changes_nothing(configure) -> None:
    service = configure("INFO", io.StringIO())
    with pytest.raises(ValueError):
        configure("FALANTE", io.StringIO())
    assert logging.getLogger().handlers == [service.handler]


def test_context_manager_and_repeated_stop(configure) -> None:
    out = io.StringIO()
    with configure("INFO", out) as service:
        logging.getLogger("servidor").info("dentro")
    assert service.thread is not None and not service.thread.is_alive()
    service.stop()
    service.stop()
    assert out.getvalue().endswith("servidor: dentro\n")


def test_malformed_call_logs_a_notice_instead_of_a_traceback(configure, capsys) -> None:
    out = io.StringIO()
    service = configure("INFO", out)
    logging.getLogger("servidor").info("porta %d", "não é número")
    service.stop(timeout=WAIT)
    assert "mensagem de log malformada em test_diario.py:" in out.getvalue()
    assert "'porta %d'" in out.getvalue()
    assert capsys.readouterr().err == ""


class RaisingStream(io.TextIOBase):
    """A stream that fails like a closed pipe for its first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        return len(text)


def test_stream_that_raises_costs_a_counter_not_a_traceback(configure, capsys) -> None:
    stream = RaisingStream(failures=3)
    service = configure("INFO", stream)
    log = logging.getLogger("servidor")
    for i in range(5):
        log.info("evento %d", i)
    assert wait_until(lambda: len(stream.lines) == 2)
    assert service.write_errors == 3
    assert stream.lines[-1].endswith("servidor: evento 4\n")
    assert service.thread is not None and service.thread.is_alive()
    assert capsys.readouterr().err == ""


def test_closed_stream_does_not_propagate(configure, capsys) -> None:
    stream = io.StringIO()
    stream.close()
    service = configure("INFO", stream)
    logging.getLogger("servidor").error("ninguém vai ler isto")
    assert wait_until(lambda: service.write_errors == 1)
    service.stop(timeout=WAIT)
    assert service.thread is not None and not service.thread.is_alive()
    assert capsys.readouterr().err == ""


class BlockingStream(io.TextIOBase):
    """A stream whose writes block until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(WAIT * 2)
        return len(text)


def test_stop_is_bounded_with_a_blocked_stream(configure) -> None:
    stream = BlockingStream()
    service = configure("INFO", stream)
    try:
        logging.getLogger("servidor").info("esta escrita não termina")
        assert stream.entered.wait(WAIT)
        started = time.monotonic()
        service.stop(timeout=0.2)
        assert time.monotonic() - started < 1.0
        assert logging.getLogger().handlers == []
        thread = service.thread
        assert thread is not None and thread.daemon and thread.is_alive()
    finally:
        stream.release.set()
    thread.join(WAIT)
    assert not thread.is_alive()  # once the stream moves, the thread still ends


def _fill_pipe(write_fd: int) -> None:
    """Write until the pipe is full, so the next blocking write blocks."""
    try:
        os.set_blocking(write_fd, False)
    except OSError:  # Windows before Python 3.12: no non-blocking pipes
        pytest.skip("pipes não bloqueantes indisponíveis nesta plataforma")
    try:
        for _ in range(10_000):
            os.write(write_fd, b"\n" * 4096)
        pytest.fail("o pipe não encheu")
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(write_fd, True)


def _drain(read_fd: int, data: bytearray, seen: threading.Event, marker: bytes) -> None:
    """Read ``read_fd`` to end of file; set ``seen`` once ``marker`` arrived."""
    while chunk := os.read(read_fd, 65536):
        data += chunk
        if marker in data[-(len(chunk) + len(marker)):]:
            seen.set()
    seen.set()


def test_full_pipe_never_blocks_the_caller_and_losses_are_reported(configure) -> None:
    read_fd, write_fd = os.pipe()
    try:
        _fill_pipe(write_fd)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115 closed below
    service = configure("INFO", stream,
                        limiter=diario.RateLimitFilter(allowance=10**9, error_allowance=10**9))
    data = bytearray()
    seen = threading.Event()
    reader = threading.Thread(target=_drain, args=(read_fd, data, seen, b"fila cheia\n"),
                              daemon=True)
    try:
        flood = threading.Thread(
            target=lambda: [logging.getLogger("x").info("linha %d", i) for i in range(50_000)],
            daemon=True)
        started = time.monotonic()
        flood.start()
        flood.join(3.0)
        elapsed = time.monotonic() - started
        assert not flood.is_alive(), "o chamador ficou bloqueado no log"
        assert service.dropped >= 50_000 - diario.QUEUE_SIZE - 1000  # listener stuck early
        print(f"50000 chamadas com o pipe cheio: {elapsed:.2f} s")
    finally:
        reader.start()  # unblocks the listener whatever happened above
    try:
        assert seen.wait(WAIT * 2), "a perda nunca foi relatada"
    finally:
        service.stop(timeout=WAIT)
        if not service.thread.is_alive():
            with contextlib.suppress(OSError):
                stream.close()
        reader.join(WAIT)
        os.close(read_fd)
    lines = data.decode("utf-8").splitlines()
    written = sum(1 for line in lines if " INFO x: linha " in line)
    reported = [int(m.group(1)) for m in map(DROPPED_RE.search, lines) if m]
    assert reported and sum(reported) == service.dropped
    assert written + service.dropped == 50_000


EXIT_SCRIPT = """
import logging, diario
service = diario.configure("INFO", limiter=diario.RateLimitFilter(allowance=10**9))
for i in range(5000):
    logging.getLogger("x").info("linha %d %s", i, "x" * 100)
service.stop(timeout=0.2)
print("fim", service.thread.is_alive(), flush=True)
"""


def test_process_exits_while_stderr_is_a_full_pipe() -> None:
    """The server's exit must not wait for a log write stuck on an unread stderr."""
    proc = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        returncode = proc.wait(timeout=15)  # stderr deliberately not read yet
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=WAIT)
        pytest.fail("o processo não terminou com o stderr cheio")
    out, err = proc.communicate(timeout=WAIT)
    assert returncode == 0, err[-2000:]
    assert out == b"fim True\n"  # the listener was indeed stuck when it exited
    assert b"Traceback" not in err and b"Fatal" not in err
