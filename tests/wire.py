"""A wire-level test client for the chat server, and a polling helper.

``WireClient`` speaks raw protocol lines over a real socket. It frames what
it receives with ``protocolo.LineSplitter`` (the same code the server and the
GUI client use, so tests do not carry a second framing implementation) and
keeps a transcript of every byte received, for byte-exact comparisons.

Every blocking call has a timeout: a broken server fails a test, it never
hangs the suite.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

import protocolo

HOST = "127.0.0.1"
TIMEOUT = 5.0
"""Default bound, in seconds, for any single wait in these tests."""
POLL_INTERVAL = 0.005

_barrier_tokens = itertools.count()


def wait_until(condition: Callable[[], object], timeout: float = TIMEOUT,
               what: str = "") -> object:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds.

    Only for state that nothing on the wire announces (the server noticing
    a close on its side, threads ending); everything else is awaited by
    reading the reply that proves it.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout:g} s: {what or condition!r}")
        time.sleep(POLL_INTERVAL)


class WireClient:
    """One raw TCP connection to the server, line by line.

    ``rcvbuf`` sets SO_RCVBUF before connecting (a small one makes a
    non-reading client fill up quickly).
    """

    def __init__(self, address: tuple[str, int], *, timeout: float = TIMEOUT,
                 rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.timeout = timeout
        self.transcript = bytearray()
        """Every byte received so far, in order."""
        self.eof = False
        self._splitter = protocolo.LineSplitter(protocolo.MAX_SERVER_LINE_BYTES)
        self._lines: deque[bytes] = deque()

    # -- sending --

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def send_line(self, text: str) -> None:
        """Send ``text`` and an LF, UTF-8 encoded."""
        self.send(text.encode("utf-8") + b"\n")

    def request(self, text: str, timeout: float | None = None) -> str:
        """Send one line and return the next line received (its reply when no push is due)."""
        self.send_line(text)
        return self.read_line(timeout)

    def register(self, nick: str) -> None:
        reply = self.request(f"REGISTRAR {nick}")
        assert reply == "OK", f"REGISTRAR {nick}: {reply!r}"

    # -- receiving --

    def _receive(self, deadline: float) -> bool:
        """Wait for more bytes until ``deadline``; False on timeout. Sets ``eof``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return True
        self.transcript += data
        for line in self._splitter.feed(data):
            assert line is not protocolo.LINE_TOO_LONG, "server sent a line over 8192 bytes"
            self._lines.append(line)
        return True

    def read_raw_line(self, timeout: float | None = None) -> bytes | None:
        """The next line as bytes, without its LF; None at EOF; TimeoutError if none came."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._lines:
            if self.eof:
                return None
            if not self._receive(deadline):
                raise TimeoutError(f"no line within {timeout or self.timeout:g} s")
        return self._lines.popleft()

    def read_line(self, timeout: float | None = None) -> str:
        """The next line, decoded; AssertionError at EOF."""
        raw = self.read_raw_line(timeout)
        assert raw is not None, "connection closed while a line was expected"
        return raw.decode("utf-8")

    def read_lines(self, count: int, timeout: float | None = None) -> list[str]:
        return [self.read_line(timeout) for _ in range(count)]

    def read_until(self, predicate: Callable[[str], bool],
                   timeout: float | None = None) -> list[str]:
        """Lines up to and including the first one ``predicate`` accepts."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines = []
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            lines.append(line)
            if predicate(line):
                return lines

    def barrier(self, timeout: float | None = None) -> list[str]:
        """Every line that arrives before the reply to a fresh PING.

        A reply is queued after every push queued before the server read the
        PING, so this returns exactly what was pending: an empty list proves
        that no push was due, without sleeping.
        """
        token = f"barrier-{next(_barrier_tokens)}"
        self.send_line(f"PING {token}")
        lines = self.read_until(lambda line: line == f"PONG {token}", timeout)
        return lines[:-1]

    def expect_eof(self, timeout: float | None = None) -> list[str]:
        """Every line still to come, up to EOF; TimeoutError if the server keeps it open."""
        lines = []
        while True:
            raw = self.read_raw_line(timeout)
            if raw is None:
                return lines
            lines.append(raw.decode("utf-8"))

    def assert_silent(self, seconds: float) -> None:
        """Nothing arrives (no line, no EOF) for ``seconds``: for asserting an absence."""
        try:
            raw = self.read_raw_line(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {'EOF' if raw is None else raw!r}")

    # -- closing --

    @property
    def port(self) -> int:
        """The local (ephemeral) port: what the server sees as this client's port."""
        return self.sock.getsockname()[1]

    def shutdown_write(self) -> None:
        """Half-close: the server reads EOF, and may still answer."""
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Vanish abruptly: with SO_LINGER 0, close() sends a TCP reset."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
