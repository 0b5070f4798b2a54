"""Shared pytest fixtures: a virtual X display, a window manager, a Tk root per test, pumping.

GUI tests run against a real Tk in a real (virtual) X server. When ``DISPLAY``
is already set it is used as is; otherwise one ``Xvfb`` is started for the whole
session, picking a free display number itself (``-displayfd``), and stopped by
PID at the end. See /work/shared/TK-TESTING.md for the measured pitfalls these
fixtures guard against.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import select
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import simulacao

# CHAT_SIMULAR_PLATAFORMA=windows|macos runs the suite with that platform's socket
# API (tests/simulacao.py); it must happen before any test module imports the product.
if simulacao.active_mode():
    simulacao.apply(simulacao.active_mode())

pytest_plugins = ("lan_virtual",)

XVFB_ARGS = ("-screen", "0", "1280x800x24", "-nolisten", "tcp")
XVFB_START_TIMEOUT = 10.0
XVFB_STOP_TIMEOUT = 5.0
PUMP_INTERVAL = 0.005


def _read_display_number(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    """Read the display number Xvfb writes to ``fd``, within ``timeout`` seconds.

    Reading goes through ``select`` so a hung Xvfb cannot hang the session, and
    stops at end of file so an Xvfb that died early is reported, not waited for.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"Xvfb não informou o número do display em {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            raise RuntimeError(
                f"Xvfb fechou o canal sem informar o display (código de saída: {proc.poll()})"
            )
        data += chunk
    return data.decode("ascii").strip()


def _stop_process(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` by its PID, escalating to SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(XVFB_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(XVFB_STOP_TIMEOUT)


_started_xvfb: dict[str, Any] = {}
"""The Xvfb this session started ("proc", "log"), for the window manager's diagnostics."""


def _xvfb_report() -> str:
    """Whether the session's Xvfb still runs, and what it printed (for a failure message)."""
    if not _started_xvfb:
        return "Xvfb: o display já existia (DISPLAY)"
    log = _started_xvfb["log"]
    log.seek(0)
    output = log.read().decode("utf-8", "replace").strip()[-2000:]
    return f"Xvfb: código de saída {_started_xvfb['proc'].poll()}; saída:\n{output}"


@pytest.fixture(scope="session")
def xvfb_display() -> Iterator[str]:
    """Yield an X display name, starting a private Xvfb when none is set."""
    existing = os.environ.get("DISPLAY")
    if existing:
        yield existing
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb não encontrado: instale o pacote xvfb para rodar os testes de interface")

    read_fd, write_fd = os.pipe()
    # Xvfb's diagnostics go to a file (not a pipe nobody reads, which could fill
    # up and block it) so they can be shown if it fails to start.
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                [xvfb, "-displayfd", str(write_fd), *XVFB_ARGS],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            os.close(write_fd)
        try:
            number = _read_display_number(read_fd, proc, XVFB_START_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            _stop_process(proc)
            log.seek(0)
            output = log.read().decode("utf-8", "replace")
            pytest.fail(f"{exc}\nSaída do Xvfb:\n{output}", pytrace=False)
        finally:
            os.close(read_fd)

        os.environ["DISPLAY"] = f":{number}"
        _started_xvfb.update(proc=proc, log=log)
        try:
            yield os.environ["DISPLAY"]
        finally:
            _started_xvfb.clear()
            _stop_process(proc)
            os.environ.pop("DISPLAY", None)


WM_START_TIMEOUT = 5.0
WM_START_ATTEMPTS = 3
"""openbox once exited at start with "Failed to open the display" (1 CI run in ~10) on a
display that Tk used fine moments later: it is started again, a bounded number of times."""


def _xdotool(*args: str) -> str:
    """What ``xdotool ARGS`` printed, or '' when it could not talk to the display."""
    try:
        done = subprocess.run(["xdotool", *args], capture_output=True, text=True,
                              timeout=XVFB_STOP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _window_manager_running() -> bool:
    """True when an EWMH window manager owns the display (``xdotool`` asks it)."""
    return _xdotool("get_num_desktops").isdigit()


def _wait(condition: Callable[[], bool], timeout: float, stop_early: Callable[[], bool]) -> bool:
    """Poll ``condition`` until true (True), ``stop_early`` or ``timeout`` s (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if stop_early() or time.monotonic() > deadline:
            return False
        time.sleep(PUMP_INTERVAL * 4)
    return True


@pytest.fixture(scope="session")
def window_manager(xvfb_display: str) -> Iterator[str]:
    """Make sure a window manager runs on the display; yield its name.

    Focus only behaves as on a desktop when a window manager gives it out,
    so the GUI tests where focus matters use this. On a display that already
    has one (a developer's desktop), nothing is started. Otherwise ``openbox``
    is started inside the display (again, up to ``WM_START_ATTEMPTS`` times,
    if it exits at once) and stopped by PID at the end; the test is skipped
    with a reason when openbox or xdotool is missing.
    """
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool não encontrado: instale o pacote xdotool para os testes de foco")
    if _window_manager_running():
        yield "existente"
        return
    openbox = shutil.which("openbox")
    if openbox is None:
        pytest.skip("openbox não encontrado: instale o pacote openbox para os testes de foco")
    display_answers = _wait(lambda: bool(_xdotool("getdisplaygeometry")), WM_START_TIMEOUT,
                            lambda: False)
    failures = []
    for attempt in range(1, WM_START_ATTEMPTS + 1):
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen([openbox, "--sm-disable"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)

            def exited(started: subprocess.Popen = proc) -> bool:
                return started.poll() is not None

            if _wait(_window_manager_running, WM_START_TIMEOUT, exited):
                try:
                    yield "openbox"
                finally:
                    _stop_process(proc)
                return
            _stop_process(proc)
            log.seek(0)
            failures.append(f"tentativa {attempt} (código {proc.returncode}): "
                            + log.read().decode("utf-8", "replace").strip())
        time.sleep(0.2 * attempt)
    pytest.fail(f"o openbox não começou a gerenciar a tela {xvfb_display} (o display "
                f"{'responde' if display_answers else 'NÃO responde'} ao xdotool):\n"
                + "\n".join(failures) + "\n" + _xvfb_report(), pytrace=False)


@pytest.fixture
def tk_root(xvfb_display: str) -> Iterator[Any]:
    """Yield a fresh ``tkinter.Tk()``; fail the test if any Tk callback raised.

    Tk only prints exceptions raised inside callbacks (``Button.invoke``,
    ``after``, event bindings), so they are recorded here and turned into a
    failure at teardown. Pending ``after`` callbacks are cancelled before the
    root is destroyed, or they would fire inside the next test's root.
    """
    tkinter = pytest.importorskip("tkinter")
    root = tkinter.Tk()
    errors: list[str] = []

    def record_exception(exc_type, exc_value, exc_tb) -> None:
        errors.append("".join(traceback.format_exception(exc_type, exc_value, exc_tb)))

    root.report_callback_exception = record_exception
    try:
        yield root
    finally:
        _close_root(root, tkinter.TclError)
    if errors:
        pytest.fail(
            f"{len(errors)} exceção(ões) em callbacks do Tk:\n" + "\n".join(errors),
            pytrace=False,
        )


def _close_root(root: Any, tcl_error: type[Exception]) -> None:
    """Flush pending events, cancel every ``after`` and destroy ``root``.

    Tolerates a root the test already destroyed.
    """
    with contextlib.suppress(tcl_error):
        root.update()
    try:
        pending = root.tk.splitlist(root.tk.call("after", "info"))
    except tcl_error:
        pending = ()
    for after_id in pending:
        with contextlib.suppress(tcl_error):
            root.after_cancel(after_id)
    with contextlib.suppress(tcl_error):
        root.destroy()


def _describe(condition: Callable[[], object]) -> str:
    """Best-effort readable description of ``condition`` for failure messages."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def pump_until(
    root: Any,
    condition: Callable[[], object],
    timeout: float = 5.0,
    description: str | None = None,
) -> object:
    """Run Tk's event loop (``root.update()``) until ``condition()`` is true.

    Returns the condition's (truthy) value. Raises ``AssertionError`` when it is
    still false after ``timeout`` seconds. Never use ``wait_visibility()``
    instead: without a window manager it can hang forever.
    """
    deadline = time.monotonic() + timeout
    while True:
        root.update()
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = description or _describe(condition)
            raise AssertionError(
                f"condição não satisfeita em {timeout:g} s: {what} (último valor: {result!r})"
            )
        time.sleep(PUMP_INTERVAL)


@pytest.fixture
def pump() -> Callable[..., object]:
    """The :func:`pump_until` helper, for tests that prefer a fixture to an import."""
    return pump_until


@pytest.fixture
def connect(make_server: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a ``WireClient`` to a server; closed at teardown (before the server stops).

    For modules that define ``make_server``: depending on it makes pytest tear the
    clients down first, so a server never stops with its clients still open.
    """
    from wire import WireClient  # here: the product is imported after the simulation above

    clients: list[WireClient] = []

    def open_client(target: Any, **options: object) -> WireClient:
        client = WireClient(target.address, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()
