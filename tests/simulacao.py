"""Run the suites on Linux as if on Windows or macOS: the platform-only names removed.

We have no Windows or macOS machine, yet the product must work there. What
differs, for us, is which names the ``socket`` and ``select`` modules offer;
so ``apply(mode)`` removes from them, *before* the product modules are
imported, what that platform's Python lacks, and points ``rede.PLATFORM`` at
it. Each product fallback is then the path taken, with real sockets:

* "windows": no ``MSG_DONTWAIT``, no ``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/
  ``TCP_KEEPCNT``, no ``SO_REUSEPORT``, no ``AF_UNIX`` (``socketpair`` is the
  loopback-TCP emulation Windows uses), no ``select.poll``/``epoll`` (so
  ``selectors.DefaultSelector`` is ``SelectSelector``). ``select.select``
  is replaced by one without Linux's 1024-descriptor ceiling (Windows has
  none) that counts its calls. Linux sockets have no ``ioctl``, so a fake
  ``SIO_KEEPALIVE_VALS`` and ``socket.socket.ioctl`` are installed: they
  apply the keepalive values through Linux's numeric options and record
  each call, so a test sees the Windows path run *and* take effect.
* "macos": no ``TCP_KEEPIDLE``; ``TCP_KEEPALIVE`` (macOS's name for the idle
  time) is defined as Linux's ``TCP_KEEPIDLE`` number, so it takes effect;
  no ``epoll`` (macOS has ``poll`` and ``kqueue``; ``DefaultSelector`` becomes
  ``PollSelector``).

Not simulated (cannot be, from Python): ``sys.platform`` itself (the
standard library reads it at import), the C-level socket methods Windows
lacks (``sendmsg``...), and the size of ``struct timeval``.

``conftest.py`` calls ``apply(active_mode())`` at import when the
environment variable ``CHAT_SIMULAR_PLATAFORMA`` is set. A test that starts
the product as another process (``servidor.py``, ``chat.pyz``) builds its
command with ``python_command`` so that process is simulated too.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import selectors
import socket
import sys
from pathlib import Path

ENVIRONMENT_VARIABLE = "CHAT_SIMULAR_PLATAFORMA"
MODES = ("windows", "macos")
WINDOWS_SIO_KEEPALIVE_VALS = 0x98000004
WINDOWS_KEEPALIVE_PROBES = 10
"""The real value on Windows (only its presence matters here)."""

LINUX_TCP_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", 4)
LINUX_TCP_KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", 5)
LINUX_TCP_KEEPCNT = getattr(socket, "TCP_KEEPCNT", 6)
"""Captured before ``apply`` deletes them: the fakes and the tests need the numbers."""

_WINDOWS_MISSING_SOCKET_NAMES = (
    "MSG_DONTWAIT", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT",
    "SO_REUSEPORT", "AF_UNIX", "SO_PEERCRED", "SCM_RIGHTS", "send_fds", "recv_fds",
)
_WINDOWS_MISSING_SELECT_NAMES = ("poll", "epoll", "devpoll", "kqueue", "POLLIN", "POLLOUT",
                                 "POLLPRI", "POLLERR", "POLLHUP", "POLLNVAL")
_MACOS_MISSING_SOCKET_NAMES = ("TCP_KEEPIDLE", "TCP_USER_TIMEOUT")
_MACOS_MISSING_SELECT_NAMES = ("epoll", "devpoll")

applied_mode: str | None = None
ioctl_calls: collections.deque = collections.deque(maxlen=1000)
"""``(control, option)`` of every call to the fake ``socket.socket.ioctl``."""
select_calls = 0
"""Calls to the simulated Windows ``select.select``."""

_real_poll = getattr(select, "poll", None)


def active_mode() -> str | None:
    """The mode named by ``CHAT_SIMULAR_PLATAFORMA``, or None when it is unset or empty."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    return value or None


def _delete(module: object, names: tuple[str, ...]) -> None:
    for name in names:
        if hasattr(module, name):
            delattr(module, name)


def _fake_windows_ioctl(self: socket.socket, control: int, option: object) -> None:
    """What Windows' ``socket.ioctl`` does for keepalive, done with Linux options."""
    if control != WINDOWS_SIO_KEEPALIVE_VALS:
        raise ValueError(f"invalid ioctl command {control}")
    onoff, idle_ms, interval_ms = option  # type: ignore[misc]
    ioctl_calls.append((control, (onoff, idle_ms, interval_ms)))
    self.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if onoff else 0)
    if onoff:
        self.setsockopt(socket.IPPROTO_TCP, LINUX_TCP_KEEPIDLE, max(1, idle_ms // 1000))
        self.setsockopt(socket.IPPROTO_TCP, LINUX_TCP_KEEPINTVL, max(1, interval_ms // 1000))
        # Without TCP_KEEPCNT (before Windows 10 1703) Windows sends 10 probes.
        self.setsockopt(socket.IPPROTO_TCP, LINUX_TCP_KEEPCNT, WINDOWS_KEEPALIVE_PROBES)


def _select_without_descriptor_limit(readers: list, writers: list, failed: list,
                                     timeout: float | None = None) -> tuple[list, list, list]:
    """``select.select`` as Windows has it: any descriptor value is fine.

    Linux's own ``select`` refuses descriptors past 1024, which the server's
    tests easily reach; Windows' does not, so this one is built on the poll
    that Python keeps hidden here. It counts its calls (``select_calls``).
    """
    global select_calls
    select_calls += 1
    assert _real_poll is not None
    wanted: dict[int, int] = {}
    originals: dict[int, object] = {}
    for objects, mask in ((readers, 1 | 2), (writers, 4), (failed, 2)):  # POLLIN|PRI, OUT
        for obj in objects:
            fd = obj if isinstance(obj, int) else obj.fileno()
            if fd < 0:
                raise ValueError("file descriptor cannot be a negative integer")
            wanted[fd] = wanted.get(fd, 0) | mask
            originals[fd] = obj
    poller = _real_poll()
    for fd, mask in wanted.items():
        poller.register(fd, mask)
    millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    events = dict(poller.poll(millis))
    if any(event & 0x20 for event in events.values()):  # POLLNVAL: not an open descriptor
        raise OSError(errno.EBADF, "Bad file descriptor")
    error_bits = 0x8 | 0x10  # POLLERR | POLLHUP: the next call reports them
    ready_read = [o for o in readers if events.get(_fd(o), 0) & (1 | 2 | error_bits)]
    ready_write = [o for o in writers if events.get(_fd(o), 0) & (4 | error_bits)]
    ready_failed = [o for o in failed if events.get(_fd(o), 0) & (2 | 0x8)]
    return ready_read, ready_write, ready_failed


def _fd(obj: object) -> int:
    return obj if isinstance(obj, int) else obj.fileno()  # type: ignore[attr-defined]


def _tcp_socketpair(family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                    proto: int = 0) -> tuple[socket.socket, socket.socket]:
    """``socket.socketpair`` as on Windows: two TCP sockets joined over loopback."""
    with socket.socket(family, type, proto) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket(family, type, proto)
        try:
            client.settimeout(5)
            client.connect(listener.getsockname())
            listener.settimeout(5)
            server, _ = listener.accept()
            client.settimeout(None)
            server.settimeout(None)
        except BaseException:
            client.close()
            raise
    return server, client


class _WindowsSelectSelector(selectors.SelectSelector):
    """``selectors.SelectSelector`` as on Windows, calling the simulated ``select.select``.

    The Linux class binds the real ``select.select`` when it is defined; the
    Windows one calls it at each select and reports failures as writable.
    """

    def _select(self, r, w, _, timeout=None):  # type: ignore[override]
        r, w, x = select.select(r, w, w, timeout)
        return r, w + x, []


def _apply_windows() -> None:
    _delete(socket, _WINDOWS_MISSING_SOCKET_NAMES)
    _delete(select, _WINDOWS_MISSING_SELECT_NAMES)
    socket.SIO_KEEPALIVE_VALS = WINDOWS_SIO_KEEPALIVE_VALS  # type: ignore[attr-defined]
    socket.socket.ioctl = _fake_windows_ioctl  # type: ignore[attr-defined]
    socket.socketpair = _tcp_socketpair
    select.select = _select_without_descriptor_limit
    selectors.DefaultSelector = _WindowsSelectSelector  # type: ignore[misc]


def _apply_macos() -> None:
    _delete(socket, _MACOS_MISSING_SOCKET_NAMES)
    _delete(select, _MACOS_MISSING_SELECT_NAMES)
    socket.TCP_KEEPALIVE = LINUX_TCP_KEEPIDLE  # type: ignore[attr-defined]
    selectors.DefaultSelector = selectors.PollSelector  # type: ignore[misc]


def apply(mode: str) -> None:
    """Make this Python look like ``mode``'s ("windows" or "macos"), for the rest of the run.

    Call it before importing the product modules (``import rede`` is done
    here, to set its platform switch). Applying the same mode again does
    nothing; another mode is an error.
    """
    global applied_mode
    if mode not in MODES:
        raise ValueError(f"modo de simulação desconhecido: {mode!r} (use um de {MODES})")
    if applied_mode == mode:
        return
    if applied_mode is not None:
        raise RuntimeError(f"a simulação {applied_mode!r} já foi aplicada")
    if mode == "windows":
        _apply_windows()
    else:
        _apply_macos()
    import rede
    rede.PLATFORM = "win32" if mode == "windows" else "darwin"
    applied_mode = mode


_BOOTSTRAP = """\
import os, runpy, sys
sys.argv = sys.argv[1:]
script = os.path.abspath(sys.argv[0])
# Where the product's modules are, as Python itself would put it first on the path.
sys.path.insert(0, script if script.endswith(".pyz") else os.path.dirname(script))
sys.path.insert(1, {tests!r})
import simulacao
simulacao.apply({mode!r})
runpy.run_path(script, run_name="__main__")
"""


def python_command(script: str | os.PathLike, *args: str) -> list[str]:
    """``[python, script, *args]``, run under the active simulation if there is one.

    Without a simulation this is the plain command. With one, the child
    applies it before running ``script`` (a ``.py`` file or a ``.pyz``
    archive) as ``__main__``, so its sockets lack the same names as ours.
    """
    mode = applied_mode or active_mode()
    if mode is None:
        return [sys.executable, str(script), *args]
    bootstrap = _BOOTSTRAP.format(tests=str(Path(__file__).resolve().parent), mode=mode)
    return [sys.executable, "-c", bootstrap, str(script), *args]
