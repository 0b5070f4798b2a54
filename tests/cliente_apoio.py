"""Helpers for the client's session tests: events, sessions, a scripted fake server.

Only what is specific to ``cliente.ChatSession`` lives here; the network
helpers shared with the server's tests (``running_server``, ``WireClient``,
``make_certificate``, ``free_port``, ...) live in ``wire``.

Every wait has a timeout, so a broken client fails a test instead of hanging
the suite. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable

from wire import HOST, TIMEOUT

import cliente


def wait_event(session: cliente.ChatSession, match: Callable[[object], bool] | type,
               timeout: float = TIMEOUT, skipped: list[object] | None = None) -> object:
    """The next event on ``session.events`` that ``match`` accepts (a type or a predicate).

    Events passed over are appended to ``skipped`` when given.
    """
    if isinstance(match, type):
        kind = match

        def match(event: object) -> bool:
            return isinstance(event, kind)

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"nenhum evento esperado em {timeout:g} s "
                                 f"(ignorados: {skipped!r})")
        try:
            event = session.events.get(timeout=remaining)
        except queue.Empty:
            continue
        if match(event):
            return event
        if skipped is not None:
            skipped.append(event)


def drain(session: cliente.ChatSession) -> list[object]:
    """Every event queued right now."""
    events = []
    while True:
        try:
            events.append(session.events.get_nowait())
        except queue.Empty:
            return events


def connect(address: tuple[str, int], nick: str, **options: object) -> cliente.ChatSession:
    """A registered session whose start-up events (list included) were consumed."""
    session = cliente.ChatSession(connect_timeout=TIMEOUT)
    session.connect(address[0], address[1], nick, **options)
    wait_event(session, lambda e: isinstance(e, cliente.Reply)
               and isinstance(e.request, cliente.protocolo.ListUsers))
    return session


class ScriptedServer:
    """A fake server: accepts one connection and runs ``script(conn)`` in a thread.

    For behaviour the real server never shows (garbage lines, ignoring SAIR,
    not reading). ``release`` is set at close so a script can block on it.
    """

    def __init__(self, script: Callable[[ScriptedServer, socket.socket], None]) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(TIMEOUT)
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._script = script
        self._buffer = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                self._script(self, conn)
            except Exception as exc:
                self.error = exc

    def read_line(self, conn: socket.socket) -> str:
        while b"\n" not in self._buffer:
            data = conn.recv(65536)
            if not data:
                raise EOFError("cliente fechou a conexão")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def handshake(self, conn: socket.socket, nick: str = "eu") -> None:
        """Answer REGISTRAR, ASSINAR and LISTAR as a real server would."""
        assert self.read_line(conn) == f"REGISTRAR {nick}"
        conn.sendall(b"OK\n")
        assert self.read_line(conn) == "ASSINAR"
        conn.sendall(b"OK\n")
        assert self.read_line(conn) == "LISTAR"
        conn.sendall(f"USUARIOS 1\nUSUARIO {nick} 127.0.0.1 5000\nEND\n".encode())

    def close(self) -> None:
        self.release.set()
        self._thread.join(TIMEOUT)
        self.listener.close()

