"""Network helpers for the reliability tests: a raw line client and a server fixture.

Every blocking call here has a timeout, so a broken server fails a test
instead of hanging the suite. Only 127.0.0.0/8 is ever used.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import servidor

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0
"""Default bound for a single wait in these tests."""

_tokens = itertools.count()


def wait_until(condition: Callable[[], object], timeout: float = TIMEOUT,
               what: str = "") -> object:
    """Poll ``condition`` every few milliseconds; fail after ``timeout`` seconds.

    Used only for state the wire cannot announce (e.g. the server noticing
    a close on its side).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condição não satisfeita em {timeout:g} s: {what or condition}")
        time.sleep(0.005)


@contextlib.contextmanager
def running_server(**options: object) -> Iterator[servidor.Servidor]:
    """A ``Servidor`` on 127.0.0.1, a free port, with ``options`` set on its config.

    On exit the server is stopped and must have let go of every connection.
    """
    config = servidor.ServerConfig(host=HOST, port=0, **options)
    server = servidor.Servidor(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.connection_count == 0, "conexões que sobraram depois do stop()"


class ServerProcess:
    """``servidor.py`` run as a real process on 127.0.0.1, for tests that kill it.

    Its log (stderr) is drained by a thread into ``log``, so the pipe can
    never fill up and stall the server; ``port`` is read from the line that
    announces the listening socket.
    """

    def __init__(self, *args: str, port: int = 0, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "servidor.py"), "--host", HOST, "--port", str(port),
             *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True, name="log-do-servidor").start()
        self.listening_line = self.wait_for_log("escutando", timeout)
        self.port = int(self.listening_line.split(" porta ")[1].split()[0])

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            self._lines.put(line)
        self.proc.stderr.close()
        self._lines.put(None)

    def wait_for_log(self, needle: str, timeout: float = TIMEOUT) -> str:
        """The next log line containing ``needle``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"o servidor não registrou {needle!r} em {timeout:g} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"o servidor terminou antes de registrar {needle!r}: "
                                     f"{self.log[-5:]!r}")
            if needle in line:
                return line

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LineClient:
    """A client that speaks raw protocol lines, for tests.

    ``tls`` is a client-side ``ssl.SSLContext``; the handshake then happens
    in the constructor. ``source_ip`` picks the local address (any 127.x.y.z
    works on Linux loopback), so each one counts as its own client address.
    ``rcvbuf`` shrinks SO_RCVBUF, so a client that does not read fills up fast.
    """

    def __init__(self, address: tuple[str, int], *, source_ip: str | None = None,
                 tls: ssl.SSLContext | None = None, server_hostname: str = "localhost",
                 rcvbuf: int | None = None, timeout: float = TIMEOUT) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Before connecting, so the window the peer sees is small from the start.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source_ip:
                sock.bind((source_ip, 0))
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self._buffer = b""
        self.eof = False

    # -- sending --

    def send(self, line: str) -> None:
        """Send one line (the LF is added)."""
        self.sock.sendall((line + "\n").encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving --

    def read_line(self, timeout: float = TIMEOUT) -> str | None:
        """The next line without its LF; None at EOF (or reset); TimeoutError if none came."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                partial = self._buffer[:80]
                raise TimeoutError(f"nenhuma linha em {timeout:g} s (parcial: {partial!r})")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                    ssl.SSLEOFError):
                data = b""
            if not data:
                self.eof = True
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def request(self, line: str, timeout: float = TIMEOUT) -> str | None:
        """Send ``line`` and return the next line received (its reply, if no push is due)."""
        self.send(line)
        return self.read_line(timeout)

    def ping_barrier(self, timeout: float = TIMEOUT) -> list[str]:
        """Every line that arrives before the reply to a fresh PING.

        Anything queued for this connection before the server handled the
        PING comes first, so this returns exactly the pushes pending now.
        """
        token = f"barreira-{next(_tokens)}"
        self.send(f"PING {token}")
        lines = []
        while True:
            line = self.read_line(timeout)
            if line is None:
                raise ConnectionError(f"EOF antes do PONG; linhas: {lines!r}")
            if line == f"PONG {token}":
                return lines
            lines.append(line)

    def read_until_eof(self, timeout: float = TIMEOUT) -> list[str]:
        """All lines up to EOF; TimeoutError if the server keeps the connection open."""
        lines = []
        while (line := self.read_line(timeout)) is not None:
            lines.append(line)
        return lines

    def nothing_within(self, seconds: float) -> bool:
        """True if no line (and no EOF) arrives for ``seconds``."""
        try:
            line = self.read_line(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"linha inesperada: {line!r}")

    # -- closing --

    @property
    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        """Vanish abruptly: SO_LINGER 0 makes close() send a TCP reset."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
