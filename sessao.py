"""The chat client's network session: one connection to the server, no Tk.

Theory of operation
-------------------
A ``ChatSession`` is run by one background thread, the only one that ever
touches the socket (OpenSSL requires that of a TLS socket). Callers -- the
window, a test -- queue requests with ``request`` and friends, which never
block on the network, and read what happened from ``events``, a bounded
``EventQueue``. Every line goes through ``protocolo.py``.

The thread's life::

    connect -> OLA 2, REGISTRAR -> ASSINAR, LISTAR, ENTRAR each room
            -> read and write until the end
            -> lost? wait 1, 2, 4, 8, 15, 30, 30... s (cancelable) and connect again

* **Replies** are matched to requests in order (one reply per request, in
  order, and pushes never split a reply). A reply that cannot belong to the
  request it would answer, an over-long multi-line reply, or a flood of
  unreadable lines is a protocol violation: the connection is dropped with a
  Portuguese message. Every multi-line reply is capped (``MAX_LIST_ENTRIES``,
  ``protocolo.HISTORY_MAX_LIMIT``).
* **Back-pressure**: when the reader of ``events`` falls behind
  (``EVENTS_HIGH_WATER`` events waiting), the thread stops reading the socket
  until the queue drains to ``EVENTS_LOW_WATER``; TCP then slows the server
  down. Memory never grows with the server's speed.
* **Liveness**: after ``idle_ping`` seconds without a byte from the server
  the thread sends PING; if nothing arrives within ``ping_timeout`` more
  seconds the connection counts as lost. A frozen server is noticed within
  ``idle_ping + ping_timeout + SELECT_INTERVAL`` seconds (40.25 s by default).
* **Delivery**: a message that got no ``OK`` before a loss comes back as a
  ``Reply`` whose result is ``Lost``: it is never resent silently. Messages
  pushed to this account are deduplicated by id; ``RECEBIDO`` with the highest
  id handed to the reader of ``events`` is sent at most every
  ``RECEIVED_INTERVAL`` seconds and before leaving.
* **Pacing**: everything the session writes goes through a token bucket
  (``REQUESTS_PER_S``, ``REQUEST_BURST``) well under the server's default
  rate limit, so a long paste or a reconnect with many rooms is never
  answered ``ERRO LIMITE``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

import limites
import protocolo
import rede
from protocolo import ErrorCode
from rede import format_host_port

log = logging.getLogger("cliente.sessao")

# --------------------------------------------------------------------------
# Bounds and timings (each defined once; the README lists them)

CONNECT_TIMEOUT = 10.0
"""Seconds for the TCP connection, the TLS handshake and the registration reply each."""
SEND_STALL_TIMEOUT = 15.0
"""Seconds queued output may make no progress before the connection counts as lost."""
CLOSE_TIMEOUT = 1.5
"""Seconds ``close`` waits for the server to confirm ``SAIR``."""
IDLE_BEFORE_PING = 20.0
"""Seconds without a byte from the server before the session sends PING."""
PING_TIMEOUT = 20.0
"""Seconds after that PING without a byte before the connection counts as lost."""
SELECT_INTERVAL = 0.25
"""The longest the thread sleeps; every timer above is checked at this granularity."""
RECONNECT_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds before each reconnect attempt; the last one repeats."""
RECONNECT_JITTER = 0.25
"""Up to this fraction is added to each delay, so a class does not come back in lockstep."""
RECEIVED_INTERVAL = 0.5
"""RECEBIDO is sent at most this often (and once more before leaving)."""
REQUESTS_PER_S = 10.0
REQUEST_BURST = 40
"""The session's own pace: half the server's default rate (20/s, burst 100)."""
MAX_OUTGOING_BYTES = 1024 * 1024
"""Bound on requests waiting to be written; past it a request is refused at once."""
MAX_PENDING_REPLIES = 2000
"""Requests written but not answered yet; past it a request is refused at once."""
EVENTS_HIGH_WATER = 2000
"""Events waiting for the reader past which the thread stops reading the socket."""
EVENTS_LOW_WATER = 500
"""Events left when reading resumes."""
MAX_LIST_ENTRIES = 10_000
"""Most users in one LISTAR or MEMBROS reply, and most rooms in one SALAS reply."""
MAX_UNREADABLE_LINES = 1000
"""Unreadable or unexpected lines tolerated on one connection before giving up on it."""
LOGGED_UNREADABLE_LINES = 5
"""Of those, how many are logged (the rest are only counted)."""
SEEN_IDS = 4096
"""Recent message ids remembered to drop duplicates (at-least-once delivery)."""
RECV_CHUNK = 32 * 1024
RECVS_PER_ROUND = 16
"""Reads per loop round, so a flood of pushes cannot starve the sending side."""
LIVENESS_BOUND_S = IDLE_BEFORE_PING + PING_TIMEOUT + SELECT_INTERVAL
"""The longest a frozen server goes unnoticed with the default timings."""


# --------------------------------------------------------------------------
# Events (what ``events`` carries) and results


@dataclass(frozen=True)
class Connected:
    """Registration succeeded: the session is usable (again, when ``reconnected``)."""

    nick: str
    host: str
    port: int
    tls: bool
    account: bool = False
    reconnected: bool = False

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True)
class ConnectFailed:
    """The first connection or its registration failed; ``message`` is for the user.

    ``field`` names the form field the problem belongs to (``servidor``,
    ``apelido``, ``senha`` or ``tls``), so a window can show it there.
    """

    message: str
    field: str = "servidor"


@dataclass(frozen=True)
class Disconnected:
    """An established session lost its connection, or was closed (``by_user``).

    ``retry_in`` is the number of seconds before the next attempt to
    reconnect, or None when the session has ended for good.
    """

    message: str
    by_user: bool
    retry_in: float | None = None


@dataclass(frozen=True)
class Reconnecting:
    """Attempt number ``attempt`` (1, 2, ...) to reconnect has started."""

    attempt: int


@dataclass(frozen=True)
class UserList:
    """A LISTAR or MEMBROS reply, assembled from its ``USUARIOS``/``USUARIO``/``END`` lines."""

    users: tuple[protocolo.UserEntry, ...]

    @property
    def nicks(self) -> list[str]:
        return [user.nick for user in self.users]


@dataclass(frozen=True)
class RoomList:
    """A SALAS reply."""

    rooms: tuple[protocolo.RoomEntry, ...]


@dataclass(frozen=True)
class HistoryPage:
    """A HISTORICO reply: items oldest first."""

    items: tuple[protocolo.HistoryItem, ...]


@dataclass(frozen=True)
class Lost:
    """Result of a request whose reply never came because the connection ended."""

    message: str


Result = (protocolo.Ok | protocolo.OkMessage | protocolo.Error | UserList | RoomList
          | HistoryPage | protocolo.Found | protocolo.NotFound | protocolo.Pong | Lost)


@dataclass(frozen=True)
class Reply:
    """The reply (or ``Lost``) to a request; ``serial`` tells equal requests apart."""

    request: protocolo.Request
    result: Result
    serial: int = 0


class CaFileError(Exception):
    """The ``--tls-ca`` file is missing or holds no certificate; ``str`` is for the user."""


class ConnectError(Exception):
    """``ChatSession.connect`` failed; ``str(exc)`` is a message for the user."""


class NotConnectedError(Exception):
    """A request was made on a session that is not registered and connected."""


class SendQueueFullError(Exception):
    """Too much output is already waiting for the server to take it."""


class ProtocolViolation(Exception):
    """The server broke the contract; ``str`` is for the user, and the connection ends."""


class PendingReply:
    """A request waiting for its reply, filled in by the session's thread."""

    def __init__(self, request: protocolo.Request, serial: int, silent: bool = False) -> None:
        self.request = request
        self.serial = serial
        self.silent = silent
        """No ``Reply`` event: the session made this request for itself."""
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
# The event queue: bounded by back-pressure


class EventQueue:
    """The session's events, first in first out, with back-pressure to the producer.

    ``put`` never blocks and never drops (an event is a fact the reader must
    see); the producer asks ``must_pause`` before reading more from the
    network, and stops while the queue holds ``high_water`` events. Taking
    events down to ``low_water`` calls ``on_room`` (the session wakes up).
    ``on_take`` sees each event as the reader takes it (the session counts
    which messages were handed over, for RECEBIDO).

    The methods the tests and the window use have ``queue.Queue``'s names
    and raise ``queue.Empty`` the same way.
    """

    def __init__(self, high_water: int = EVENTS_HIGH_WATER,
                 low_water: int = EVENTS_LOW_WATER) -> None:
        self.high_water = high_water
        self.low_water = min(low_water, high_water)
        self._items: deque[object] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self.on_take = None
        self.on_room = None
        self.most_waiting = 0
        """The largest number of events that ever waited (tests and diagnostics)."""

    def put(self, event: object) -> None:
        with self._cond:
            self._items.append(event)
            self.most_waiting = max(self.most_waiting, len(self._items))
            self._cond.notify()

    def must_pause(self) -> bool:
        """True when the producer should stop reading (and will be woken by ``on_room``)."""
        with self._cond:
            if len(self._items) >= self.high_water:
                self._paused = True
            return self._paused

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        with self._cond:
            if block and not self._items:
                self._cond.wait_for(lambda: self._items, timeout)
            if not self._items:
                raise queue.Empty
            event = self._items.popleft()
            resume = self._paused and len(self._items) <= self.low_water
            if resume:
                self._paused = False
        self._after_take(event, resume)
        return event

    def get_nowait(self) -> object:
        return self.get(block=False)

    def take(self, limit: int) -> list[object]:
        """Up to ``limit`` events at once, without waiting (the window's batched drain)."""
        with self._cond:
            count = min(limit, len(self._items))
            events = [self._items.popleft() for _ in range(count)]
            resume = self._paused and len(self._items) <= self.low_water
            if resume:
                self._paused = False
        for event in events:
            self._after_take(event, False)
        if resume and self.on_room is not None:
            self.on_room()
        return events

    def _after_take(self, event: object, resume: bool) -> None:
        if self.on_take is not None:
            self.on_take(event)
        if resume and self.on_room is not None:
            self.on_room()

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    def empty(self) -> bool:
        return self.qsize() == 0


# --------------------------------------------------------------------------
# User-facing texts for failures


_REGISTER_ERRORS = {
    # Shown under the field they belong to, in half the form's width: short.
    ErrorCode.APELIDO_EM_USO: ("apelido", "O apelido “{nick}” já está em uso. Escolha outro."),
    ErrorCode.APELIDO_INVALIDO: ("apelido", "Apelido inválido: 1 a 32 letras de um alfabeto, "
                                 "dígitos, _ - ."),
    ErrorCode.APELIDO_RESERVADO: ("senha", "“{nick}” tem conta aqui: informe a senha."),
    ErrorCode.SENHA_INCORRETA: ("senha", "Senha incorreta para “{nick}”."),
    ErrorCode.SENHA_INVALIDA: ("senha", "Senha inválida: 6 a 128 caracteres, sem espaços."),
    ErrorCode.SEM_CONTA: ("senha", "Este servidor não guarda contas; entre sem senha."),
    ErrorCode.JA_REGISTRADO: ("apelido", "Esta conexão já tem um apelido registrado."),
    ErrorCode.LOTADO: ("servidor", "O servidor está lotado. Tente de novo mais tarde."),
    ErrorCode.LIMITE: ("servidor", "O servidor recusou o pedido por excesso de tentativas "
                       "deste computador. Aguarde um minuto e tente de novo."),
    ErrorCode.TEMPO: ("servidor", "O servidor encerrou a conexão por inatividade."),
    ErrorCode.SO_DIRETO: ("apelido", "O servidor recusou o registro: {text}"),
}

_FATAL_ON_RECONNECT = frozenset({
    ErrorCode.APELIDO_INVALIDO, ErrorCode.APELIDO_RESERVADO, ErrorCode.SENHA_INCORRETA,
    ErrorCode.SENHA_INVALIDA, ErrorCode.SEM_CONTA, ErrorCode.JA_REGISTRADO,
})
"""Refusals that another attempt cannot cure (the nickname in use may be our own ghost)."""

_SEND_ERRORS = {
    ErrorCode.NAO_ENCONTRADO: ("{target} não está online e não tem conta neste servidor: "
                               "a mensagem não foi entregue."),
    ErrorCode.DESTINATARIO_LENTO: ("{target} não estava recebendo as mensagens a tempo e foi "
                                   "desconectado(a) pelo servidor: a mensagem não foi "
                                   "entregue."),
    ErrorCode.LIMITE: ("Muitas mensagens em pouco tempo: esta não foi enviada. "
                       "Aguarde um instante e reenvie."),
    ErrorCode.SO_DIRETO: ("{target} usa um cliente só de diretório e não recebe mensagens "
                          "pelo servidor: a mensagem não foi entregue."),
    ErrorCode.ARGUMENTOS: "O servidor recusou a mensagem (texto inválido): não foi enviada.",
    ErrorCode.LINHA_LONGA: "Mensagem longa demais: não foi enviada.",
    ErrorCode.CODIFICACAO: "O servidor não entendeu o texto da mensagem: não foi enviada.",
    ErrorCode.NAO_REGISTRADO: "Você não está registrado no servidor: a mensagem não foi enviada.",
    ErrorCode.NAO_MEMBRO: "Você não participa de {target}: a mensagem não foi enviada.",
    ErrorCode.SALA_INVALIDA: "Nome de sala inválido: a mensagem não foi enviada.",
    ErrorCode.ARMAZENAMENTO: ("O servidor não conseguiu guardar a mensagem (disco cheio?): "
                              "não foi enviada. Tente de novo mais tarde."),
}

_VERIFY_REASONS = {
    10: "o certificado do servidor expirou",
    18: "o certificado do servidor é autoassinado e não é confiável",
    19: "a cadeia do certificado tem uma autoridade autoassinada não confiável",
    20: "a autoridade que assinou o certificado do servidor não é confiável",
    62: "o nome do servidor não confere com o certificado",
    64: "o endereço IP do servidor não confere com o certificado",
}

_ERRNO_TEXTS = (
    (("ENETUNREACH", "WSAENETUNREACH"),
     "a rede está inacessível (este computador está conectado à rede?)"),
    (("EHOSTUNREACH", "WSAEHOSTUNREACH"), "o computador do servidor está inacessível"),
    (("EHOSTDOWN", "WSAEHOSTDOWN"), "o computador do servidor está desligado ou fora da rede"),
    (("ENETDOWN", "WSAENETDOWN"), "a rede deste computador está desligada"),
    (("EADDRNOTAVAIL", "WSAEADDRNOTAVAIL"), "o endereço não está disponível neste computador"),
    (("EACCES", "EPERM", "WSAEACCES"), "o sistema não permitiu a conexão (firewall?)"),
    (("EAFNOSUPPORT", "WSAEAFNOSUPPORT"), "este computador não tem esse tipo de endereço "
     "(IPv6?) ativo"),
    (("ENOBUFS", "WSAENOBUFS"), "o sistema está sem memória para conexões"),
    (("EMFILE", "ENFILE", "WSAEMFILE"), "o sistema está sem descritores de arquivo livres"),
)


def describe_os_error(exc: OSError) -> str:
    """A plain Portuguese phrase for a network error; never the OS's English text."""
    if isinstance(exc, ConnectionRefusedError):
        return "a conexão foi recusada (o servidor está rodando nessa porta?)"
    if isinstance(exc, ConnectionResetError):
        return "a conexão foi interrompida pelo outro lado"
    if isinstance(exc, ConnectionAbortedError):
        return "a conexão foi abortada"
    if isinstance(exc, BrokenPipeError):
        return "a conexão foi fechada pelo servidor"
    if isinstance(exc, TimeoutError):
        return "o tempo de espera esgotou"
    for names, text in _ERRNO_TEXTS:
        codes = {getattr(errno, name, None) for name in names} - {None}
        if exc.errno in codes or getattr(exc, "winerror", None) in codes:
            return text
    code = exc.errno if exc.errno is not None else "?"
    return f"erro de rede (código {code})"


def describe_connect_error(exc: BaseException, host: str, port: int,
                           tls_ca: str | None = None, tls: bool = False) -> tuple[str, str]:
    """(field, a clear Portuguese sentence) for a failure while connecting."""
    where = format_host_port(host, port)
    if isinstance(exc, CaFileError):
        return "tls", str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, "o certificado não pôde ser verificado")
        hint = ("confira o arquivo indicado em --tls-ca" if tls_ca
                else "indique o certificado da autoridade com --tls-ca")
        return "tls", (f"Certificado TLS de {where} rejeitado: {reason}. "
                       f"Por segurança, a conexão não foi feita ({hint}).")
    if isinstance(exc, ssl.SSLError):
        return "tls", (f"Falha na negociação TLS com {where}. O servidor usa TLS? "
                       "Se não usa, desmarque “Usar TLS”.")
    if isinstance(exc, socket.gaierror):
        if exc.errno in (getattr(socket, "EAI_AGAIN", None),):
            return "servidor", (f"Não foi possível consultar o nome “{host}” agora "
                                "(falha temporária de DNS). Tente de novo.")
        return "servidor", f"Servidor “{host}” não encontrado. Confira o nome ou o endereço IP."
    if isinstance(exc, ConnectionRefusedError):
        return "servidor", f"Conexão recusada por {where}. O servidor está rodando nessa porta?"
    if isinstance(exc, TimeoutError):
        if tls:
            return "servidor", (f"Tempo esgotado ao conectar com TLS a {where}. O servidor "
                                "está acessível e usa TLS? Se não usa, desmarque “Usar TLS”.")
        return "servidor", f"Tempo esgotado ao conectar a {where}. O servidor está acessível?"
    if isinstance(exc, OSError):
        return "servidor", f"Não foi possível conectar a {where}: {describe_os_error(exc)}."
    return "servidor", f"Não foi possível conectar a {where}: erro inesperado."


def describe_register_error(error: protocolo.Error, nick: str) -> tuple[str, str]:
    """(field, a clear Portuguese sentence) for a refused ``OLA`` or ``REGISTRAR``."""
    field, template = _REGISTER_ERRORS.get(error.code, ("servidor", "")) if error.code else (
        "servidor", "")
    if template:
        return field, template.format(nick=nick, text=error.text)
    return "servidor", f"O servidor recusou o registro: {error.text or error.code_word}"


def describe_send_error(result: Result, target: str) -> str:
    """A clear Portuguese sentence for a message the server did not accept."""
    if isinstance(result, Lost):
        return "A conexão caiu antes da confirmação: a mensagem não foi enviada."
    if isinstance(result, protocolo.Error):
        template = _SEND_ERRORS.get(result.code) if result.code else None
        if template:
            return template.format(target=target)
        return f"O servidor recusou a mensagem: {result.text or result.code_word}"
    return "Resposta inesperada do servidor: a mensagem pode não ter sido enviada."


def send_problem(target: str, text: str) -> str | None:
    """Why ``ENVIAR target text`` cannot go on the wire as it is, or None.

    The window repairs texts with ``protocolo.clean_text`` and cuts long
    ones before this; the session checks again so nothing it writes can be
    refused for its form.
    """
    if not text.strip():
        return "a mensagem está vazia"
    problem = protocolo.text_problem(text)
    if problem:
        return problem
    if len(protocolo.format_request(protocolo.Send(target, text))) > protocolo.MAX_REQUEST_BYTES:
        return "a mensagem é longa demais para uma linha do protocolo"
    return None


# --------------------------------------------------------------------------
# The session


class _Collector:
    """A multi-line reply being assembled: header count, entries so far, their type."""

    def __init__(self, kind: type, count: int, entry_type: type, cap: int) -> None:
        if count > cap:
            raise ProtocolViolation(f"o servidor anunciou uma lista de {count} itens "
                                    f"(o máximo aceito é {cap})")
        self.kind = kind
        self.count = count
        self.entry_type = entry_type
        self.entries: list[object] = []

    def add(self, entry: object) -> None:
        if len(self.entries) >= self.count:
            raise ProtocolViolation(f"o servidor mandou mais itens do que os {self.count} "
                                    "que anunciou")
        self.entries.append(entry)

    def result(self) -> Result:
        if len(self.entries) != self.count:
            raise ProtocolViolation(f"o servidor anunciou {self.count} itens e mandou "
                                    f"{len(self.entries)}")
        return self.kind(tuple(self.entries))


_MULTI_LINE = {
    protocolo.UsersHeader: (UserList, protocolo.UserEntry),
    protocolo.RoomsHeader: (RoomList, protocolo.RoomEntry),
    protocolo.HistoryHeader: (HistoryPage, protocolo.HistoryItem),
}


def _fits(request: protocolo.Request, item: object) -> bool:
    """Whether ``item`` (a reply line) can be the reply to ``request``."""
    if isinstance(item, protocolo.Error):
        return True
    if isinstance(request, protocolo.ListUsers | protocolo.Members):
        return isinstance(item, protocolo.UsersHeader)
    if isinstance(request, protocolo.ListRooms):
        return isinstance(item, protocolo.RoomsHeader)
    if isinstance(request, protocolo.History):
        return isinstance(item, protocolo.HistoryHeader)
    if isinstance(request, protocolo.Send):
        return isinstance(item, protocolo.OkMessage | protocolo.Ok)
    if isinstance(request, protocolo.Ping):
        return isinstance(item, protocolo.Pong)
    if isinstance(request, protocolo.Lookup):
        return isinstance(item, protocolo.Found | protocolo.NotFound)
    return isinstance(item, protocolo.Ok)


class ChatSession:
    """One user's presence on one server, across reconnects, run by one thread.

    Use ``start`` (returns at once; the outcome arrives as ``Connected`` or
    ``ConnectFailed``) or ``connect`` (blocks until the outcome and raises
    ``ConnectError``). A session starts once; after it ends, make another.
    Then pushes (``protocolo.Message``, ``Joined``, ``Left``, ``Delivered``),
    ``Reply``, ``Disconnected``, ``Reconnecting`` and ``Connected`` (with
    ``reconnected``) follow on ``events``.
    """

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT,
                 send_timeout: float = SEND_STALL_TIMEOUT,
                 close_timeout: float = CLOSE_TIMEOUT,
                 idle_ping: float = IDLE_BEFORE_PING,
                 ping_timeout: float = PING_TIMEOUT,
                 reconnect_delays: tuple[float, ...] | None = RECONNECT_DELAYS,
                 max_outgoing: int = MAX_OUTGOING_BYTES,
                 requests_per_s: float = REQUESTS_PER_S,
                 request_burst: int = REQUEST_BURST,
                 events_high_water: int = EVENTS_HIGH_WATER,
                 received_interval: float = RECEIVED_INTERVAL) -> None:
        self.events = EventQueue(events_high_water, min(EVENTS_LOW_WATER,
                                                        events_high_water // 4))
        self.events.on_take = self._on_event_taken
        self.events.on_room = self._wake
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.idle_ping = idle_ping
        self.ping_timeout = ping_timeout
        self.reconnect_delays = tuple(reconnect_delays or ())
        self.max_outgoing = max_outgoing
        self.received_interval = received_interval
        self.nick = ""
        self.host = ""
        self.port = 0
        self.tls = False
        self._password: str | None = None
        self._tls_ca: str | None = None
        self._initial_rooms: tuple[str, ...] = ()
        self._bucket = limites.TokenBucket(requests_per_s, request_burst)

        self._lock = threading.Lock()  # guards everything down to the next comment
        # idle, opening, registering, connected, waiting (to reconnect), closing, closed
        self._state = "idle"
        self._stop = False
        self._retry_now = False
        self._by_user = False
        self._closing_deadline = 0.0
        self._waiting: deque[bytes] = deque()  # lines paced by the bucket, not written yet
        self._waiting_bytes = 0
        self._outgoing = bytearray()
        self._pending: deque[PendingReply] = deque()
        self._serials = 0
        self._joined: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # never block while holding the lock

        self._thread: threading.Thread | None = None
        self._outcome = threading.Event()
        self._connect_error: str | None = None
        self._shown_direct_id = 0
        """Highest id of a message to this account that the reader took (GUI thread writes)."""
        self._repeated_direct_id = 0
        """Highest id of a message to this account pushed again after the reader had it."""
        # Only the session thread uses these:
        self._collector: _Collector | None = None
        self._acked_id = 0
        self._last_ack = 0.0
        self._seen: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
        """(id, time) of recent messages: an id alone repeats after an --efemero restart."""
        self._unreadable = 0
        self._refusal: tuple[str, str, bool] | None = None  # field, message, fatal
        self._last_byte = 0.0
        self._ping_sent_at: float | None = None
        self._established = False
        self._registered_now = False

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while registered, until the connection ends or ``close`` is called."""
        return self._state == "connected"

    @property
    def state(self) -> str:
        return self._state

    @property
    def account(self) -> bool:
        """True when registered with a password: the nickname is this user's account."""
        return self._password is not None

    @property
    def rooms(self) -> list[str]:
        """The rooms this session is in (and rejoins after a reconnect)."""
        with self._lock:
            return list(self._joined.values())

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    def start(self, host: str, port: int, nick: str, *, password: str | None = None,
              use_tls: bool = False, tls_ca: str | None = None,
              rooms: tuple[str, ...] = (protocolo.DEFAULT_ROOM,)) -> None:
        """Connect and register in the background; the outcome comes as an event."""
        with self._lock:
            if self._state != "idle":
                raise RuntimeError("uma ChatSession só conecta uma vez; crie outra")
            self._state = "opening"
        self.host, self.port, self.nick = host, port, nick
        self._password = password or None
        self.tls, self._tls_ca = use_tls or bool(tls_ca), tls_ca
        self._initial_rooms = tuple(rooms)
        self._thread = threading.Thread(target=self._run, name=f"chat-sessao-{nick}",
                                        daemon=True)
        self._thread.start()

    def connect(self, host: str, port: int, nick: str, **options: object) -> None:
        """Connect and register, blocking; raise ``ConnectError`` with a user message."""
        self.start(host, port, nick, **options)  # type: ignore[arg-type]
        # Connect, handshake and registration are each bounded by connect_timeout.
        if not self._outcome.wait(3 * self.connect_timeout + 1.0):
            self.close(wait=False)
            raise ConnectError(f"Tempo esgotado ao conectar a {self.address}.")
        if self._connect_error is not None:
            raise ConnectError(self._connect_error)

    def close(self, wait: bool = True) -> None:
        """Leave the server (``RECEBIDO``, ``SAIR``, bounded wait) and stop the thread.

        Also cancels a reconnect in progress. With ``wait`` the thread is
        joined (bounded); without, it finishes on its own within
        ``close_timeout``. Safe to call repeatedly, from any state.
        """
        with self._lock:
            if self._state == "idle":
                self._state = "closed"
                self._close_wake_locked()
                return
            self._by_user = True
            if self._state == "connected":
                self._state = "closing"
                self._closing_deadline = time.monotonic() + self.close_timeout
                self._queue_final_ack_locked()
                self._enqueue_locked(protocolo.Quit(), silent=True, paced=False)
            elif self._state != "closing":
                self._stop = True
            self._wake_locked()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 1.0)

    def cancel_reconnect(self) -> None:
        """Stop trying to reconnect (the session ends with ``Disconnected(by_user=True)``)."""
        with self._lock:
            if self._state in ("waiting", "opening", "registering") and self._established:
                self._by_user = True
                self._stop = True
                self._wake_locked()

    def reconnect_now(self) -> None:
        """Skip the rest of the back-off wait and try at once."""
        with self._lock:
            if self._state == "waiting":
                self._retry_now = True
                self._wake_locked()

    # -- requests -------------------------------------------------------------

    def request(self, request: protocolo.Request) -> PendingReply:
        """Queue ``request``; its reply comes as a ``Reply`` event (and on the returned object).

        Never blocks on the network. Raises ``NotConnectedError`` unless the
        session is registered, and ``SendQueueFullError`` when the server
        has stopped taking requests.
        """
        with self._lock:
            if self._state != "connected":
                raise NotConnectedError("não conectado ao servidor")
            if (self._waiting_bytes + len(self._outgoing) >= self.max_outgoing
                    or len(self._pending) >= MAX_PENDING_REPLIES):
                raise SendQueueFullError("fila de envio cheia")
            pending = self._enqueue_locked(request)
            self._wake_locked()
        return pending

    def send_message(self, target: str, text: str) -> PendingReply:
        """``ENVIAR target text``; ``ValueError`` (in Portuguese) if it cannot go on the wire."""
        problem = send_problem(target, text)
        if problem:
            raise ValueError(problem)
        return self.request(protocolo.Send(target, text))

    def list_users(self) -> PendingReply:
        """``LISTAR``; the result is a ``UserList``."""
        return self.request(protocolo.ListUsers())

    def list_rooms(self) -> PendingReply:
        """``SALAS``; the result is a ``RoomList``."""
        return self.request(protocolo.ListRooms())

    def members(self, room: str) -> PendingReply:
        """``MEMBROS #sala``; the result is a ``UserList``."""
        return self.request(protocolo.Members(room))

    def join(self, room: str) -> PendingReply:
        """``ENTRAR #sala``; once OK, the room is rejoined after every reconnect."""
        return self.request(protocolo.Join(room))

    def leave(self, room: str) -> PendingReply:
        """``DEIXAR #sala``."""
        return self.request(protocolo.Leave(room))

    def history(self, target: str, before_id: int | None = None,
                limit: int | None = None) -> PendingReply:
        """``HISTORICO``; the result is a ``HistoryPage`` (oldest first)."""
        return self.request(protocolo.History(target, before_id, limit))

    def ping(self, token: str = "") -> PendingReply:
        return self.request(protocolo.Ping(token))

    def _enqueue_locked(self, request: protocolo.Request, silent: bool = False,
                        paced: bool = True) -> PendingReply:
        self._serials += 1
        pending = PendingReply(request, self._serials, silent)
        line = protocolo.format_request(request)
        if paced:
            self._waiting.append(line)
            self._waiting_bytes += len(line)
        else:  # SAIR and the registration go at once, but after what waits
            self._flush_waiting_locked(force=True)
            self._outgoing += line
        self._pending.append(pending)
        return pending

    def _flush_waiting_locked(self, force: bool = False) -> float | None:
        """Move paced lines to the output as tokens allow; seconds until the next, or None."""
        now = time.monotonic()
        while self._waiting:
            if not force and not self._bucket.take(1.0, now):
                return self._bucket.wait(1.0, now) if self._bucket.rate > 0 else SELECT_INTERVAL
            line = self._waiting.popleft()
            self._waiting_bytes -= len(line)
            self._outgoing += line
        return None

    def _ack_candidate(self) -> int:
        """The id RECEBIDO should carry: the newest message to this account the user has."""
        return max(self._shown_direct_id, self._repeated_direct_id)

    def _queue_final_ack_locked(self) -> None:
        if self.account and self._ack_candidate() > self._acked_id:
            self._acked_id = self._ack_candidate()
            self._enqueue_locked(protocolo.Received(self._acked_id), silent=True, paced=False)

    def _wake(self) -> None:
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._state != "closed":
            with contextlib.suppress(OSError):  # a full pipe is already awake
                self._wake_w.send(b"\0")

    def _close_wake_locked(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def _on_event_taken(self, event: object) -> None:
        """Runs in the reader's thread: note the newest message to this account handed over."""
        if (isinstance(event, protocolo.Message) and event.message_id is not None
                and not protocolo.is_room(event.target)
                and event.message_id > self._shown_direct_id):
            self._shown_direct_id = event.message_id

    # -- the session thread: connections and back-off ----------------------------

    def _run(self) -> None:
        attempt = 0
        try:
            while True:
                message, fatal, registered = self._connection()
                if registered:
                    attempt = 0
                with self._lock:
                    stop, by_user = self._stop or self._state == "closing", self._by_user
                if not self._established:
                    self._connect_failed(message)
                    return
                if stop or by_user:
                    self._ended("Desconectado.", by_user=True)
                    return
                delays = self.reconnect_delays
                if fatal or not delays:
                    self._ended(message or "Conexão perdida.", by_user=False)
                    return
                delay = delays[min(attempt, len(delays) - 1)]
                delay *= 1.0 + random.uniform(0.0, RECONNECT_JITTER)
                attempt += 1
                self.events.put(Disconnected(message or "Conexão perdida.", False,
                                             round(delay, 2)))
                if not self._wait_to_retry(delay):
                    self._ended("Reconexão cancelada.", by_user=True)
                    return
                self.events.put(Reconnecting(attempt))
        except Exception:  # never a traceback in the user's face; the window hears of it
            log.exception("erro inesperado na sessão")
            self._ended("Erro inesperado na conexão.", by_user=False)
        finally:
            with self._lock:
                self._state = "closed"
                self._close_wake_locked()
            self._outcome.set()

    def _wait_to_retry(self, delay: float) -> bool:
        """Wait ``delay`` seconds (or until ``reconnect_now``); False when told to stop."""
        with self._lock:
            self._state = "waiting"
        deadline = time.monotonic() + delay
        while True:
            with self._lock:
                if self._stop:
                    return False
                if self._retry_now:
                    self._retry_now = False
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([self._wake_r], [], [], min(remaining, SELECT_INTERVAL))
            self._drain_wake()
        with self._lock:
            if self._stop:
                return False
            self._state = "opening"
        return True

    def _connect_failed(self, message: str | None) -> None:
        field, text = (self._refusal[0], self._refusal[1]) if self._refusal else (
            "servidor", message or "A conexão foi encerrada durante o registro.")
        if self._stop and not self._refusal and message is None:
            text = "Conexão cancelada."
        self._connect_error = text
        self._fail_pending("Conexão cancelada.")
        self.events.put(ConnectFailed(text, field))

    def _ended(self, message: str, by_user: bool) -> None:
        self._fail_pending(message)
        self.events.put(Disconnected(message, by_user, None))

    def _fail_pending(self, message: str) -> None:
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            self._outgoing.clear()
            self._waiting.clear()
            self._waiting_bytes = 0
        for item in pending:
            item._resolve(Lost(message))
            if not item.silent:
                self.events.put(Reply(item.request, item.result, item.serial))

    def _connection(self) -> tuple[str | None, bool, bool]:
        """One connection from open to end.

        Returns why it ended (None when asked to), whether that is final, and
        whether the registration succeeded on it.
        """
        sock: socket.socket | None = None
        self._registered_now = False
        self._refusal = None
        self._collector = None
        self._unreadable = 0
        self._ping_sent_at = None
        try:
            sock = self._open()
            with self._lock:
                if self._stop:
                    return None, True, False
                self._state = "registering"
                self._enqueue_locked(protocolo.Hello(2), silent=True, paced=False)
                self._enqueue_locked(protocolo.Register(self.nick, password=self._password),
                                     silent=True, paced=False)
            message = self._loop(sock)
            fatal = bool(self._refusal and self._refusal[2])
            if self._refusal:
                message = self._refusal[1]
            return message, fatal, self._registered_now
        except ProtocolViolation as exc:
            return (f"O servidor violou o protocolo ({exc}): conexão encerrada.", False,
                    self._registered_now)
        except Exception as exc:
            if self._state in ("opening", "registering"):
                field, text = describe_connect_error(exc, self.host, self.port, self._tls_ca,
                                                     self.tls)
                # A bad CA file or a refused certificate will not heal by itself.
                fatal = field == "tls"
                if not self._established:
                    self._refusal = (field, text, fatal)
                return text, fatal, False
            if isinstance(exc, OSError):
                return (f"Conexão com o servidor perdida ({describe_os_error(exc)}).", False,
                        self._registered_now)
            raise
        finally:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            self._lose_in_flight()

    def _lose_in_flight(self) -> None:
        """Everything unanswered when a connection ends fails now: never resent silently."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            self._outgoing.clear()
            self._waiting.clear()
            self._waiting_bytes = 0
            if self._state in ("connected", "registering"):
                self._state = "opening"
        message = "A conexão caiu antes da resposta do servidor."
        for item in pending:
            item._resolve(Lost(message))
            if not item.silent:
                self.events.put(Reply(item.request, item.result, item.serial))

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

    # -- the session thread: one connection's loop ---------------------------------

    def _loop(self, sock: socket.socket) -> str | None:
        """Read and write until the end; return why the connection was lost, or None."""
        splitter = protocolo.LineSplitter(protocolo.MAX_SERVER_LINE_BYTES)
        is_tls = isinstance(sock, ssl.SSLSocket)
        write_waits_for_read = False
        more_to_read = False
        retry_chunk: bytes | None = None  # OpenSSL wants a refused write retried as it was
        started = last_progress = self._last_byte = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                if self._stop:
                    return None
                state = self._state
                next_token = self._flush_waiting_locked()
                has_output = bool(self._outgoing)
            if state == "closing" and now > self._closing_deadline:
                return None
            if state == "registering" and now - started > self.connect_timeout:
                return (f"O servidor {self.address} não respondeu ao registro a tempo. "
                        "Tente de novo.")
            if not has_output:
                last_progress = now
            elif now - last_progress > self.send_timeout:
                return "O servidor parou de receber dados: conexão perdida."
            paused = self.events.must_pause()
            if paused:
                self._last_byte = now  # our reader is slow, not the server
            lost = self._check_liveness(now, state)
            if lost:
                return lost
            if state == "connected":
                self._maybe_ack(now)

            readers = [self._wake_r] if paused else [sock, self._wake_r]
            writers = [sock] if has_output and not write_waits_for_read else []
            timeout = SELECT_INTERVAL
            if more_to_read and not paused:
                timeout = 0.0
            elif next_token is not None:
                timeout = min(timeout, next_token)
            readable, writable, _ = select.select(readers, writers, [], timeout)
            if self._wake_r in readable:
                self._drain_wake()

            read_now = not paused and (sock in readable or write_waits_for_read or more_to_read)
            if read_now:
                more_to_read = False
                outcome = self._read(sock, splitter)
                if outcome is not True and outcome is not False:
                    return outcome  # the connection ended (a message or None)
                more_to_read = outcome or (is_tls and sock.pending() > 0)

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

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _read(self, sock: socket.socket, splitter: protocolo.LineSplitter) -> bool | str | None:
        """Read what is there: True if more may wait, False if drained; else the end's reason."""
        for _ in range(RECVS_PER_ROUND):
            try:
                data = sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError,
                    ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            except OSError as exc:
                return self._loss_text(exc)
            if not data:
                return self._eof_text()
            self._last_byte = time.monotonic()
            self._ping_sent_at = None
            for line in splitter.feed(data):
                try:
                    if self._handle_line(line):
                        return None
                except ProtocolViolation as exc:
                    return f"O servidor violou o protocolo ({exc}): conexão encerrada."
            if self.events.must_pause():
                return True  # maybe more inside OpenSSL: read it once the reader caught up
        return True

    def _check_liveness(self, now: float, state: str) -> str | None:
        """PING after ``idle_ping`` quiet seconds; the loss after ``ping_timeout`` more."""
        if state != "connected":
            return None
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > self.ping_timeout:
                quiet = now - self._last_byte
                return (f"O servidor parou de responder (nada recebido em {quiet:.0f} s): "
                        "conexão perdida.")
            return None
        if now - self._last_byte >= self.idle_ping:
            with self._lock:
                if len(self._pending) < MAX_PENDING_REPLIES:
                    self._enqueue_locked(protocolo.Ping("vivo"), silent=True)
            self._ping_sent_at = now
        return None

    def _maybe_ack(self, now: float) -> None:
        """RECEBIDO with the newest message handed over, at most every ``received_interval``."""
        if not self.account or self._ack_candidate() <= self._acked_id:
            return
        if now - self._last_ack < self.received_interval:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING_REPLIES:
                return
            self._acked_id = self._ack_candidate()
            self._enqueue_locked(protocolo.Received(self._acked_id), silent=True)
        self._last_ack = now

    def _eof_text(self) -> str | None:
        if self._state == "closing":
            return None
        if self._state == "registering" and not self.tls and not self._established:
            return ("O servidor fechou a conexão durante o registro. "
                    "Ele exige TLS? Nesse caso marque “Usar TLS”.")
        return "O servidor encerrou a conexão."

    def _loss_text(self, exc: OSError) -> str | None:
        if self._state == "closing":
            return None
        if self._state == "registering" and not self._established:
            if isinstance(exc, ConnectionResetError) and not self.tls:
                return self._eof_text()  # a TLS server resets a plain greeting
            field, text = describe_connect_error(exc, self.host, self.port, self._tls_ca,
                                                 self.tls)
            self._refusal = (field, text, False)
            return text
        return f"Conexão com o servidor perdida ({describe_os_error(exc)})."

    # -- the session thread: lines ----------------------------------------------

    def _unreadable_line(self, what: str) -> None:
        self._unreadable += 1
        if self._unreadable <= LOGGED_UNREADABLE_LINES:
            log.warning("linha do servidor descartada: %s", what)
        if self._unreadable > MAX_UNREADABLE_LINES:
            raise ProtocolViolation(f"mais de {MAX_UNREADABLE_LINES} linhas ilegíveis "
                                    "ou inesperadas")

    def _handle_line(self, raw: bytes | protocolo.LineTooLong) -> bool:
        """Turn one line into an event or a reply; True when the connection should end."""
        if isinstance(raw, protocolo.LineTooLong):
            self._unreadable_line("linha longa demais")
            return False
        try:
            item = protocolo.parse_server_line(protocolo.decode_line(raw), 2)
        except (protocolo.ProtocolError, protocolo.BadServerLine) as exc:
            self._unreadable_line(str(exc)[:120])
            return False
        if isinstance(item, protocolo.PUSHES):
            self._push(item)
            return False
        collector = self._collector
        if collector is not None:
            if isinstance(item, collector.entry_type):
                collector.add(item)
                return False
            if isinstance(item, protocolo.End):
                self._collector = None
                return self._finish_reply(collector.result())
            raise ProtocolViolation("resposta de várias linhas interrompida")
        if isinstance(item, protocolo.UserEntry | protocolo.RoomEntry | protocolo.HistoryItem
                      | protocolo.End):
            self._unreadable_line("item de lista fora de uma lista")
            return False
        return self._reply(item)

    def _reply(self, item: object) -> bool:
        with self._lock:
            pending = self._pending[0] if self._pending else None
        if pending is None:
            self._unreadable_line(f"resposta sem pedido: {type(item).__name__}")
            return False
        if not _fits(pending.request, item):
            raise ProtocolViolation(f"resposta {type(item).__name__} para "
                                    f"{type(pending.request).__name__}")
        shape = _MULTI_LINE.get(type(item))
        if shape is not None:
            kind, entry_type = shape
            cap = protocolo.HISTORY_MAX_LIMIT if kind is HistoryPage else MAX_LIST_ENTRIES
            if kind is HistoryPage and isinstance(pending.request, protocolo.History):
                cap = min(cap, pending.request.limit or protocolo.HISTORY_DEFAULT_LIMIT)
            self._collector = _Collector(kind, item.count, entry_type, cap)
            return False  # the entries and END follow
        return self._finish_reply(item)

    def _finish_reply(self, result: Result) -> bool:
        """The reply to the oldest request is complete: deliver it."""
        with self._lock:
            pending = self._pending.popleft()
        return self._complete(pending, result)

    def _push(self, item: object) -> None:
        if isinstance(item, protocolo.Message) and not self._first_time(item):
            return
        self.events.put(item)

    def _first_time(self, message: protocolo.Message) -> bool:
        """False for a message already handed over (at-least-once delivery repeats some).

        A message is known by its id *and* time: a server run with --efemero
        numbers from 1 again after a restart. A repeated message to this
        account still counts for RECEBIDO, or it would come back every time.
        """
        if message.message_id is None:
            return True
        key = (message.message_id, message.time_ms or 0)
        if key in self._seen:
            if not protocolo.is_room(message.target):
                self._repeated_direct_id = max(self._repeated_direct_id, message.message_id)
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    def _complete(self, pending: PendingReply, result: Result) -> bool:
        """Deliver a reply; True when the connection should end."""
        if self._state == "registering" and self._registration_reply(pending, result):
            return True
        pending._resolve(result)
        request = pending.request
        if isinstance(request, protocolo.Quit):
            return True
        if isinstance(request, protocolo.Join) and isinstance(result, protocolo.Ok):
            with self._lock:
                self._joined[protocolo.room_key(request.room)] = request.room
        elif isinstance(request, protocolo.Leave) and (
                isinstance(result, protocolo.Ok)
                or (isinstance(result, protocolo.Error) and result.code is ErrorCode.NAO_MEMBRO)):
            with self._lock:
                self._joined.pop(protocolo.room_key(request.room), None)
        if not pending.silent:
            self.events.put(Reply(request, result, pending.serial))
        return False

    def _registration_reply(self, pending: PendingReply, result: Result) -> bool:
        """Handle OLA's and REGISTRAR's replies; True when the connection should end."""
        request = pending.request
        if isinstance(request, protocolo.Hello):
            if isinstance(result, protocolo.Error):
                self._refusal = ("servidor", f"O servidor em {self.address} não fala a versão 2 "
                                 "do protocolo (é um servidor antigo?). Atualize o servidor.",
                                 True)
                return True
            return False
        if not isinstance(request, protocolo.Register):
            return False
        if isinstance(result, protocolo.Error):
            field, text = describe_register_error(result, self.nick)
            fatal = result.code in _FATAL_ON_RECONNECT
            if self._established and not fatal:
                text = f"O servidor recusou o registro ao reconectar: {text}"
            self._refusal = (field, text, fatal)
            return True
        if not isinstance(result, protocolo.Ok):
            raise ProtocolViolation("resposta inesperada ao registro")
        reconnected = self._established
        with self._lock:
            if self._state != "registering":
                return False
            self._state = "connected"
            self._enqueue_locked(protocolo.Subscribe(), silent=True)
            self._enqueue_locked(protocolo.ListUsers())
            rooms = list(self._joined.values()) if reconnected else list(self._initial_rooms)
            for room in rooms:
                self._enqueue_locked(protocolo.Join(room))
            if self.account and self._ack_candidate():
                # What the user got before the loss may not have been acknowledged.
                self._acked_id = self._ack_candidate()
                self._enqueue_locked(protocolo.Received(self._acked_id), silent=True)
        self._established = self._registered_now = True
        self._last_byte = time.monotonic()
        self.events.put(Connected(self.nick, self.host, self.port, self.tls, self.account,
                                  reconnected))
        self._outcome.set()
        return False


def _tls_context(tls_ca: str | None) -> ssl.SSLContext:
    """Client context: certificate verified against ``tls_ca`` (or the system), host checked."""
    try:
        return ssl.create_default_context(cafile=tls_ca)
    except FileNotFoundError:
        raise CaFileError(f"Arquivo de CA não encontrado: {tls_ca}") from None
    except (ssl.SSLError, OSError):
        raise CaFileError(f"Arquivo de CA inválido ({tls_ca}): não contém um certificado "
                          "PEM legível.") from None
