"""The chat client: a network session with no Tk, and a Tkinter window on top.

Two layers, each testable alone:

* ``ChatSession`` owns one connection to the server. A single background
  thread connects (IPv4, IPv6 or a host name, optionally over TLS), registers,
  subscribes to presence and lists the users, then reads and writes the socket.
  Every line goes through ``protocolo.py``; each one becomes an event on
  ``session.events`` (a ``queue.Queue``). Requests are written by the same
  thread, so a request never blocks its caller and a TLS socket is never
  touched by two threads. Replies are matched to requests in order (the
  contract promises one reply per request, in order, and pushes never split a
  reply).
* ``ChatApp`` is the Tk window. It only ever runs in Tk's thread: it polls the
  session's queue with ``after()`` and drains it in bounded batches, so a flood
  of messages cannot freeze it.

Run ``python3 cliente.py --help`` for the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import protocolo
import rede
from protocolo import ErrorCode

try:  # The session layer works without Tk; only the window needs it.
    import tkinter as tk
    import tkinter.font as tkfont
    from tkinter import ttk
except ImportError:  # pragma: no cover - depends on the system's python3-tk
    tk = None  # type: ignore[assignment]

log = logging.getLogger("cliente")

DEFAULT_HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10.0
"""Seconds for the TCP connection, the TLS handshake and the registration reply each."""
SEND_STALL_TIMEOUT = 15.0
"""Seconds queued output may make no progress before the connection counts as lost."""
CLOSE_TIMEOUT = 1.5
"""Seconds ``close`` waits for the server to confirm ``SAIR``."""
MAX_OUTGOING_BYTES = 1024 * 1024
"""Bound on requests queued for sending; past it a request is refused at once."""
RECV_CHUNK = 64 * 1024
RECVS_PER_ROUND = 16
"""Reads per loop round, so a flood of pushes cannot starve the sending side."""
SELECT_INTERVAL = 0.25


# --------------------------------------------------------------------------
# Session events and results


@dataclass(frozen=True)
class Connected:
    """Registration succeeded: the session is usable."""

    nick: str
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class ConnectFailed:
    """The connection or the registration failed; ``message`` is for the user."""

    message: str


@dataclass(frozen=True)
class Disconnected:
    """An established session ended; ``by_user`` is False when the connection was lost."""

    message: str
    by_user: bool


@dataclass(frozen=True)
class UserList:
    """LISTAR's whole reply, assembled from its ``USUARIOS``/``USUARIO``/``END`` lines."""

    users: tuple[protocolo.UserEntry, ...]

    @property
    def nicks(self) -> list[str]:
        return [user.nick for user in self.users]


@dataclass(frozen=True)
class Lost:
    """Result of a request whose reply never came because the connection ended."""

    message: str


Result = (protocolo.Ok | protocolo.Error | UserList | protocolo.Found | protocolo.NotFound
          | protocolo.Pong | Lost)


@dataclass(frozen=True)
class Reply:
    """The reply (or ``Lost``) to a request made with ``ChatSession.request``."""

    request: protocolo.Request
    result: Result


class CaFileError(Exception):
    """The ``--tls-ca`` file is missing or holds no certificate; ``str`` is for the user."""


class ConnectError(Exception):
    """``ChatSession.connect`` failed; ``str(exc)`` is a message for the user."""


class NotConnectedError(Exception):
    """A request was made on a session that is not registered and connected."""


class SendQueueFullError(Exception):
    """Too much output is already waiting for the server to read it."""


class PendingReply:
    """A request waiting for its reply, filled in by the session's thread."""

    def __init__(self, request: protocolo.Request) -> None:
        self.request = request
        self.result: Result | None = None
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> Result:
        """Return the result, or raise ``TimeoutError`` after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"sem resposta para {self.request!r} em {timeout:g} s")
        assert self.result is not None
        return self.result

    def _resolve(self, result: Result) -> None:
        self.result = result
        self._done.set()


# --------------------------------------------------------------------------
# User-facing texts for failures


_REGISTER_ERRORS = {
    ErrorCode.APELIDO_EM_USO: "O apelido “{nick}” já está em uso. Escolha outro.",
    ErrorCode.APELIDO_INVALIDO: ("Apelido inválido: use de 1 a 32 letras, dígitos, "
                                 "“_”, “-” ou “.”, sem espaços."),
    ErrorCode.JA_REGISTRADO: "Esta conexão já tem um apelido registrado.",
    ErrorCode.LOTADO: "O servidor está lotado. Tente de novo mais tarde.",
    ErrorCode.LIMITE: "O servidor recusou o pedido por excesso de requisições. Tente de novo.",
    ErrorCode.TEMPO: "O servidor encerrou a conexão por inatividade.",
}

_SEND_ERRORS = {
    ErrorCode.NAO_ENCONTRADO: "{nick} não está online: a mensagem não foi entregue.",
    ErrorCode.DESTINATARIO_LENTO: ("{nick} não estava recebendo as mensagens a tempo e foi "
                                   "desconectado(a) pelo servidor: a mensagem não foi entregue."),
    ErrorCode.LIMITE: ("Você está enviando mensagens rápido demais: esta não foi enviada. "
                       "Aguarde um instante e tente de novo."),
    ErrorCode.SO_DIRETO: ("{nick} usa um cliente só de diretório e não recebe mensagens "
                          "pelo servidor: a mensagem não foi entregue."),
    ErrorCode.ARGUMENTOS: "O servidor recusou a mensagem (texto inválido): não foi enviada.",
    ErrorCode.LINHA_LONGA: "Mensagem longa demais: não foi enviada.",
    ErrorCode.CODIFICACAO: "O servidor não entendeu o texto da mensagem: não foi enviada.",
    ErrorCode.NAO_REGISTRADO: "Você não está registrado no servidor: reconecte e tente de novo.",
}

_VERIFY_REASONS = {
    10: "o certificado do servidor expirou",
    18: "o certificado do servidor é autoassinado e não é confiável",
    19: "a cadeia do certificado tem uma autoridade autoassinada não confiável",
    20: "a autoridade que assinou o certificado do servidor não é confiável",
    62: "o nome do servidor não confere com o certificado",
    64: "o endereço IP do servidor não confere com o certificado",
}


def describe_connect_error(exc: BaseException, host: str, port: int,
                           tls_ca: str | None = None, tls: bool = False) -> str:
    """A clear Portuguese sentence for a failure while connecting."""
    where = f"{host}:{port}"
    if isinstance(exc, CaFileError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, exc.verify_message or str(exc))
        hint = ("confira o arquivo indicado em --tls-ca" if tls_ca
                else "indique o certificado da autoridade com --tls-ca")
        return (f"Certificado TLS de {where} rejeitado: {reason}. "
                f"Por segurança, a conexão não foi feita ({hint}).")
    if isinstance(exc, ssl.SSLError):
        text = (exc.reason or str(exc)).replace("_", " ").lower()
        return (f"Falha na negociação TLS com {where} ({text}). O servidor usa TLS? "
                "Se não usa, desmarque “Usar TLS”.")
    if isinstance(exc, socket.gaierror):
        return f"Servidor “{host}” não encontrado. Confira o nome ou o endereço IP."
    if isinstance(exc, ConnectionRefusedError):
        return f"Conexão recusada por {where}. O servidor está rodando nessa porta?"
    if isinstance(exc, TimeoutError):
        if tls:
            return (f"Tempo esgotado ao conectar com TLS a {where}. O servidor está acessível "
                    "e usa TLS? Se não usa, desmarque “Usar TLS”.")
        return f"Tempo esgotado ao conectar a {where}. O servidor está acessível?"
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        return f"Não foi possível conectar a {where}: {detail}."
    return f"Não foi possível conectar a {where}: {exc}."


def describe_register_error(error: protocolo.Error, nick: str) -> str:
    """A clear Portuguese sentence for a refused ``REGISTRAR``."""
    template = _REGISTER_ERRORS.get(error.code) if error.code else None
    if template:
        return template.format(nick=nick)
    return f"O servidor recusou o registro: {error.text or error.code_word}"


def describe_send_error(result: Result, nick: str) -> str:
    """A clear Portuguese sentence for a message the server did not accept."""
    if isinstance(result, Lost):
        return "A conexão caiu antes da confirmação: a mensagem pode não ter sido entregue."
    if isinstance(result, protocolo.Error):
        template = _SEND_ERRORS.get(result.code) if result.code else None
        if template:
            return template.format(nick=nick)
        return f"O servidor recusou a mensagem: {result.text or result.code_word}"
    return f"Resposta inesperada do servidor: {result!r}"


def clean_message_text(text: str) -> str:
    """The text as it can go on the wire: line breaks and control characters become spaces."""
    return protocolo.without_control_characters(text)


def message_too_long(nick: str, text: str) -> bool:
    """True if ``ENVIAR nick text`` would exceed the server's request line limit."""
    line = protocolo.format_request(protocolo.Send(nick, text))
    return len(line) > protocolo.MAX_REQUEST_BYTES


# --------------------------------------------------------------------------
# The session


class ChatSession:
    """One connection to the chat server, run by one background thread.

    Use ``start`` (returns at once; the outcome arrives as a ``Connected`` or
    ``ConnectFailed`` event) or ``connect`` (blocks until the outcome and raises
    ``ConnectError``). Pushes (``protocolo.Message``, ``Joined``, ``Left``),
    ``Reply`` and ``Disconnected`` events follow on ``events``.

    The thread is the only one that touches the socket: callers append encoded
    requests to an output buffer and wake it through a socket pair. That keeps
    every call from the GUI short, and is what OpenSSL requires of a TLS socket.
    """

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT,
                 send_timeout: float = SEND_STALL_TIMEOUT,
                 close_timeout: float = CLOSE_TIMEOUT,
                 max_outgoing: int = MAX_OUTGOING_BYTES) -> None:
        self.events: queue.Queue[object] = queue.Queue()
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.max_outgoing = max_outgoing
        self.nick = ""
        self.host = ""
        self.port = 0
        self.tls = False
        self._tls_ca: str | None = None
        self._lock = threading.Lock()  # guards everything below
        self._state = "idle"  # idle, opening, registering, connected, closing, closed
        self._stop = False
        self._by_user = False
        self._closing_deadline = 0.0
        self._outgoing = bytearray()
        self._pending: deque[PendingReply] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # never block while holding the lock
        self._thread: threading.Thread | None = None
        self._outcome = threading.Event()
        self._connect_error: str | None = None
        # Only the session thread uses these:
        self._users: list[protocolo.UserEntry] | None = None

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True once registered, until the connection ends or ``close`` is called."""
        return self._state == "connected"

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self, host: str, port: int, nick: str, *, use_tls: bool = False,
              tls_ca: str | None = None) -> None:
        """Connect and register in the background; the outcome comes as an event."""
        with self._lock:
            if self._state != "idle":
                raise RuntimeError("uma ChatSession só conecta uma vez; crie outra")
            self._state = "opening"
        self.host, self.port, self.nick = host, port, nick
        self.tls, self._tls_ca = use_tls or bool(tls_ca), tls_ca
        self._thread = threading.Thread(target=self._run, name=f"chat-sessao-{nick}",
                                        daemon=True)
        self._thread.start()

    def connect(self, host: str, port: int, nick: str, *, use_tls: bool = False,
                tls_ca: str | None = None) -> None:
        """Connect and register, blocking; raise ``ConnectError`` with a user message."""
        self.start(host, port, nick, use_tls=use_tls, tls_ca=tls_ca)
        # Connect, handshake and registration are each bounded by connect_timeout.
        if not self._outcome.wait(3 * self.connect_timeout + 1.0):
            self.close(wait=False)
            raise ConnectError(f"Tempo esgotado ao conectar a {host}:{port}.")
        if self._connect_error is not None:
            raise ConnectError(self._connect_error)

    def close(self, wait: bool = True) -> None:
        """Leave the server (``SAIR``, bounded wait) and stop the thread.

        With ``wait`` the thread is joined (bounded); without, the thread
        finishes on its own, within ``close_timeout``. Safe to call repeatedly
        and from any state.
        """
        with self._lock:
            if self._state == "idle":
                self._state = "closed"
                self._close_wake_locked()
                return
            self._by_user = True
            if self._state == "connected":
                self._enqueue_locked(PendingReply(protocolo.Quit()))
                self._state = "closing"
                self._closing_deadline = time.monotonic() + self.close_timeout
            elif self._state != "closing":
                self._stop = True
            self._wake_locked()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 1.0)

    # -- requests -------------------------------------------------------------

    def request(self, request: protocolo.Request) -> PendingReply:
        """Queue ``request`` for sending; its reply comes as a ``Reply`` event.

        Never blocks on the network. Raises ``NotConnectedError`` unless the
        session is registered, and ``SendQueueFullError`` when the server has
        stopped reading.
        """
        pending = PendingReply(request)
        with self._lock:
            if self._state != "connected":
                raise NotConnectedError("não conectado ao servidor")
            if len(self._outgoing) >= self.max_outgoing:
                raise SendQueueFullError("fila de envio cheia")
            self._enqueue_locked(pending)
            self._wake_locked()
        return pending

    def send_message(self, nick: str, text: str) -> PendingReply:
        """``ENVIAR nick text``."""
        return self.request(protocolo.Send(nick, text))

    def list_users(self) -> PendingReply:
        """``LISTAR``; the reply's result is a ``UserList``."""
        return self.request(protocolo.ListUsers())

    def ping(self, token: str = "") -> PendingReply:
        return self.request(protocolo.Ping(token))

    def _enqueue_locked(self, pending: PendingReply) -> None:
        self._outgoing += protocolo.format_request(pending.request)
        self._pending.append(pending)

    def _wake_locked(self) -> None:
        if self._state != "closed":
            with contextlib.suppress(OSError):  # a full pipe is already awake
                self._wake_w.send(b"\0")

    def _close_wake_locked(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    # -- the session thread -----------------------------------------------------

    def _run(self) -> None:
        sock: socket.socket | None = None
        loss: str | None = None
        try:
            if not protocolo.valid_nick(self.nick):
                self._connect_error = _REGISTER_ERRORS[ErrorCode.APELIDO_INVALIDO]
                return
            sock = self._open()
            with self._lock:
                if self._stop:
                    self._connect_error = "Conexão cancelada."
                    return
                self._state = "registering"
                self._enqueue_locked(PendingReply(protocolo.Register(self.nick)))
            loss = self._loop(sock)
        except Exception as exc:  # every failure becomes a message, never a traceback
            if self._state in ("opening", "registering"):
                self._connect_error = describe_connect_error(exc, self.host, self.port,
                                                             self._tls_ca, self.tls)
            else:
                log.exception("erro inesperado na sessão")
                loss = f"Erro inesperado na conexão: {exc}"
        finally:
            self._finish(sock, loss)

    def _open(self) -> socket.socket:
        """TCP connection (IPv4, IPv6 or name) and TLS handshake, each bounded."""
        # The context first: a bad CA file is reported before touching the network.
        context = _tls_context(self._tls_ca) if self.tls else None
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            rede.enable_keepalive(sock)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=self.host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _finish(self, sock: socket.socket | None, loss: str | None) -> None:
        """One exit path: close the socket, fail what waits, post the last event."""
        if sock is not None:
            sock.close()
        with self._lock:
            was = self._state
            self._state = "closed"
            pending = list(self._pending)
            self._pending.clear()
            self._outgoing.clear()
            self._close_wake_locked()
        if was in ("opening", "registering"):
            if self._connect_error is None:
                self._connect_error = loss or "A conexão foi encerrada durante o registro."
            self.events.put(ConnectFailed(self._connect_error))
            self._outcome.set()
            return
        message = "Desconectado." if self._by_user else (loss or "Conexão perdida.")
        for item in pending:
            item._resolve(Lost(message))
            if isinstance(item.request, protocolo.Send | protocolo.ListUsers):
                self.events.put(Reply(item.request, item.result))
        self.events.put(Disconnected(message, self._by_user))
        self._outcome.set()

    def _loop(self, sock: socket.socket) -> str | None:
        """Read and write until the end; return why the connection was lost, or None."""
        splitter = protocolo.LineSplitter(protocolo.MAX_SERVER_LINE_BYTES)
        is_tls = isinstance(sock, ssl.SSLSocket)
        write_waits_for_read = False
        more_to_read = False
        # OpenSSL wants a write it refused retried with the same bytes.
        retry_chunk: bytes | None = None
        started = last_progress = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                if self._stop:
                    return None
                state = self._state
                has_output = bool(self._outgoing)
            if state == "closing" and now > self._closing_deadline:
                return None
            if state == "registering" and now - started > self.connect_timeout:
                return (f"O servidor {self.host}:{self.port} não respondeu ao registro a tempo. "
                        "Tente de novo.")
            if not has_output:
                last_progress = now
            elif now - last_progress > self.send_timeout:
                return "O servidor parou de receber dados: conexão encerrada."

            writers = [sock] if has_output and not write_waits_for_read else []
            timeout = 0.0 if more_to_read else SELECT_INTERVAL
            readable, writable, _ = select.select([sock, self._wake_r], writers, [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while self._wake_r.recv(4096):
                        pass

            read_now = sock in readable or write_waits_for_read or more_to_read
            more_to_read = False
            if read_now:
                for _ in range(RECVS_PER_ROUND):
                    try:
                        data = sock.recv(RECV_CHUNK)
                    except (BlockingIOError, InterruptedError,
                            ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    except OSError as exc:
                        return self._loss_text(exc)
                    if not data:
                        return self._eof_text()
                    for line in splitter.feed(data):
                        if self._handle_line(line):
                            return None
                else:
                    more_to_read = True  # still data waiting (maybe inside OpenSSL)
                if is_tls and sock.pending():
                    more_to_read = True

            if has_output and (sock in writable or (write_waits_for_read and read_now)):
                if retry_chunk is None:
                    with self._lock:
                        chunk = bytes(self._outgoing[:RECV_CHUNK])
                else:
                    chunk = retry_chunk
                write_waits_for_read = False
                try:
                    sent = sock.send(chunk)
                except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                    sent = 0
                except ssl.SSLWantReadError:
                    sent = 0
                    write_waits_for_read = True
                except OSError as exc:
                    return self._loss_text(exc)
                retry_chunk = chunk if is_tls and not sent else None
                if sent:
                    with self._lock:
                        del self._outgoing[:sent]
                    last_progress = time.monotonic()

    def _eof_text(self) -> str | None:
        if self._state == "closing":
            return None
        if self._state == "registering" and not self.tls:
            return ("O servidor fechou a conexão durante o registro. "
                    "Ele exige TLS? Nesse caso marque “Usar TLS”.")
        return "O servidor encerrou a conexão."

    def _loss_text(self, exc: OSError) -> str | None:
        if self._state == "closing":
            return None
        if self._state == "registering":
            return describe_connect_error(exc, self.host, self.port, self._tls_ca, self.tls)
        detail = exc.strerror or str(exc) or type(exc).__name__
        return f"Conexão com o servidor perdida ({detail})."

    def _handle_line(self, raw: bytes | protocolo.LineTooLong) -> bool:
        """Turn one line into an event or a reply; True when the session should end."""
        if isinstance(raw, protocolo.LineTooLong):
            log.warning("linha longa demais do servidor, descartada")
            return False
        try:
            item = protocolo.parse_server_line(protocolo.decode_line(raw))
        except (protocolo.ProtocolError, protocolo.BadServerLine) as exc:
            log.warning("linha ilegível do servidor descartada: %s", exc)
            return False
        if isinstance(item, protocolo.PUSHES):
            self.events.put(item)
            return False
        if isinstance(item, protocolo.UsersHeader):
            self._users = []
            return False
        if isinstance(item, protocolo.UserEntry):
            if self._users is not None:
                self._users.append(item)
            return False
        if isinstance(item, protocolo.End):
            result: Result = UserList(tuple(self._users or ()))
            self._users = None
        else:
            result = item
        with self._lock:
            pending = self._pending.popleft() if self._pending else None
        if pending is None:
            log.warning("resposta sem pedido descartada: %r", item)
            return False
        return self._complete(pending, result)

    def _complete(self, pending: PendingReply, result: Result) -> bool:
        """Deliver a reply; True when the session should end."""
        pending._resolve(result)
        request = pending.request
        if isinstance(request, protocolo.Register):
            if isinstance(result, protocolo.Ok):
                with self._lock:
                    if self._state == "registering":
                        self._state = "connected"
                        # Pipelined: presence first, so the list and the pushes agree.
                        self._enqueue_locked(PendingReply(protocolo.Subscribe()))
                        self._enqueue_locked(PendingReply(protocolo.ListUsers()))
                self.events.put(Connected(self.nick, self.host, self.port, self.tls))
                self._outcome.set()
                return False
            if isinstance(result, protocolo.Error):
                self._connect_error = describe_register_error(result, self.nick)
            else:
                self._connect_error = f"Resposta inesperada ao registro: {result!r}"
            return True
        if isinstance(request, protocolo.Quit):
            return True
        self.events.put(Reply(request, result))
        return False


def _tls_context(tls_ca: str | None) -> ssl.SSLContext:
    """Client context: certificate verified against ``tls_ca`` (or the system), host checked."""
    try:
        return ssl.create_default_context(cafile=tls_ca)
    except FileNotFoundError:
        raise CaFileError(f"Arquivo de CA não encontrado: {tls_ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise CaFileError(f"Arquivo de CA inválido ({tls_ca}): não contém um certificado "
                          f"PEM legível ({exc.strerror or exc}).") from None


# --------------------------------------------------------------------------
# The window

POLL_MS = 40
"""How often the window drains the session's queue."""
MAX_EVENTS_PER_TICK = 2000
TICK_BUDGET = 0.025
"""Seconds of event handling per tick before the window yields to Tk."""
HISTORY_LIMIT = 5000
"""Lines kept per conversation; older ones are dropped."""

COLOR_OWN = "#1c5aa6"
COLOR_PEER = "#1d7a3a"
COLOR_TIME = "#7a7a7a"
COLOR_NOTICE = "#5f5f5f"
COLOR_ERROR = "#b3261e"
LIST_BACKGROUND = "#ffffff"
BORDER_COLOR = "#b8b6b0"


def _now() -> str:
    return time.strftime("%H:%M")


class Conversation:
    """One peer's chat window: a ``Toplevel`` that hides instead of closing.

    Hiding keeps the history (capped at ``limit`` lines) for when the user
    reopens it during the session. Lines are buffered and written to the text
    widget once per tick by ``flush``.
    """

    def __init__(self, app: ChatApp, peer: str, limit: int = HISTORY_LIMIT) -> None:
        self.app = app
        self.peer = peer
        self.limit = limit
        self.peer_online = True
        self._buffer: list[tuple[str, ...]] = []  # (text, tag, text, tag, ...) per line
        self.top = tk.Toplevel(app.master)
        self.top.withdraw()
        self.top.minsize(360, 260)
        self.top.protocol("WM_DELETE_WINDOW", self.hide)
        self.update_title()

        frame = ttk.Frame(self.top, padding=8)
        frame.pack(fill="both", expand=True)
        header = ttk.Frame(frame, padding=(2, 0, 2, 6))
        header.pack(fill="x")
        ttk.Label(header, text=peer, style="Heading.TLabel").pack(side="left")
        self.presence_label = ttk.Label(header)
        self.presence_label.pack(side="left", padx=(10, 0))
        box = _bordered_box(frame)
        box.pack(fill="both", expand=True)
        self.text = tk.Text(
            box, wrap="word", width=56, height=16, state="disabled", relief="flat",
            borderwidth=0, highlightthickness=0, padx=10, pady=8, font=app.fonts["text"],
            spacing1=2, spacing3=2, cursor="arrow", background=LIST_BACKGROUND)
        scrollbar = ttk.Scrollbar(box, orient="vertical", command=self.text.yview)
        self.text.configure(yscrollcommand=scrollbar.set)
        scrollbar.pack(side="right", fill="y")
        self.text.pack(side="left", fill="both", expand=True)
        # Opening (or reopening) the window shows the newest lines.
        self.text.bind("<Map>", lambda _event: self.text.see("end"))
        self.text.tag_configure("time", foreground=COLOR_TIME, font=app.fonts["small"])
        self.text.tag_configure("own_name", foreground=COLOR_OWN, font=app.fonts["bold"])
        self.text.tag_configure("own", foreground="#0f2f57")
        self.text.tag_configure("peer_name", foreground=COLOR_PEER, font=app.fonts["bold"])
        self.text.tag_configure("notice", foreground=COLOR_NOTICE, font=app.fonts["italic"])
        self.text.tag_configure("error", foreground=COLOR_ERROR)

        bottom = ttk.Frame(frame, padding=(0, 8, 0, 0))
        bottom.pack(fill="x")
        self.entry = ttk.Entry(bottom, font=app.fonts["text"])
        self.entry.pack(side="left", fill="x", expand=True, padx=(0, 8), ipady=2)
        self.send_button = ttk.Button(bottom, text="Enviar", command=self.send)
        self.send_button.pack(side="right")
        self.entry.bind("<Return>", self._on_return)
        self.entry.bind("<KP_Enter>", self._on_return)
        self.top.bind("<FocusIn>", self._on_focus_in)

    # -- showing ------------------------------------------------------------

    def update_title(self) -> None:
        me = self.app.nick or "eu"
        self.top.title(f"Conversa: {me} ↔ {self.peer}")

    @property
    def visible(self) -> bool:
        return self.top.winfo_exists() and self.top.state() != "withdrawn"

    def show(self, focus: bool) -> None:
        """Show the window; take the focus only when the user asked for it."""
        if self.top.state() == "withdrawn":
            self.app.place_conversation(self.top)
            self.top.deiconify()
        if focus:
            self.top.lift()
            self.entry.focus_force()
            self.app.mark_read(self.peer)

    def hide(self) -> None:
        self.top.withdraw()

    def has_focus(self) -> bool:
        """True when the user is looking at this window (shown, keyboard focus inside)."""
        if not self.visible:
            return False
        focus = self.top.tk.call("focus")
        path = str(self.top)
        return bool(focus) and (str(focus) == path or str(focus).startswith(path + "."))

    def _on_focus_in(self, _event: object) -> None:
        self.app.mark_read(self.peer)

    # -- history ----------------------------------------------------------

    def add_message(self, sender: str, text: str, own: bool) -> None:
        name_tag, body_tag = ("own_name", "own") if own else ("peer_name", "")
        self._buffer.append((f"{_now()}  ", "time", f"{sender}: ", name_tag,
                             f"{text}\n", body_tag))

    def add_notice(self, text: str, error: bool = False) -> None:
        self._buffer.append((f"{_now()}  ", "time", f"{text}\n", "error" if error else "notice"))

    def flush(self) -> None:
        """Write the buffered lines in one insert, drop lines past the cap, scroll.

        The view follows new lines only when it was already at the bottom, so
        someone reading older messages is not yanked away.
        """
        if not self._buffer:
            return
        buffered, self._buffer = self._buffer[-self.limit:], []
        args: list[str] = []
        for item in buffered:
            args.extend(item)
        follow = not self.text.winfo_ismapped() or self.text.yview()[1] >= 0.999
        self.text.configure(state="normal")
        self.text.insert("end", *args)
        lines = int(self.text.index("end-1c").split(".")[0]) - 1
        if lines > self.limit:
            self.text.delete("1.0", f"{lines - self.limit + 1}.0")
        self.text.configure(state="disabled")
        if follow:
            self.text.see("end")

    def history(self) -> str:
        """The history as plain text (for tests and copying)."""
        return self.text.get("1.0", "end-1c")

    # -- sending -----------------------------------------------------------

    def show_presence(self) -> None:
        """The line under the title: is the peer there, are we connected."""
        if not self.app.connected:
            text, style = "sem conexão com o servidor", "Offline.TLabel"
        elif self.peer_online:
            text, style = "● online", "Online.TLabel"
        else:
            text, style = "fora do chat", "Offline.TLabel"
        self.presence_label.configure(text=text, style=style)

    def set_peer_online(self, online: bool, announce: bool = True) -> None:
        if online == self.peer_online:
            self.show_presence()
            return
        self.peer_online = online
        self.show_presence()
        if online:
            self.entry.configure(state="normal")
            self.send_button.configure(state="normal")
            if announce:
                self.add_notice(f"{self.peer} está online de novo.")
        else:
            self.entry.configure(state="disabled")
            self.send_button.configure(state="disabled")
            if announce:
                self.add_notice(f"{self.peer} saiu do chat. O envio fica desativado "
                                "até que volte.")

    def _on_return(self, _event: object) -> str:
        self.send()
        return "break"

    def send(self) -> None:
        """Send what is typed (the Enviar button and Enter); keep the focus on the entry."""
        text = self.entry.get()
        if text.strip() and self.app.send_message(self, text):
            self.entry.delete(0, "end")
        self.entry.focus_set()
        self.flush()

    def destroy(self) -> None:
        with contextlib.suppress(tk.TclError):
            self.top.destroy()


class ChatApp:
    """The main window: connection form, online users, status bar.

    ``master`` is the window to build in (a ``Tk`` root, or a ``Toplevel`` so
    tests can host two clients in one Tk). Everything here runs in Tk's thread;
    the session's thread only fills a queue that ``_poll`` drains.
    """

    def __init__(self, master: tk.Misc, *, host: str = DEFAULT_HOST,
                 port: int = protocolo.DEFAULT_PORT, nick: str = "", use_tls: bool = False,
                 tls_ca: str | None = None,
                 session_factory: Callable[[], ChatSession] = ChatSession,
                 history_limit: int = HISTORY_LIMIT) -> None:
        if tk is None:
            raise RuntimeError("tkinter não está disponível neste Python")
        self.master = master
        self.tls_ca = tls_ca
        self.session_factory = session_factory
        self.history_limit = history_limit
        self.session: ChatSession | None = None
        self.nick = ""
        self.users: dict[str, str] = {}  # nick_key -> nickname as the server spells it
        self.unread: dict[str, int] = {}
        self.conversations: dict[str, Conversation] = {}
        self.received = 0  # messages received this run (tests and diagnostics)
        self._list_keys: list[str] = []
        self._list_dirty = False
        self._poll_id: str | None = None
        self._quit_requested = False
        self._closed = False
        self._form_state = "disconnected"
        self._connected_status = ""
        self._refresh_requested = False

        self.fonts = _make_fonts(master)
        _setup_style(master)
        self.host_var = tk.StringVar(master, host)
        self.port_var = tk.StringVar(master, str(port))
        self.nick_var = tk.StringVar(master, nick)
        self.tls_var = tk.BooleanVar(master, use_tls or bool(tls_ca))
        self.status_var = tk.StringVar(master, "Desconectado.")
        self.users_title_var = tk.StringVar(master, "Usuários online")
        self._build()
        self._set_form_state("disconnected")
        master.title("Chat")
        master.protocol("WM_DELETE_WINDOW", self.close)
        self._poll_id = master.after(POLL_MS, self._poll)

    # -- layout ------------------------------------------------------------

    def _build(self) -> None:
        master = self.master
        master.minsize(340, 420)
        outer = ttk.Frame(master, padding=10)
        outer.pack(fill="both", expand=True)

        form = ttk.LabelFrame(outer, text="Conexão", padding=(10, 6, 10, 10))
        form.pack(fill="x")
        form.columnconfigure(1, weight=1)
        ttk.Label(form, text="Servidor:").grid(row=0, column=0, sticky="w", pady=3)
        self.host_entry = ttk.Entry(form, textvariable=self.host_var, width=22)
        self.host_entry.grid(row=0, column=1, sticky="ew", padx=(6, 10), pady=3)
        ttk.Label(form, text="Porta:").grid(row=0, column=2, sticky="w", pady=3)
        self.port_entry = ttk.Entry(form, textvariable=self.port_var, width=6)
        self.port_entry.grid(row=0, column=3, sticky="w", padx=(6, 0), pady=3)
        ttk.Label(form, text="Apelido:").grid(row=1, column=0, sticky="w", pady=3)
        self.nick_entry = ttk.Entry(form, textvariable=self.nick_var, width=22)
        self.nick_entry.grid(row=1, column=1, sticky="ew", padx=(6, 10), pady=3)
        self.tls_check = ttk.Checkbutton(form, text="Usar TLS", variable=self.tls_var)
        self.tls_check.grid(row=1, column=2, columnspan=2, sticky="w", pady=3)
        buttons = ttk.Frame(form)
        buttons.grid(row=2, column=0, columnspan=4, sticky="ew", pady=(8, 0))
        self.connect_button = ttk.Button(buttons, text="Conectar", command=self.connect)
        self.connect_button.pack(side="left")
        self.disconnect_button = ttk.Button(buttons, text="Desconectar",
                                            command=self.disconnect)
        self.disconnect_button.pack(side="left", padx=(8, 0))
        for entry in (self.host_entry, self.port_entry, self.nick_entry):
            entry.bind("<Return>", self._on_form_return)
            entry.bind("<KP_Enter>", self._on_form_return)

        ttk.Label(outer, textvariable=self.users_title_var, style="Heading.TLabel").pack(
            anchor="w", pady=(12, 4))
        box = _bordered_box(outer)
        box.pack(fill="both", expand=True)
        self.users_list = tk.Listbox(
            box, height=10, width=30, activestyle="none", exportselection=False,
            selectmode="browse", font=self.fonts["text"], relief="flat", borderwidth=0,
            highlightthickness=0, background=LIST_BACKGROUND,
            selectbackground="#cfe0f5", selectforeground="#000000")
        scrollbar = ttk.Scrollbar(box, orient="vertical", command=self.users_list.yview)
        self.users_list.configure(yscrollcommand=scrollbar.set)
        scrollbar.pack(side="right", fill="y")
        self.users_list.pack(side="left", fill="both", expand=True, padx=(6, 0), pady=4)
        self.users_list.bind("<Double-Button-1>", self._on_list_activate)
        self.users_list.bind("<Return>", self._on_list_activate)
        self.users_list.bind("<KP_Enter>", self._on_list_activate)

        actions = ttk.Frame(outer, padding=(0, 8, 0, 0))
        actions.pack(fill="x")
        self.refresh_button = ttk.Button(actions, text="Atualizar Lista",
                                         command=self.refresh_users)
        self.refresh_button.pack(side="left")
        self.chat_button = ttk.Button(actions, text="Iniciar Chat", command=self.start_chat)
        self.chat_button.pack(side="right")

        status = ttk.Frame(master, style="Status.TFrame", padding=(10, 4))
        status.pack(fill="x", side="bottom", before=outer)
        self.status_label = ttk.Label(status, textvariable=self.status_var,
                                      style="Status.TLabel", anchor="w", wraplength=360)
        self.status_label.pack(fill="x")
        status.bind("<Configure>", lambda event: self.status_label.configure(
            wraplength=max(event.width - 20, 100)))

    def _set_form_state(self, state: str) -> None:
        """Lock the form while connecting or connected."""
        self._form_state = state
        editable = "normal" if state == "disconnected" else "disabled"
        for widget in (self.host_entry, self.port_entry, self.nick_entry, self.tls_check):
            widget.configure(state=editable)
        self.connect_button.configure(state=editable)
        self.disconnect_button.configure(
            state="disabled" if state == "disconnected" else "normal")
        online = "normal" if state == "connected" else "disabled"
        self.refresh_button.configure(state=online)
        self.chat_button.configure(state=online)

    def set_status(self, text: str, error: bool = False) -> None:
        self.status_var.set(text)
        self.status_label.configure(style="StatusError.TLabel" if error else "Status.TLabel")

    def place_conversation(self, top: tk.Toplevel) -> None:
        """Cascade chat windows to the right of the main window."""
        index = sum(1 for conv in self.conversations.values() if conv.visible)
        top.update_idletasks()
        width, height = top.winfo_reqwidth(), top.winfo_reqheight()
        screen_width, screen_height = top.winfo_screenwidth(), top.winfo_screenheight()
        left, top_y = self.master.winfo_rootx(), self.master.winfo_rooty()
        x = left + self.master.winfo_width() + 16 + 28 * index
        if x + width > screen_width:  # no room on the right: try the left side
            x = left - width - 16 - 28 * index
        x = min(max(x, 0), max(screen_width - width, 0))
        y = min(max(top_y + 28 * index, 0), max(screen_height - height, 0))
        top.geometry(f"+{x}+{y}")

    # -- connecting ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True from the ``Connected`` event on, as long as the session lives."""
        return (self._form_state == "connected" and self.session is not None
                and self.session.connected)

    def _on_form_return(self, _event: object) -> str:
        if str(self.connect_button.cget("state")) != "disabled":
            self.connect()
        return "break"

    def connect(self) -> None:
        """Validate the form and start connecting (in the session's thread)."""
        if self.session is not None:
            return
        host = self.host_var.get().strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # an IPv6 address written as in a URL
        nick = self.nick_var.get().strip()
        port_text = self.port_var.get().strip()
        if not host:
            self.set_status("Informe o servidor (endereço IP ou nome).", error=True)
            return
        if not (port_text.isascii() and port_text.isdecimal()
                and 1 <= int(port_text) <= 65535):
            self.set_status("Porta inválida: use um número de 1 a 65535.", error=True)
            return
        if not nick:
            self.set_status("Informe um apelido.", error=True)
            return
        if not protocolo.valid_nick(nick):
            self.set_status(_REGISTER_ERRORS[ErrorCode.APELIDO_INVALIDO], error=True)
            return
        port = int(port_text)
        session = self.session_factory()
        self.session = session
        self._set_form_state("connecting")
        secure = " com TLS" if self.tls_var.get() else ""
        self.set_status(f"Conectando a {host}:{port}{secure}…")
        session.start(host, port, nick, use_tls=self.tls_var.get(),
                      tls_ca=self.tls_ca if self.tls_var.get() else None)

    def disconnect(self) -> None:
        """Leave the server without quitting (also cancels a connection in progress)."""
        session, self.session = self.session, None
        if session is None:
            return
        session.close(wait=False)
        self._went_offline("Desconectado.", "Você se desconectou do servidor.", error=False)

    def _went_offline(self, status: str, notice: str, error: bool) -> None:
        self._set_form_state("disconnected")
        self.master.title("Chat")
        self.set_status(status, error=error)
        self.users.clear()
        self._list_dirty = True
        for conv in self.conversations.values():
            conv.add_notice(notice, error=error)
            conv.show_presence()
            conv.flush()
        self._refresh_list()

    def refresh_users(self) -> None:
        """Atualizar Lista: ask the server again (the list is also kept live)."""
        if self.session is None or not self.connected:
            self.set_status("Conecte-se primeiro.", error=True)
            return
        try:
            self.session.list_users()
        except (NotConnectedError, SendQueueFullError):
            self.set_status("Não foi possível pedir a lista agora.", error=True)
            return
        self._refresh_requested = True

    # -- conversations -------------------------------------------------------

    def selected_user(self) -> str | None:
        selection = self.users_list.curselection()
        if not selection:
            return None
        index = int(selection[0])
        return self._list_keys[index] if index < len(self._list_keys) else None

    def _on_list_activate(self, _event: object) -> str:
        self.start_chat()
        return "break"

    def start_chat(self) -> None:
        """Iniciar Chat: open (or bring back) the window for the selected user."""
        key = self.selected_user()
        if key is None:
            self.set_status("Selecione um usuário na lista para conversar.", error=True)
            return
        conv = self.conversation(self.users.get(key, key))
        conv.show(focus=True)
        conv.flush()

    def conversation(self, peer: str) -> Conversation:
        """The conversation with ``peer``, created (hidden) on first use."""
        key = protocolo.nick_key(peer)
        conv = self.conversations.get(key)
        if conv is None:
            conv = Conversation(self, peer, self.history_limit)
            conv.set_peer_online(key in self.users or not self.connected, announce=False)
            self.conversations[key] = conv
        return conv

    def mark_read(self, peer: str) -> None:
        if self.unread.pop(protocolo.nick_key(peer), 0):
            self._list_dirty = True
            self._refresh_list()

    def send_message(self, conv: Conversation, text: str) -> bool:
        """Send ``text`` to ``conv``'s peer; False (with a notice) when refused."""
        if not self.connected or self.session is None:
            conv.add_notice("Você está desconectado: a mensagem não foi enviada. "
                            "Conecte-se na janela principal e tente de novo.", error=True)
            return False
        if not conv.peer_online:
            conv.add_notice(f"{conv.peer} não está online: a mensagem não foi enviada.",
                            error=True)
            return False
        text = clean_message_text(text)
        if message_too_long(conv.peer, text):
            conv.add_notice("Mensagem longa demais: o limite é de cerca de "
                            f"{protocolo.MAX_REQUEST_BYTES - 64} bytes. Não foi enviada.",
                            error=True)
            return False
        try:
            self.session.send_message(conv.peer, text)
        except NotConnectedError:
            conv.add_notice("Você está desconectado: a mensagem não foi enviada.", error=True)
            return False
        except SendQueueFullError:
            conv.add_notice("O servidor não está recebendo dados agora: a mensagem não "
                            "foi enviada. Tente de novo em instantes.", error=True)
            return False
        conv.add_message(self.nick, text, own=True)
        return True

    # -- the queue ------------------------------------------------------------

    def _poll(self) -> None:
        """Drain a bounded batch of session events, then write the batched lines."""
        self._poll_id = None
        if self._quit_requested:
            self.close()
            return
        started = time.monotonic()
        handled = 0
        session = self.session
        while session is not None and session is self.session and handled < MAX_EVENTS_PER_TICK:
            try:
                event = session.events.get_nowait()
            except queue.Empty:
                break
            try:
                self._dispatch(event)
            except tk.TclError:
                log.exception("erro ao mostrar o evento %r", event)
            handled += 1
            if handled % 64 == 0 and time.monotonic() - started > TICK_BUDGET:
                break
        for conv in self.conversations.values():
            conv.flush()
        if self._list_dirty:
            self._refresh_list()
        busy = session is not None and session is self.session and not session.events.empty()
        self._poll_id = self.master.after(1 if busy else POLL_MS, self._poll)

    def _dispatch(self, event: object) -> None:
        if isinstance(event, protocolo.Message):
            self._on_message(event)
        elif isinstance(event, protocolo.Joined):
            self._on_joined(event.nick)
        elif isinstance(event, protocolo.Left):
            self._on_left(event.nick)
        elif isinstance(event, Reply):
            self._on_reply(event)
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, ConnectFailed):
            self.session = None
            self._set_form_state("disconnected")
            self.set_status(event.message, error=True)
        elif isinstance(event, Disconnected):
            self.session = None
            if event.by_user:
                self._went_offline("Desconectado.", "Você se desconectou do servidor.", False)
            else:
                self._went_offline(f"{event.message} Clique em Conectar para reconectar.",
                                   "A conexão com o servidor foi perdida.", True)

    def _on_connected(self, event: Connected) -> None:
        self.nick = event.nick
        self._set_form_state("connected")
        self.master.title(f"Chat — {event.nick}")
        secure = " (TLS)" if event.tls else ""
        self._connected_status = (f"Conectado como {event.nick} a "
                                  f"{event.host}:{event.port}{secure}.")
        self.set_status(self._connected_status)
        for conv in self.conversations.values():
            conv.update_title()
            conv.add_notice("Conectado ao servidor.")
            conv.show_presence()
        self.users_list.focus_set()

    def _on_message(self, message: protocolo.Message) -> None:
        self.received += 1
        key = protocolo.nick_key(message.sender)
        if key not in self.users and key != protocolo.nick_key(self.nick):
            # It is online right now, even if the list has not caught up yet.
            self.users[key] = message.sender
            self._list_dirty = True
        conv = self.conversation(message.sender)
        conv.set_peer_online(True, announce=False)
        conv.add_message(message.sender, message.text, own=False)
        if not conv.visible:
            conv.show(focus=False)
        if not conv.has_focus():
            self.unread[key] = self.unread.get(key, 0) + 1
            self._list_dirty = True

    def _on_joined(self, nick: str) -> None:
        key = protocolo.nick_key(nick)
        if key == protocolo.nick_key(self.nick):
            return
        self.users[key] = nick
        self._list_dirty = True
        conv = self.conversations.get(key)
        if conv is not None:
            conv.set_peer_online(True)

    def _on_left(self, nick: str) -> None:
        key = protocolo.nick_key(nick)
        self.users.pop(key, None)
        self._list_dirty = True
        conv = self.conversations.get(key)
        if conv is not None:
            conv.set_peer_online(False)

    def _on_reply(self, event: Reply) -> None:
        request, result = event.request, event.result
        if isinstance(request, protocolo.Send):
            if not isinstance(result, protocolo.Ok):
                self.conversation(request.target).add_notice(
                    describe_send_error(result, request.target), error=True)
        elif isinstance(request, protocolo.ListUsers) and isinstance(result, UserList):
            me = protocolo.nick_key(self.nick)
            self.users = {protocolo.nick_key(n): n for n in result.nicks
                          if protocolo.nick_key(n) != me}
            self._list_dirty = True
            for key, conv in self.conversations.items():
                conv.set_peer_online(key in self.users)
            if self._refresh_requested:
                self._refresh_requested = False
                self.set_status(f"{self._connected_status} Lista atualizada às {_now()}.")

    def _refresh_list(self) -> None:
        """Redraw the users list (sorted, with unread counts), keeping the selection."""
        self._list_dirty = False
        selected = self.selected_user()
        keys = sorted(self.users, key=lambda k: (k, self.users[k]))
        labels = []
        for key in keys:
            count = self.unread.get(key, 0)
            labels.append(f"{self.users[key]} ({count})" if count else self.users[key])
        current = list(self.users_list.get(0, "end"))
        if labels != current:
            self.users_list.delete(0, "end")
            if labels:
                self.users_list.insert("end", *labels)
        self._list_keys = keys
        if selected in keys:
            index = keys.index(selected)
            self.users_list.selection_set(index)
            self.users_list.see(index)
        self.users_title_var.set(f"Usuários online ({len(keys)})" if self.connected
                                 else "Usuários online")

    # -- closing -------------------------------------------------------------

    def request_quit(self) -> None:
        """Ask for a clean exit from any context (e.g. a signal handler)."""
        self._quit_requested = True

    def close(self) -> None:
        """The X button: leave the server, stop the thread, destroy every window."""
        if self._closed:
            return
        self._closed = True
        if self._poll_id is not None:
            with contextlib.suppress(tk.TclError):
                self.master.after_cancel(self._poll_id)
            self._poll_id = None
        # Hide first: waiting for the server to confirm SAIR (bounded) must
        # not look like a frozen window.
        for conv in self.conversations.values():
            conv.destroy()
        self.conversations.clear()
        with contextlib.suppress(tk.TclError):
            self.master.withdraw()
            self.master.update_idletasks()  # let the X server see it now
        session, self.session = self.session, None
        if session is not None:
            session.close(wait=True)
        with contextlib.suppress(tk.TclError):
            self.master.destroy()

    @property
    def closed(self) -> bool:
        return self._closed


def _bordered_box(parent: tk.Misc) -> tk.Frame:
    """A white box with a thin border, to hold a list or text and its scrollbar."""
    return tk.Frame(parent, background=LIST_BACKGROUND, highlightthickness=1,
                    highlightbackground=BORDER_COLOR, highlightcolor=BORDER_COLOR,
                    borderwidth=0)


def _make_fonts(master: tk.Misc) -> dict[str, tkfont.Font]:
    base = tkfont.nametofont("TkDefaultFont", root=master)
    size = base.actual("size")
    family = base.actual("family")
    return {
        "text": tkfont.Font(root=master, family=family, size=size + 1),
        "bold": tkfont.Font(root=master, family=family, size=size + 1, weight="bold"),
        "italic": tkfont.Font(root=master, family=family, size=size + 1, slant="italic"),
        "small": tkfont.Font(root=master, family=family, size=max(size - 1, 7)),
    }


def _setup_style(master: tk.Misc) -> None:
    style = ttk.Style(master)
    if "clam" in style.theme_names() and style.theme_use() == "default":
        style.theme_use("clam")
    background = style.lookup("TFrame", "background") or "#dcdad5"
    style.configure("Heading.TLabel", font=tkfont.nametofont("TkHeadingFont", root=master))
    style.configure("Status.TFrame", background="#ebe9e4", relief="sunken")
    style.configure("Status.TLabel", background="#ebe9e4", foreground="#303030")
    style.configure("StatusError.TLabel", background="#ebe9e4", foreground=COLOR_ERROR)
    style.configure("Online.TLabel", foreground=COLOR_PEER)
    style.configure("Offline.TLabel", foreground=COLOR_TIME)
    master.configure(background=background)


# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-cliente",
        description="Cliente gráfico do chat em rede local.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"servidor: endereço IPv4/IPv6 ou nome (padrão: {DEFAULT_HOST})")
    parser.add_argument("--port", type=_port, default=protocolo.DEFAULT_PORT,
                        help=f"porta do servidor (padrão: {protocolo.DEFAULT_PORT})")
    parser.add_argument("--apelido", default="", help="apelido a usar no chat")
    parser.add_argument("--conectar", action="store_true",
                        help="conectar assim que a janela abrir")
    parser.add_argument("--tls", action="store_true",
                        help="conectar com TLS, verificando o certificado do servidor")
    parser.add_argument("--tls-ca", metavar="CA",
                        help="certificado (PEM) da autoridade que assina o do servidor; "
                             "implica --tls (padrão: as autoridades do sistema)")
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"porta inválida: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"porta fora do intervalo 1-65535: {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 cliente.py`` and of the ``chat-cliente`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if tk is None:
        print("erro: o tkinter não está instalado (no Debian/Ubuntu: apt install python3-tk)",
              file=sys.stderr)
        return 1
    try:
        root = tk.Tk()
    except tk.TclError as exc:
        print(f"erro: não foi possível abrir a janela ({exc}). A variável DISPLAY está "
              "definida?", file=sys.stderr)
        return 1
    app = ChatApp(root, host=args.host, port=args.port, nick=args.apelido,
                  use_tls=args.tls, tls_ca=args.tls_ca)

    def on_signal(signum: int, frame: object) -> None:
        app.request_quit()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    if args.conectar:
        app.connect()
    with contextlib.suppress(KeyboardInterrupt):
        root.mainloop()
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
