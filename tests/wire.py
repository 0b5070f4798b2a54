"""The shared network helpers of the test suite: the one home for each of them.

- ``WireClient`` speaks raw protocol lines over a real socket (plain or TLS,
  from any 127.x.y.z source address). It frames what it receives with
  ``protocolo.LineSplitter`` (the same code the server and the GUI client
  use, so tests do not carry a second framing implementation) and keeps a
  transcript of every byte received, for byte-exact comparisons.
- ``running_server`` runs an in-process ``servidor.Servidor`` on a free port;
  ``ServerProcess`` runs ``servidor.py`` as a real process, for tests that
  signal or kill it.
- ``wait_until`` polls for state that nothing on the wire announces.
- ``make_certificate`` and ``free_port`` serve both the server's and the
  client's tests.

Helpers specific to the client's session layer live in ``cliente_apoio``.

Every blocking call has a timeout: a broken server fails a test, it never
hangs the suite. Only 127.0.0.0/8 is ever used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import simulacao

import protocolo
import servidor

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
"""The project's root, where ``servidor.py`` lives."""
TIMEOUT = 5.0
"""Default bound, in seconds, for any single wait in these tests."""
POLL_INTERVAL = 0.005
UNLIMITED = {"rate": 0, "address_lines": 0, "address_bytes": 0, "registrations": 0,
             "tls_handshakes": 0}
"""``ServerConfig`` options that turn every rate limit off, for tests that are not about them."""

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


@contextlib.contextmanager
def running_server(**options: object) -> Iterator[servidor.Servidor]:
    """A ``Servidor`` on 127.0.0.1, a free port, with ``options`` set on its config.

    The config's defaults apply (rate limit included) unless ``options`` say
    otherwise. On exit the server is stopped and must have let go of every
    connection.
    """
    config = servidor.ServerConfig(host=HOST, port=0, **options)
    server = servidor.Servidor(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.connection_count == 0, "connections left over after stop()"


class ServerProcess:
    """``servidor.py`` run as a real process on 127.0.0.1, for tests that signal or kill it.

    Its log (stderr) is drained by a thread into ``log``, so the pipe can
    never fill up and stall the server; ``port`` is read from the line that
    announces the listening socket. ``args`` are passed after ``--host`` and
    ``--port``; without ``--dados`` the server runs ``--efemero``, so a test
    never touches the user's own data directory.
    """

    def __init__(self, *args: str, port: int = 0, timeout: float = 10.0) -> None:
        if "--dados" not in args:
            args = ("--efemero", *args)  # never the user's own data directory
        self.proc = subprocess.Popen(
            simulacao.python_command(REPO / "servidor.py", "--host", HOST, "--port", str(port),
                                     *args),
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._drainer = threading.Thread(target=self._drain, daemon=True, name="server-log")
        self._drainer.start()
        try:
            self.listening_line = self.wait_for_log("escutando", timeout)
        except BaseException:
            self.stop()
            raise
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
                raise AssertionError(f"the server did not log {needle!r} within {timeout:g} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the server exited before logging {needle!r}: "
                                     f"{self.log[-5:]!r}")
            if needle in line:
                return line

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps the process.

        The log thread is joined too, so ``log`` holds every line the server
        wrote once this returns.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._drainer.join(TIMEOUT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class WireClient:
    """One raw TCP connection to the server, line by line.

    ``rcvbuf`` sets SO_RCVBUF before connecting (a small one makes a
    non-reading client fill up quickly). ``source_ip`` picks the local
    address (any 127.x.y.z works on Linux loopback), so each one counts as
    its own client address. ``tls`` is a client-side ``ssl.SSLContext``; the
    handshake then happens in the constructor, checked against
    ``server_hostname``.
    """

    def __init__(self, address: tuple[str, int], *, timeout: float = TIMEOUT,
                 rcvbuf: int | None = None, source_ip: str | None = None,
                 tls: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Before connecting, so the window the peer sees is small from the start.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source_ip:
                sock.bind((source_ip, 0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
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
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                ssl.SSLEOFError):
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
    def local_address(self) -> tuple[str, int]:
        """The local (IP, port): what the server sees as this client's address."""
        return self.sock.getsockname()[:2]

    @property
    def port(self) -> int:
        """The local (ephemeral) port: what the server sees as this client's port."""
        return self.local_address[1]

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


def make_certificate(directory: Path, names: tuple[str, ...] = ("localhost", HOST),
                     stem: str = "servidor") -> tuple[str, str]:
    """A throwaway self-signed certificate for ``names``, and its key.

    Skips the test when openssl is missing or cannot make one.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl não encontrado: instale o pacote openssl para os testes de TLS")
    sans = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            sans.append(f"DNS:{name}")
        else:
            sans.append(f"IP:{name}")
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={names[0]}",
         "-addext", "subjectAltName=" + ",".join(sans),
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.skip(f"openssl não conseguiu gerar o certificado: {result.stderr.strip()[-200:]}")
    return str(cert), str(key)


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
