"""Helpers for the client's tests: events, sessions, a scripted fake server.

Only what is specific to the client lives here; the network helpers shared
with the server's tests (``running_server``, ``WireClient``,
``make_certificate``, ``free_port``, ...) live in ``wire``.

``ScriptedServer`` plays a server that the real one never is (hostile,
frozen, restarting on cue, answering with garbage): each accepted
connection runs a script in a thread, and ``handshake`` answers the
version-2 start of a session as the contract says.

Every wait has a timeout, so a broken client fails a test instead of hanging
the suite. Only 127.0.0.1 (and ::1 where asked) is used.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable

from wire import HOST, TIMEOUT

import protocolo
import sessao


def wait_event(session: sessao.ChatSession, match: Callable[[object], bool] | type,
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


def drain(session: sessao.ChatSession) -> list[object]:
    """Every event queued right now."""
    events = []
    while True:
        try:
            events.append(session.events.get_nowait())
        except queue.Empty:
            return events


def is_reply_to(kind: type) -> Callable[[object], bool]:
    """A ``wait_event`` predicate: a ``Reply`` to a request of type ``kind``."""
    return lambda event: isinstance(event, sessao.Reply) and isinstance(event.request, kind)


def connect(address: tuple[str, int], nick: str, **options: object) -> sessao.ChatSession:
    """A registered session whose start-up events (the user list included) were consumed.

    ``options`` go to ``ChatSession.connect`` except the constructor's own,
    which are taken out first (``reconnect_delays``, ``idle_ping``...).
    """
    session_options = {name: options.pop(name) for name in list(options)
                       if name in _SESSION_OPTIONS}
    session = sessao.ChatSession(connect_timeout=TIMEOUT, **session_options)
    session.connect(address[0], address[1], nick, **options)
    wait_event(session, is_reply_to(protocolo.ListUsers))
    return session


_SESSION_OPTIONS = frozenset({
    "send_timeout", "close_timeout", "idle_ping", "ping_timeout", "reconnect_delays",
    "max_outgoing", "requests_per_s", "request_burst", "events_high_water",
    "received_interval"})


class ScriptedServer:
    """A fake server: accepts up to ``connections`` connections, one after another.

    Each runs ``script(fake, conn)`` in the accepting thread (``fake.index``
    says which connection it is, from 0). For behaviour the real server never
    shows: garbage, floods, silence, restarts. ``release`` is set at close so
    a script can block on it; ``error`` keeps the first exception a script
    raised, for the test to check.
    """

    def __init__(self, script: Callable[[ScriptedServer, socket.socket], None], *,
                 connections: int = 1, host: str = HOST,
                 tls: ssl.SSLContext | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.listener.settimeout(TIMEOUT)
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.index = -1
        self.lines: list[str] = []
        """Every line the client sent, over all connections."""
        self._script = script
        self._connections = connections
        self._tls = tls
        self._buffers: dict[int, bytes] = {}
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def _serve(self) -> None:
        for index in range(self._connections):
            conn = self._accept()
            if conn is None:
                return
            if self._tls is not None:
                conn.settimeout(TIMEOUT)
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()  # the client refused us (what some tests want)
                    continue
            self.index = index
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    self._script(self, conn)
                except Exception as exc:
                    if self.error is None:
                        self.error = exc

    def _accept(self) -> socket.socket | None:
        """The next connection, or None once released (or after a long bound)."""
        self.listener.settimeout(0.1)
        deadline = time.monotonic() + TIMEOUT * 6
        while not self.release.is_set() and time.monotonic() < deadline:
            try:
                return self.listener.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return None  # closed by ``close``
        return None

    def read_line(self, conn: socket.socket, timeout: float = TIMEOUT) -> str:
        """The next line the client sent on ``conn`` (EOFError when it closed)."""
        key = id(conn)
        buffer = self._buffers.get(key, b"")
        conn.settimeout(timeout)
        while b"\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                raise EOFError("cliente fechou a conexão")
            buffer += data
        line, _, self._buffers[key] = buffer.partition(b"\n")
        text = line.decode("utf-8")
        self.lines.append(text)
        return text

    def expect(self, conn: socket.socket, wanted: str, timeout: float = TIMEOUT) -> None:
        line = self.read_line(conn, timeout)
        assert line == wanted, f"esperava {wanted!r}, veio {line!r}"

    def handshake(self, conn: socket.socket, nick: str = "eu", *, password: str | None = None,
                  rooms: tuple[str, ...] = (protocolo.DEFAULT_ROOM,),
                  users: tuple[str, ...] | None = None) -> None:
        """Answer OLA 2, REGISTRAR, ASSINAR, LISTAR and one ENTRAR per room, as in the contract."""
        self.expect(conn, "OLA 2")
        conn.sendall(b"OK\n")
        self.expect(conn, f"REGISTRAR {nick} {password}" if password else f"REGISTRAR {nick}")
        conn.sendall(b"OK\n")
        self.expect(conn, "ASSINAR")
        conn.sendall(b"OK\n")
        self.expect(conn, "LISTAR")
        conn.sendall(protocolo.format_users([(name, HOST, 5000) for name in users or (nick,)]))
        for room in rooms:
            self.expect(conn, f"ENTRAR {room}")
            conn.sendall(b"OK\n")

    def wait_released(self, timeout: float = TIMEOUT * 3) -> None:
        self.release.wait(timeout)

    def close(self) -> None:
        self.release.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self._thread.join(TIMEOUT)


def msg_line(message_id: int, sender: str, target: str, text: str,
             time_ms: int = 1_764_511_387_123) -> bytes:
    """A version-2 MSG push, as ``protocolo`` formats it."""
    return protocolo.format_msg_v2(message_id, time_ms, sender, target, text)
