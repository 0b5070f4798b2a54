"""The chat wire protocol, version 1: the one implementation of the contract.

Everything that touches bytes on the wire lives here, as pure functions and
small classes with no sockets and no threads, so the server, the client, the
tests and the benchmarks all agree on every byte:

* constants (default port, limits) and the error codes with their texts;
* nickname rules (``valid_nick``, ``nick_key``);
* framing: ``LineSplitter`` cuts a byte stream into lines, enforcing the byte
  limit without ever buffering more than it;
* requests (client -> server): ``parse_request`` turns a line into a typed
  value, and ``format_request`` does the reverse;
* replies and pushes (server -> client): the ``format_*`` functions and the
  pre-encoded constants build them, ``parse_server_line`` reads them back;
* ``enable_keepalive``, the one exception to "no sockets": it only sets
  options on a socket it is given, so both ends probe idle peers alike.

The contract itself is ``docs/protocolo.md``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

# --------------------------------------------------------------------------
# Constants

DEFAULT_PORT = 1998
MAX_REQUEST_BYTES = 4096
"""Longest request line the server accepts, LF included."""
MAX_SERVER_LINE_BYTES = 8192
"""Longest line a client must accept (an MSG line carries two nicknames)."""
DEFAULT_MAX_PENDING_BYTES = 1024 * 1024
"""Default bound on a connection's queued, unsent output in the server."""
MAX_NICK_CHARS = 32
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 5
"""TCP keepalive: a peer that vanished is noticed in about two minutes."""
ENCODING = "utf-8"

_NICK_RE = re.compile(rf"[\w.-]{{1,{MAX_NICK_CHARS}}}")
# C0 control characters except TAB, DEL, and the C1 controls (U+0080-U+009F,
# e.g. U+009B, a one-character terminal escape). They are refused in message
# texts so nobody can inject terminal escape sequences into a peer's screen.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class ErrorCode(enum.Enum):
    """The error codes of the contract; the value is the word on the wire."""

    COMANDO_DESCONHECIDO = "COMANDO_DESCONHECIDO"
    ARGUMENTOS = "ARGUMENTOS"
    APELIDO_INVALIDO = "APELIDO_INVALIDO"
    APELIDO_EM_USO = "APELIDO_EM_USO"
    JA_REGISTRADO = "JA_REGISTRADO"
    NAO_REGISTRADO = "NAO_REGISTRADO"
    NAO_ENCONTRADO = "NAO_ENCONTRADO"
    PROIBIDO = "PROIBIDO"
    SO_DIRETO = "SO_DIRETO"
    DESTINATARIO_LENTO = "DESTINATARIO_LENTO"
    LINHA_LONGA = "LINHA_LONGA"
    CODIFICACAO = "CODIFICACAO"
    LOTADO = "LOTADO"
    LIMITE = "LIMITE"
    TEMPO = "TEMPO"


class ProtocolError(Exception):
    """A request the server must refuse with one ``ERRO`` line.

    ``code`` is the contract's code; ``text`` is the human-readable part,
    in Portuguese because a person may be reading it in ``nc``.
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.value} {text}")
        self.code = code
        self.text = text

    def to_line(self) -> bytes:
        """The encoded ``ERRO`` line that answers the request."""
        return format_error(self.code, self.text)


# --------------------------------------------------------------------------
# Nicknames


def valid_nick(nick: str) -> bool:
    """True if ``nick`` is 1-32 letters, digits, ``_``, ``-`` or ``.``."""
    return _NICK_RE.fullmatch(nick) is not None


def nick_key(nick: str) -> str:
    """The registry key of a nickname: uniqueness is case-insensitive."""
    return nick.casefold()


def without_control_characters(text: str, replacement: str = " ") -> str:
    """``text`` with every character ENVIAR refuses replaced by ``replacement``.

    For clients: a pasted line break or terminal escape becomes a space
    instead of a refused message. The rule itself is ``_CONTROL_RE``.
    """
    return _CONTROL_RE.sub(replacement, text)


def enable_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with the timings above, where the OS allows them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def valid_ip(text: str) -> bool:
    """True for a textual IPv4 or IPv6 address (the legacy REGISTRAR form).

    An IPv6 scope id (``fe80::1%eth0``) is refused: it means nothing to other
    hosts, and its free-form text would reach everybody's LISTAR.
    """
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# Framing


class LineTooLong:
    """Marker yielded by ``LineSplitter`` in place of an over-long line."""

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG = LineTooLong()


class LineSplitter:
    """Cuts a byte stream into lines of at most ``max_bytes`` bytes, LF included.

    Feed it whatever ``recv`` returned; it yields each complete line without
    its LF (and without a CR right before the LF). A line longer than the
    limit is discarded as its bytes arrive -- never more than ``max_bytes``
    are held -- and reported once, as ``LINE_TOO_LONG``, when its LF arrives.
    Bytes after the last LF wait for the next ``feed``; at EOF they are simply
    dropped, because a line without its LF is not a line.
    """

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        if max_bytes < 2:
            raise ValueError("max_bytes must leave room for one byte and the LF")
        self.max_bytes = max_bytes
        self._partial = b""
        self._discarding = False

    @property
    def buffered(self) -> int:
        """How many bytes of an unfinished line are held (for tests)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Add ``data`` and return the lines it completed, in order.

        ``bytes.split`` cuts the whole chunk in one call; the lines only get
        a second look in Python when one of them needs it (a CR to drop, or
        more bytes than the limit), which ordinary traffic never does.
        """
        limit = self.max_bytes - 1  # longest content, LF excluded
        lines: list[bytes | LineTooLong] = data.split(b"\n")
        rest = lines.pop()  # after the last LF: the start of an unfinished line
        if lines:
            # The first line began in an earlier feed (or is being discarded).
            first = lines[0]
            first_too_long = self._discarding or len(self._partial) + len(first) > limit
            if self._partial and not first_too_long:
                first = lines[0] = self._partial + first
            self._partial = b""
            self._discarding = False
            if b"\r" in data or first.endswith(b"\r") or max(map(len, lines)) > limit:
                lines = [_finish_line(line, limit) for line in lines]
            if first_too_long:
                lines[0] = LINE_TOO_LONG
        if rest:
            if self._discarding or len(self._partial) + len(rest) > limit:
                # Over the limit with no LF yet: drop what we have and
                # everything up to the next LF.
                self._partial = b""
                self._discarding = True
            else:
                self._partial += rest
        return lines


def _finish_line(line: bytes, limit: int) -> bytes | LineTooLong:
    """A line cut at its LF, as ``LineSplitter`` yields it: CR dropped, length checked."""
    if len(line) > limit:
        return LINE_TOO_LONG
    return line[:-1] if line.endswith(b"\r") else line


def read_lines(recv, max_bytes: int = MAX_REQUEST_BYTES,
               chunk_size: int = 65536) -> Iterator[bytes | LineTooLong]:
    """Yield the lines of a stream, read through ``recv(chunk_size)``.

    ``recv`` is ``socket.recv`` or a file's ``read``: anything that returns
    ``b""`` at EOF. A line cut by EOF is dropped.
    """
    splitter = LineSplitter(max_bytes)
    while True:
        data = recv(chunk_size)
        if not data:
            return
        yield from splitter.feed(data)


def decode_line(line: bytes) -> str:
    """Decode one line as UTF-8, or raise ``ProtocolError(CODIFICACAO)``."""
    try:
        return line.decode(ENCODING)
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.CODIFICACAO,
                            "a linha não é UTF-8 válido") from None


# --------------------------------------------------------------------------
# Requests (client -> server)


@dataclass(frozen=True)
class Register:
    """``REGISTRAR nick`` (relay form) or ``REGISTRAR nick ip port`` (directory-only)."""

    nick: str
    ip: str | None = None
    port: int | None = None

    @property
    def directory_only(self) -> bool:
        return self.ip is not None


@dataclass(frozen=True)
class ListUsers:
    """``LISTAR``."""


@dataclass(frozen=True)
class Lookup:
    """``RETORNAR nick``."""

    nick: str


@dataclass(frozen=True)
class Unregister:
    """``CANCELAR_REGISTRO [nick]``; ``nick`` is None when omitted."""

    nick: str | None = None


@dataclass(frozen=True)
class Send:
    """``ENVIAR nick text``."""

    nick: str
    text: str


@dataclass(frozen=True)
class Subscribe:
    """``ASSINAR``."""


@dataclass(frozen=True)
class Ping:
    """``PING [token]``; ``token`` is ``""`` when omitted."""

    token: str = ""


@dataclass(frozen=True)
class Quit:
    """``SAIR``."""


Request = Register | ListUsers | Lookup | Unregister | Send | Subscribe | Ping | Quit


def _arguments_error(usage: str) -> ProtocolError:
    return ProtocolError(ErrorCode.ARGUMENTOS, f"uso: {usage}")


def _split_verb(line: str) -> tuple[str, str]:
    """Split off the verb: returns (VERB in upper case, rest without leading spaces)."""
    line = line.lstrip(" ")
    verb, _, rest = line.partition(" ")
    return verb.upper(), rest.lstrip(" ")


def _args(rest: str) -> list[str]:
    """Arguments separated by runs of spaces; runs never create empty ones."""
    return [arg for arg in rest.split(" ") if arg]


def _parse_register(rest: str) -> Register:
    args = _args(rest)
    if len(args) == 1:
        return Register(args[0])
    if len(args) == 3:
        nick, ip, port_text = args
        # At most 5 digits: int() of thousands of digits is slow, or raises.
        if valid_ip(ip) and port_text.isdecimal() and port_text.isascii() \
                and len(port_text) <= 5:
            port = int(port_text)
            if 1 <= port <= 65535:
                return Register(nick, ip, port)
    raise _arguments_error("REGISTRAR <apelido> [<ip> <porta>]")


def _parse_send(rest: str) -> Send:
    # The text starts after the single space that follows the nickname and
    # is kept byte for byte, so it is cut here rather than split.
    nick, space, text = rest.partition(" ")
    if not nick or not space or not text:
        raise _arguments_error("ENVIAR <apelido> <texto>")
    # isprintable() is False for every control character, so ordinary text
    # skips the regular expression; the rest (TAB, which is allowed, or some
    # Unicode spaces) is left to the expression to decide.
    if not text.isprintable() and _CONTROL_RE.search(text):
        raise ProtocolError(ErrorCode.ARGUMENTOS,
                            "o texto não pode ter caracteres de controle")
    return Send(nick, text)


def _parse_no_args(rest: str, verb: str, request: Request) -> Request:
    if _args(rest):
        raise _arguments_error(verb)
    return request


def parse_request(line: str) -> Request | None:
    """Turn one decoded request line into a request value.

    Returns None for a blank line (no reply is due). Raises ``ProtocolError``
    for an unknown verb (COMANDO_DESCONHECIDO) or a wrong number or form of
    arguments (ARGUMENTOS). Nickname form and registration state are *not*
    checked here: the contract puts the registration check before the
    nickname check, and only the server knows the registration state.
    """
    verb, rest = _split_verb(line)
    if not verb:
        return None
    if verb == "ENVIAR":
        return _parse_send(rest)
    if verb == "REGISTRAR":
        return _parse_register(rest)
    if verb == "LISTAR":
        return _parse_no_args(rest, "LISTAR", ListUsers())
    if verb == "RETORNAR":
        args = _args(rest)
        if len(args) != 1:
            raise _arguments_error("RETORNAR <apelido>")
        return Lookup(args[0])
    if verb == "CANCELAR_REGISTRO":
        args = _args(rest)
        if len(args) > 1:
            raise _arguments_error("CANCELAR_REGISTRO [<apelido>]")
        return Unregister(args[0] if args else None)
    if verb == "ASSINAR":
        return _parse_no_args(rest, "ASSINAR", Subscribe())
    if verb == "PING":
        return Ping(rest)
    if verb == "SAIR":
        return _parse_no_args(rest, "SAIR", Quit())
    raise ProtocolError(ErrorCode.COMANDO_DESCONHECIDO,
                        f"comando desconhecido: {verb[:32]}")


def format_request(request: Request) -> bytes:
    """The encoded line (LF included) that carries ``request``."""
    if isinstance(request, Send):
        text = f"ENVIAR {request.nick} {request.text}"
    elif isinstance(request, Register):
        text = f"REGISTRAR {request.nick}"
        if request.directory_only:
            text += f" {request.ip} {request.port}"
    elif isinstance(request, ListUsers):
        text = "LISTAR"
    elif isinstance(request, Lookup):
        text = f"RETORNAR {request.nick}"
    elif isinstance(request, Unregister):
        text = "CANCELAR_REGISTRO" + (f" {request.nick}" if request.nick else "")
    elif isinstance(request, Subscribe):
        text = "ASSINAR"
    elif isinstance(request, Ping):
        text = f"PING {request.token}" if request.token else "PING"
    elif isinstance(request, Quit):
        text = "SAIR"
    else:
        raise TypeError(f"not a request: {request!r}")
    return (text + "\n").encode(ENCODING)


# --------------------------------------------------------------------------
# Replies and pushes (server -> client)

OK_LINE = b"OK\n"
END_LINE = b"END\n"
NOT_FOUND_LINE = b"NAO ENCONTRADO\n"
"""RETORNAR's miss: the classic protocol's exact line, not an ERRO line."""


def format_error(code: ErrorCode, text: str) -> bytes:
    """``ERRO <CODE> <text>``."""
    return f"ERRO {code.value} {text}\n".encode(ENCODING)


def format_users(users: list[tuple[str, str, int]]) -> bytes:
    """LISTAR's whole reply, as one buffer so no push can split it.

    ``users`` holds (nickname, ip, port) already in the order to show.
    """
    lines = [f"USUARIOS {len(users)}\n"]
    lines.extend(f"USUARIO {nick} {ip} {port}\n" for nick, ip, port in users)
    lines.append("END\n")
    return "".join(lines).encode(ENCODING)


def format_found(ip: str, port: int) -> bytes:
    """RETORNAR's hit: ``ENCONTRADO <ip> <porta>``."""
    return f"ENCONTRADO {ip} {port}\n".encode(ENCODING)


def format_msg(sender: str, recipient: str, text: str) -> bytes:
    """The MSG push: ``MSG <remetente> <destinatario> <texto>``."""
    return f"MSG {sender} {recipient} {text}\n".encode(ENCODING)


def format_joined(nick: str) -> bytes:
    return f"ENTROU {nick}\n".encode(ENCODING)


def format_left(nick: str) -> bytes:
    return f"SAIU {nick}\n".encode(ENCODING)


def format_pong(token: str) -> bytes:
    return f"PONG {token}\n".encode(ENCODING) if token else b"PONG\n"


@dataclass(frozen=True)
class Ok:
    """``OK``."""


@dataclass(frozen=True)
class Error:
    """``ERRO <code> <text>``; ``code`` is None for a code this version does not know."""

    code: ErrorCode | None
    text: str
    code_word: str = ""


@dataclass(frozen=True)
class UsersHeader:
    """``USUARIOS n``: n ``UserEntry`` lines and an ``End`` follow."""

    count: int


@dataclass(frozen=True)
class UserEntry:
    """``USUARIO nick ip port``."""

    nick: str
    ip: str
    port: int


@dataclass(frozen=True)
class End:
    """``END``, closing a LISTAR reply."""


@dataclass(frozen=True)
class Found:
    """``ENCONTRADO ip port``."""

    ip: str
    port: int


@dataclass(frozen=True)
class NotFound:
    """``NAO ENCONTRADO``."""


@dataclass(frozen=True)
class Message:
    """``MSG sender recipient text`` (a push)."""

    sender: str
    recipient: str
    text: str


@dataclass(frozen=True)
class Joined:
    """``ENTROU nick`` (a push)."""

    nick: str


@dataclass(frozen=True)
class Left:
    """``SAIU nick`` (a push)."""

    nick: str


@dataclass(frozen=True)
class Pong:
    """``PONG [token]``."""

    token: str = ""


ServerLine = (Ok | Error | UsersHeader | UserEntry | End | Found | NotFound
              | Message | Joined | Left | Pong)
PUSHES = (Message, Joined, Left)
"""Server lines that are not replies to a request."""


class BadServerLine(ValueError):
    """A line from the server that this protocol version cannot read."""


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdecimal() and len(text) <= 5):
        raise BadServerLine(f"porta inválida: {text!r}")
    return int(text)


def parse_server_line(line: str) -> ServerLine:
    """Turn one decoded line from the server into a value; ``BadServerLine`` if unreadable."""
    word, _, rest = line.partition(" ")
    if word == "MSG":
        sender, _, rest = rest.partition(" ")
        recipient, space, text = rest.partition(" ")
        if sender and recipient and space:
            return Message(sender, recipient, text)
    elif word == "OK" and not rest:
        return Ok()
    elif word == "ERRO":
        code_word, _, text = rest.partition(" ")
        try:
            code = ErrorCode(code_word)
        except ValueError:
            code = None
        return Error(code, text, code_word)
    elif word == "USUARIOS" and rest.isascii() and rest.isdecimal() and len(rest) <= 9:
        return UsersHeader(int(rest))
    elif word == "USUARIO":
        parts = rest.split(" ")
        if len(parts) == 3:
            return UserEntry(parts[0], parts[1], _parse_port(parts[2]))
    elif word == "END" and not rest:
        return End()
    elif word == "ENCONTRADO":
        parts = rest.split(" ")
        if len(parts) == 2:
            return Found(parts[0], _parse_port(parts[1]))
    elif line == "NAO ENCONTRADO":
        return NotFound()
    elif word == "ENTROU" and rest:
        return Joined(rest)
    elif word == "SAIU" and rest:
        return Left(rest)
    elif word == "PONG":
        return Pong(rest)
    raise BadServerLine(f"linha inesperada do servidor: {line[:80]!r}")


# --------------------------------------------------------------------------
# Finding the server on the LAN (UDP datagrams, version 2)

DISCOVERY_PROBE = b"DESCOBRIR 1\n"
"""What a client broadcasts to find servers (the LF is optional on the wire)."""
MAX_DISCOVERY_DATAGRAM = 512
"""Longest datagram either side reads; anything longer is not ours."""
MAX_SERVER_NAME_CHARS = 64


@dataclass(frozen=True)
class ServerAnnouncement:
    """``SERVIDOR <porta> <tls> <nome>``: one server's answer to a probe."""

    port: int
    tls: bool
    name: str


def parse_discovery_probe(data: bytes) -> bool:
    """True if ``data`` is a probe this server answers (``DESCOBRIR 1``, LF optional).

    The verb is matched as ASCII, case-insensitively, like every verb; runs of
    spaces separate it from the version, as on the TCP side.
    """
    if len(data) > MAX_DISCOVERY_DATAGRAM:
        return False
    text = data[:-1] if data.endswith(b"\n") else data
    text = text[:-1] if text.endswith(b"\r") else text
    parts = text.split()
    return (len(parts) == 2 and parts[0].isascii() and parts[0].upper() == b"DESCOBRIR"
            and parts[1] == b"1" and b"\t" not in text)


def clean_server_name(name: str) -> str:
    """``name`` as a server may announce it: no control characters, at most 64 characters."""
    cleaned = " ".join(without_control_characters(name).split())
    return cleaned[:MAX_SERVER_NAME_CHARS] or "servidor"


def format_discovery_answer(port: int, tls: bool, name: str) -> bytes:
    """The answer datagram: ``SERVIDOR <porta> <tls> <nome>`` and an LF (for ``nc -u``)."""
    return f"SERVIDOR {port} {1 if tls else 0} {clean_server_name(name)}\n".encode(ENCODING)


def parse_discovery_answer(data: bytes) -> ServerAnnouncement | None:
    """The announcement in ``data``, or None if it is not a well-formed answer.

    A client must treat every answer as hostile: the name is cleaned and cut,
    the port checked, and anything else refused.
    """
    if len(data) > MAX_DISCOVERY_DATAGRAM:
        return None
    try:
        text = data.decode(ENCODING)
    except UnicodeDecodeError:
        return None
    text = text.rstrip("\r\n")
    word, _, rest = text.partition(" ")
    port_text, _, rest = rest.partition(" ")
    tls_text, _, name = rest.partition(" ")
    if word != "SERVIDOR" or tls_text not in ("0", "1"):
        return None
    if not (port_text.isascii() and port_text.isdecimal() and len(port_text) <= 5):
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    return ServerAnnouncement(port, tls_text == "1", clean_server_name(name))
