"""The chat wire protocol, versions 1 and 2: the one implementation of the contract.

Everything that touches bytes on the wire lives here, as pure functions and
small classes with no sockets and no threads, so the server, the client, the
tests and the benchmarks all agree on every byte:

* constants (default port, limits) and the error codes;
* names: ``valid_nick``/``nick_key`` and ``valid_room``/``room_key`` apply
  the rules against look-alikes (one script, no invisible letters, ASCII
  digits; a key that folds compatibility forms, case and accents);
* texts: ``text_problem`` says why ENVIAR must refuse a text (controls, and
  invisible or direction-changing characters that could fake a screen), and
  ``clean_text`` is the same rule for clients, which repair instead;
* framing: ``LineSplitter`` cuts a byte stream into lines, enforcing the byte
  limit without ever buffering more than it;
* requests (client -> server): ``parse_request`` turns a line into a typed
  value and ``format_request`` does the reverse; ``parse_plain_send`` is the
  server's fast path for the commonest line, tested against the general one;
* replies and pushes (server -> client): the ``format_*`` functions build
  them, ``parse_server_line`` reads them back (it knows both versions);
* the discovery datagrams (UDP) of version 2.

Socket options (keepalive and the like) live in ``rede.py``, per platform;
this module only names the timings both ends share.

The contract itself is ``docs/protocolo.md``.
"""

from __future__ import annotations

import datetime
import enum
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

# --------------------------------------------------------------------------
# Constants

DEFAULT_PORT = 1998
MAX_REQUEST_BYTES = 4096
"""Longest request line the server accepts, LF included."""
MAX_SERVER_LINE_BYTES = 8192
"""Longest line a client must accept (an MSG line carries two names, an id and a time)."""
DEFAULT_MAX_PENDING_BYTES = 1024 * 1024
"""Default bound on a connection's queued, unsent output in the server."""
MAX_NICK_CHARS = 32
MIN_PASSWORD_CHARS = 6
MAX_PASSWORD_CHARS = 128
MAX_ROOMS_PER_CONNECTION = 50
DEFAULT_ROOM = "#geral"
"""The room every client joins by default, so a class has one room from the first minute."""
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 500
"""HISTORICO serves at most this many lines, whatever limit is asked for."""
MAX_PENDING_PER_ACCOUNT = 10_000
"""Messages that may wait for one offline account (a server option)."""
FAILED_PASSWORDS_ALLOWED = 5
FAILED_PASSWORDS_WINDOW_S = 60.0
ACCOUNTS_PER_ADDRESS_PER_HOUR = 10
SUPPORTED_VERSIONS = (1, 2)
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 5
"""TCP keepalive: a peer that vanished is noticed in about two minutes."""
ENCODING = "utf-8"
MAX_ID_DIGITS = 18
"""Message ids fit in a signed 64-bit integer (SQLite's); longer numbers are refused."""


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
    # version 2
    VERSAO = "VERSAO"
    SALA_INVALIDA = "SALA_INVALIDA"
    NAO_MEMBRO = "NAO_MEMBRO"
    APELIDO_RESERVADO = "APELIDO_RESERVADO"
    SENHA_INCORRETA = "SENHA_INCORRETA"
    SENHA_INVALIDA = "SENHA_INVALIDA"
    SEM_CONTA = "SEM_CONTA"
    ARMAZENAMENTO = "ARMAZENAMENTO"


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
# Names: nicknames and rooms, without look-alikes
#
# A name is 1-32 characters: letters (with the combining marks their script
# needs), ASCII digits, "_", "-" and ".". All its letters come from one
# script -- or from one of the combinations a language really writes with
# (Japanese: Han + Hiragana + Katakana; Korean: Han + Hangul; Chinese: Han +
# Bopomofo). The script of a character is read from its Unicode name after
# NFKC (so fullwidth and mathematical letters count as the letters they
# stand for); the standard library has no script property.

_ASCII_NAME_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_NICK_CHARS}}}")
_NAME_PUNCTUATION = frozenset("0123456789_-.")
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Letters that draw nothing (the Hangul fillers) or a blank (braille blank)."""
_INVISIBLE_MARKS = frozenset("\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f"
                             + "".join(map(chr, range(0xFE00, 0xFE10))))
"""Marks that draw nothing: grapheme joiner, Khmer inherent vowels, variation selectors."""
MAX_MARKS_IN_A_ROW = 3
_SCRIPT_ALIASES = {
    "CJK": "HAN", "IDEOGRAPHIC": "HAN", "KANGXI": "HAN",
    "HALFWIDTH": "KATAKANA",  # halfwidth katakana and Hangul are decided by NFKC first
}
_MIXES_ALLOWED = (
    frozenset({"HAN", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"}),  # Japanese
    frozenset({"HAN", "HANGUL"}),  # Korean
    frozenset({"HAN", "BOPOMOFO"}),  # Chinese (Zhuyin)
)
_NO_SCRIPT = {"COMBINING", "MODIFIER", "SPACING"}
"""Name prefixes that say nothing about the script (inherited or shared characters)."""

# Letters of other scripts (and Latin variants) that a reader cannot tell
# from a Latin letter, after case folding: the key maps them to that letter.
# Mixed scripts are refused anyway, so this only matters for names written
# wholly in Cyrillic or Greek that spell a Latin name (e.g. Cyrillic "асе").
_CONFUSABLES = str.maketrans({
    # Latin variants
    "ı": "i", "ɩ": "i", "ɑ": "a", "ɡ": "g", "ĸ": "k", "ʋ": "u", "ȷ": "j",
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y",
    "с": "c", "х": "x", "ԁ": "d", "ԝ": "w", "ё": "e", "ї": "i", "ү": "y", "ғ": "f",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "h", "ι": "i", "κ": "k", "μ": "m",
    "ν": "n", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
})


@functools.lru_cache(maxsize=4096)
def _script_of(char: str) -> str | None:
    """The script a letter or mark belongs to; "" for inherited marks; None if unknown.

    Read from the first word of the Unicode name of the character's NFKC
    form (``LATIN SMALL LETTER A`` -> ``LATIN``), which is what the standard
    library can tell without the Scripts.txt table.
    """
    normal = unicodedata.normalize("NFKC", char)
    name = unicodedata.name(normal[0], "") if normal else ""
    if not name:
        return None
    first = name.split(" ", 1)[0]
    if first in _NO_SCRIPT:
        return "" if unicodedata.category(normal[0]).startswith("M") else None
    return _SCRIPT_ALIASES.get(first, first)


def _scripts_compatible(scripts: set[str]) -> bool:
    if len(scripts) <= 1:
        return True
    return any(scripts <= mix for mix in _MIXES_ALLOWED)


def valid_nick(nick: str) -> bool:
    """True if ``nick`` follows the name rules (see the section comment above)."""
    if not 1 <= len(nick) <= MAX_NICK_CHARS:
        return False
    if nick.isascii():
        return _ASCII_NAME_RE.fullmatch(nick) is not None
    scripts: set[str] = set()
    marks_in_a_row = 0
    after_letter = False
    for char in nick:
        if char in _NAME_PUNCTUATION:
            after_letter, marks_in_a_row = False, 0
            continue
        category = unicodedata.category(char)
        if category[0] == "L":
            if char in _INVISIBLE_LETTERS:
                return False
            after_letter, marks_in_a_row = True, 0
        elif category in ("Mn", "Mc"):
            marks_in_a_row += 1
            if (not after_letter or char in _INVISIBLE_MARKS
                    or marks_in_a_row > MAX_MARKS_IN_A_ROW):
                return False
        else:
            return False  # digits of other scripts, symbols, spaces, controls...
        script = _script_of(char)
        if script is None:
            return False
        if script:
            scripts.add(script)
    return _scripts_compatible(scripts)


@functools.lru_cache(maxsize=65536)
def _folded_key(name: str) -> str:
    text = unicodedata.normalize("NFKC", name).casefold()
    text = unicodedata.normalize("NFKD", text)
    # Accents: the generic combining diacritics (U+0300-U+036F) go; the marks
    # that scripts such as Devanagari need to spell a different name stay.
    text = "".join(char for char in text if not "\u0300" <= char <= "\u036f")
    return unicodedata.normalize("NFC", text.translate(_CONFUSABLES))


def nick_key(nick: str) -> str:
    """The key that makes two names "the same": NFKC, case, accents and look-alikes folded.

    ``ana``, ``ANA``, ``ａｎａ``, ``𝐚𝐧𝐚`` and ``ána`` share one key. ASCII names,
    the common case on the message path, take a shortcut.
    """
    if nick.isascii():
        return nick.lower()
    return _folded_key(nick)


def is_room(target: str) -> bool:
    """True if ``target`` names a room (it starts with ``#``; a nickname never does)."""
    return target.startswith("#")


def valid_room(name: str) -> bool:
    """True for ``#`` followed by a name that follows the nickname rules."""
    return name.startswith("#") and valid_nick(name[1:])


def room_key(name: str) -> str:
    """The key of a room name: ``#`` and the folded key of the rest."""
    return "#" + nick_key(name[1:])


_PASSWORD_REFUSED_RE = re.compile(r"[\x00-\x20\x7f-\x9f]")
"""Controls (TAB included) and the space: a password is one token on the wire."""


def valid_password(password: str) -> bool:
    """6-128 characters (not bytes): one token, none of them a control character."""
    return (MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
            and _PASSWORD_REFUSED_RE.search(password) is None)


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


def canonical_ip(text: str) -> str:
    """The short standard spelling of an address (``0:0::1`` -> ``::1``).

    The legacy REGISTRAR records the address a client advertises; keeping it
    short stops padded spellings from inflating everybody's LISTAR.
    """
    return str(ipaddress.ip_address(text))


# --------------------------------------------------------------------------
# Texts: what ENVIAR accepts
#
# Refused: control characters -- C0 except TAB, DEL, C1 (terminal escapes);
# line and paragraph separators (U+2028, U+2029), which fake a new line; and
# the invisible "format" characters (Unicode category Cf): the direction
# controls that reorder what a reader sees (U+202A-202E, U+2066-2069, the
# marks U+200E, U+200F, U+061C), zero-width spaces and joiners that hide
# inside words, the BOM... Kept, because emoji and some scripts need them:
# ZWNJ (U+200C), ZWJ (U+200D), variation selectors (category Mn), and tag
# characters only in a well-formed emoji tag sequence (a black flag U+1F3F4,
# tags, then the cancel tag U+E007F), since stray tags can smuggle hidden text.

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_FORMAT_CHARS = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200e\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
)
"""Every Unicode "format" character (Cf) except ZWNJ, ZWJ and the tags (checked by a test)."""
_REFUSED_TEXT_RE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{_FORMAT_CHARS}]")
_TAG_RUN_RE = re.compile("[\U000e0020-\U000e007f]+")
_FLAG_TAG_SEQUENCE_RE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")


def _stray_tags(text: str) -> bool:
    """True if ``text`` has a tag character outside a well-formed emoji tag sequence."""
    return _TAG_RUN_RE.search(_FLAG_TAG_SEQUENCE_RE.sub("", text)) is not None


def text_problem(text: str) -> str | None:
    """Why ENVIAR must refuse ``text`` (a Portuguese phrase), or None if it is fine.

    ``isprintable()`` is True for almost every real message, and then no
    expression runs at all.
    """
    if text.isprintable():
        return None
    if _CONTROL_RE.search(text):
        return "o texto não pode ter caracteres de controle"
    if _REFUSED_TEXT_RE.search(text) or _stray_tags(text):
        return ("o texto não pode ter caracteres invisíveis, de quebra de linha "
                "ou que mudam a direção do texto")
    return None


def clean_text(text: str) -> str:
    """``text`` repaired so that ENVIAR accepts it (for clients).

    Control characters become spaces (a pasted TAB-less layout stays
    readable); invisible and direction-changing characters are removed.
    """
    if text.isprintable():
        return text
    text = _CONTROL_RE.sub(" ", text)
    text = _REFUSED_TEXT_RE.sub("", text)
    if _stray_tags(text):
        kept = _FLAG_TAG_SEQUENCE_RE.findall(text)
        parts = _FLAG_TAG_SEQUENCE_RE.split(text)
        parts = [_TAG_RUN_RE.sub("", part) for part in parts]
        text = "".join(part + (kept[i] if i < len(kept) else "") for i, part in enumerate(parts))
    return text


def without_control_characters(text: str, replacement: str = " ") -> str:
    """``text`` with every control character (C0 but TAB, DEL, C1) replaced."""
    return _CONTROL_RE.sub(replacement, text)


# --------------------------------------------------------------------------
# Time stamps (version 2): UTC, ISO 8601 with milliseconds


@functools.lru_cache(maxsize=4)
def _timestamp_prefix(seconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def format_timestamp(time_ms: int) -> str:
    """``2026-11-30T14:03:07.123Z`` for a time in milliseconds since the epoch.

    Messages come in bursts within the same second, so the part up to the
    seconds is cached.
    """
    seconds, millis = divmod(time_ms, 1000)
    return f"{_timestamp_prefix(seconds)}.{millis:03d}Z"


_TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch for a ``<quando>``; ValueError if malformed."""
    if not text.isascii() or _TIMESTAMP_RE.fullmatch(text) is None:
        raise ValueError(f"instante inválido: {text[:40]!r}")
    moment = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    seconds = int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())
    return seconds * 1000 + int(text[20:23])


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
class Hello:
    """``OLA <n>``: the version the client speaks; None when ``n`` is not a number."""

    version: int | None


@dataclass(frozen=True)
class Register:
    """``REGISTRAR nick`` (relay form), ``REGISTRAR nick senha`` (with an account)
    or ``REGISTRAR nick ip port`` (directory-only form)."""

    nick: str
    ip: str | None = None
    port: int | None = None
    password: str | None = field(default=None, repr=False)

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
    """``ENVIAR target text``: ``target`` is a nickname or a ``#room``."""

    target: str
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


@dataclass(frozen=True)
class Join:
    """``ENTRAR #room``."""

    room: str


@dataclass(frozen=True)
class Leave:
    """``DEIXAR #room``."""

    room: str


@dataclass(frozen=True)
class Members:
    """``MEMBROS #room``."""

    room: str


@dataclass(frozen=True)
class ListRooms:
    """``SALAS``."""


@dataclass(frozen=True)
class Received:
    """``RECEBIDO <id>``: everything addressed to this account up to ``id`` arrived."""

    message_id: int


@dataclass(frozen=True)
class History:
    """``HISTORICO target [before_id] [limit]``; None means "not given".

    ``before_id`` 0 on the wire means "from the newest", like leaving it out,
    so that a limit can be given alone (``HISTORICO ana 0 100``).
    """

    target: str
    before_id: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class ChangePassword:
    """``SENHA <atual> <nova>``."""

    current: str = field(repr=False)
    new: str = field(repr=False)


Request = (Hello | Register | ListUsers | Lookup | Unregister | Send | Subscribe | Ping | Quit
           | Join | Leave | Members | ListRooms | Received | History | ChangePassword)


def _arguments_error(usage: str) -> ProtocolError:
    return ProtocolError(ErrorCode.ARGUMENTOS, f"uso: {usage}")


def _split_verb(line: str) -> tuple[str, str]:
    """Split off the verb: (VERB in upper case, rest without leading spaces).

    Verbs are ASCII: upper-casing ``envıar`` (dotless i) or ``ASſINAR``
    (long s) with Unicode rules would turn them into real verbs, so a verb
    with any other character is unknown.
    """
    line = line.lstrip(" ")
    verb, _, rest = line.partition(" ")
    if not verb.isascii():
        raise ProtocolError(ErrorCode.COMANDO_DESCONHECIDO,
                            f"comando desconhecido: {verb[:32]}")
    return verb.upper(), rest.lstrip(" ")


def _args(rest: str) -> list[str]:
    """Arguments separated by runs of spaces; runs never create empty ones."""
    return [arg for arg in rest.split(" ") if arg]


def _number(text: str, digits: int = MAX_ID_DIGITS) -> int | None:
    """A non-negative ASCII decimal of at most ``digits`` digits, or None.

    ``int()`` would also take ``٣`` or ``1_000``, and thousands of digits
    cost real time; the wire only knows plain ASCII digits.
    """
    if text.isascii() and text.isdecimal() and len(text) <= digits:
        return int(text)
    return None


def _parse_register(rest: str) -> Register:
    args = _args(rest)
    if len(args) == 1:
        return Register(args[0])
    if len(args) == 2:
        return Register(args[0], password=args[1])
    if len(args) == 3:
        nick, ip, port_text = args
        port = _number(port_text, 5)
        if valid_ip(ip) and port is not None and 1 <= port <= 65535:
            return Register(nick, canonical_ip(ip), port)
    raise _arguments_error("REGISTRAR <apelido> [<senha> | <ip> <porta>]")


def _parse_send(rest: str) -> Send:
    # The text starts after the single space that follows the target and is
    # kept byte for byte, so it is cut here rather than split.
    target, space, text = rest.partition(" ")
    if not target or not space or not text:
        raise _arguments_error("ENVIAR <apelido|#sala> <texto>")
    problem = text_problem(text)
    if problem:
        raise ProtocolError(ErrorCode.ARGUMENTOS, problem)
    return Send(target, text)


def _one_arg(rest: str, usage: str) -> str:
    args = _args(rest)
    if len(args) != 1:
        raise _arguments_error(usage)
    return args[0]


def _no_args(rest: str, verb: str, request: Request) -> Request:
    if _args(rest):
        raise _arguments_error(verb)
    return request


def _parse_hello(rest: str) -> Hello:
    return Hello(_number(_one_arg(rest, "OLA <versão>"), 9))


def _parse_received(rest: str) -> Received:
    message_id = _number(_one_arg(rest, "RECEBIDO <id>"))
    if not message_id:
        raise _arguments_error("RECEBIDO <id> (um número positivo)")
    return Received(message_id)


def _parse_history(rest: str) -> History:
    usage = "HISTORICO <apelido|#sala> [<antes_de_id>] [<limite>]"
    args = _args(rest)
    if not 1 <= len(args) <= 3:
        raise _arguments_error(usage)
    before_id = limit = None
    if len(args) >= 2:
        before_id = _number(args[1])
        if before_id is None:
            raise _arguments_error(usage)
        before_id = before_id or None
    if len(args) == 3:
        limit = _number(args[2], 9)
        if not limit:
            raise _arguments_error(usage)
    return History(args[0], before_id, limit)


def _parse_change_password(rest: str) -> ChangePassword:
    args = _args(rest)
    if len(args) != 2:
        raise _arguments_error("SENHA <atual> <nova>")
    return ChangePassword(args[0], args[1])


def _parse_unregister(rest: str) -> Unregister:
    args = _args(rest)
    if len(args) > 1:
        raise _arguments_error("CANCELAR_REGISTRO [<apelido>]")
    return Unregister(args[0] if args else None)


_PARSERS = {
    "REGISTRAR": _parse_register,
    "LISTAR": lambda rest: _no_args(rest, "LISTAR", ListUsers()),
    "RETORNAR": lambda rest: Lookup(_one_arg(rest, "RETORNAR <apelido>")),
    "CANCELAR_REGISTRO": _parse_unregister,
    "ASSINAR": lambda rest: _no_args(rest, "ASSINAR", Subscribe()),
    "PING": Ping,
    "SAIR": lambda rest: _no_args(rest, "SAIR", Quit()),
    "OLA": _parse_hello,
    "ENTRAR": lambda rest: Join(_one_arg(rest, "ENTRAR <#sala>")),
    "DEIXAR": lambda rest: Leave(_one_arg(rest, "DEIXAR <#sala>")),
    "MEMBROS": lambda rest: Members(_one_arg(rest, "MEMBROS <#sala>")),
    "SALAS": lambda rest: _no_args(rest, "SALAS", ListRooms()),
    "RECEBIDO": _parse_received,
    "HISTORICO": _parse_history,
    "SENHA": _parse_change_password,
}


def parse_request(line: str) -> Request | None:
    """Turn one decoded request line into a request value.

    Returns None for a blank line (no reply is due). Raises ``ProtocolError``
    for an unknown verb (COMANDO_DESCONHECIDO) or a wrong number or form of
    arguments (ARGUMENTOS). Name forms, passwords and registration state are
    *not* checked here: the contract puts the registration check before the
    name check, and only the server knows the registration state.
    """
    verb, rest = _split_verb(line)
    if not verb:
        return None
    if verb == "ENVIAR":
        return _parse_send(rest)
    parser = _PARSERS.get(verb)
    if parser is None:
        raise ProtocolError(ErrorCode.COMANDO_DESCONHECIDO,
                            f"comando desconhecido: {verb[:32]}")
    return parser(rest)


def parse_plain_send(raw: bytes) -> tuple[str, str, bytes] | None:
    """The server's fast path: ``(target, text, text_bytes)`` for an ordinary ENVIAR.

    Ordinary means: the verb in capitals followed by one space, a target, one
    space and a text that needs no second look (ASCII without control bytes,
    or printable Unicode). For anything else it returns None and the caller
    uses ``parse_request``, which gives the same answer for the lines this
    accepts (a property test checks it) and the right error for the rest.
    Working on the bytes saves the decode of the whole line and lets the
    server relay the text without encoding it again.
    """
    if not raw.startswith(b"ENVIAR ") or raw[7:8] == b" ":
        return None
    target, space, text = raw[7:].partition(b" ")
    if not space or not text or not target.isascii():
        return None
    try:
        decoded = text.decode(ENCODING)
    except UnicodeDecodeError:
        return None
    # isprintable() is False for every character ``text_problem`` looks at
    # (and for TAB and a few spaces, which the general parser then accepts).
    if not decoded.isprintable():
        return None
    return target.decode("ascii"), decoded, text


_SIMPLE_REQUEST_TEXT = {
    ListUsers: lambda r: "LISTAR",
    Lookup: lambda r: f"RETORNAR {r.nick}",
    Subscribe: lambda r: "ASSINAR",
    Quit: lambda r: "SAIR",
    Hello: lambda r: f"OLA {r.version}",
    Join: lambda r: f"ENTRAR {r.room}",
    Leave: lambda r: f"DEIXAR {r.room}",
    Members: lambda r: f"MEMBROS {r.room}",
    ListRooms: lambda r: "SALAS",
    Received: lambda r: f"RECEBIDO {r.message_id}",
    ChangePassword: lambda r: f"SENHA {r.current} {r.new}",
}
"""Requests whose line is a fixed verb and their fields, in order."""


def format_request(request: Request) -> bytes:
    """The encoded line (LF included) that carries ``request``."""
    return (_request_text(request) + "\n").encode(ENCODING)


def _request_text(request: Request) -> str:
    if isinstance(request, Send):
        return f"ENVIAR {request.target} {request.text}"
    if isinstance(request, Register):
        if request.directory_only:
            return f"REGISTRAR {request.nick} {request.ip} {request.port}"
        if request.password is not None:
            return f"REGISTRAR {request.nick} {request.password}"
        return f"REGISTRAR {request.nick}"
    if isinstance(request, Unregister):
        return "CANCELAR_REGISTRO" + (f" {request.nick}" if request.nick else "")
    if isinstance(request, Ping):
        return f"PING {request.token}" if request.token else "PING"
    if isinstance(request, History):
        text = f"HISTORICO {request.target}"
        if request.before_id is not None or request.limit is not None:
            text += f" {request.before_id or 0}"
        if request.limit is not None:
            text += f" {request.limit}"
        return text
    formatter = _SIMPLE_REQUEST_TEXT.get(type(request))
    if formatter is None:
        raise TypeError(f"not a request: {request!r}")
    return formatter(request)


# --------------------------------------------------------------------------
# Replies and pushes (server -> client): formatting

OK_LINE = b"OK\n"
END_LINE = b"END\n"
NOT_FOUND_LINE = b"NAO ENCONTRADO\n"
"""RETORNAR's miss: the classic protocol's exact line, not an ERRO line."""


def format_error(code: ErrorCode, text: str) -> bytes:
    """``ERRO <CODE> <text>``."""
    return f"ERRO {code.value} {text}\n".encode(ENCODING)


def format_version_error() -> bytes:
    """OLA's refusal, naming the versions this server speaks."""
    versions = " ".join(map(str, SUPPORTED_VERSIONS))
    return format_error(ErrorCode.VERSAO, f"versões suportadas: {versions}")


def format_users(users: list[tuple[str, str, int]]) -> bytes:
    """LISTAR's (and MEMBROS') whole reply, as one buffer so no push can split it.

    ``users`` holds (nickname, ip, port) already in the order to show.
    """
    lines = [f"USUARIOS {len(users)}\n"]
    lines.extend(f"USUARIO {nick} {ip} {port}\n" for nick, ip, port in users)
    lines.append("END\n")
    return "".join(lines).encode(ENCODING)


def format_rooms(rooms: list[tuple[str, int]]) -> bytes:
    """SALAS' whole reply: ``SALAS n``, n lines ``SALA #sala membros``, ``END``."""
    lines = [f"SALAS {len(rooms)}\n"]
    lines.extend(f"SALA {room} {members}\n" for room, members in rooms)
    lines.append("END\n")
    return "".join(lines).encode(ENCODING)


def format_history(items: list[tuple[int, int, str, str, str]]) -> bytes:
    """HISTORICO's whole reply; ``items`` are (id, time_ms, sender, target, text), oldest first."""
    lines = [f"HISTORICO {len(items)}\n"]
    lines.extend(f"ITEM {message_id} {format_timestamp(time_ms)} {sender} {target} {text}\n"
                 for message_id, time_ms, sender, target, text in items)
    lines.append("END\n")
    return "".join(lines).encode(ENCODING)


def format_found(ip: str, port: int) -> bytes:
    """RETORNAR's hit: ``ENCONTRADO <ip> <porta>``."""
    return f"ENCONTRADO {ip} {port}\n".encode(ENCODING)


def format_msg(sender: str, target: str, text: str) -> bytes:
    """The version-1 MSG push: ``MSG <remetente> <destino> <texto>``."""
    return f"MSG {sender} {target} {text}\n".encode(ENCODING)


def format_msg_bytes(sender: bytes, target: bytes, text: bytes) -> bytes:
    """``format_msg`` for parts already encoded (the relay's hot path)."""
    return b"MSG %s %s %s\n" % (sender, target, text)


def format_msg_v2(message_id: int, time_ms: int, sender: str, target: str, text: str) -> bytes:
    """The version-2 MSG push: ``MSG <id> <quando> <remetente> <destino> <texto>``."""
    return f"MSG {message_id} {format_timestamp(time_ms)} {sender} {target} {text}\n".encode(
        ENCODING)


def format_ok_message(message_id: int, time_ms: int) -> bytes:
    """A version-2 ENVIAR's success: ``OK <id> <quando>``."""
    return f"OK {message_id} {format_timestamp(time_ms)}\n".encode(ENCODING)


def format_delivered(message_id: int, recipient: str) -> bytes:
    """The receipt push: ``ENTREGUE <id> <destinatario>``."""
    return f"ENTREGUE {message_id} {recipient}\n".encode(ENCODING)


def format_joined(nick: str, room: str | None = None) -> bytes:
    """``ENTROU <apelido>`` (presence) or ``ENTROU <#sala> <apelido>`` (a room)."""
    return (f"ENTROU {room} {nick}\n" if room else f"ENTROU {nick}\n").encode(ENCODING)


def format_left(nick: str, room: str | None = None) -> bytes:
    """``SAIU <apelido>`` (presence) or ``SAIU <#sala> <apelido>`` (a room)."""
    return (f"SAIU {room} {nick}\n" if room else f"SAIU {nick}\n").encode(ENCODING)


def format_pong(token: str) -> bytes:
    return f"PONG {token}\n".encode(ENCODING) if token else b"PONG\n"


# --------------------------------------------------------------------------
# Replies and pushes (server -> client): reading them back


@dataclass(frozen=True)
class Ok:
    """``OK``."""


@dataclass(frozen=True)
class OkMessage:
    """``OK <id> <quando>``: a version-2 ENVIAR was stored."""

    message_id: int
    time_ms: int


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
class RoomsHeader:
    """``SALAS n``: n ``RoomEntry`` lines and an ``End`` follow."""

    count: int


@dataclass(frozen=True)
class RoomEntry:
    """``SALA #sala membros``."""

    room: str
    members: int


@dataclass(frozen=True)
class HistoryHeader:
    """``HISTORICO n``: n ``HistoryItem`` lines and an ``End`` follow."""

    count: int


@dataclass(frozen=True)
class HistoryItem:
    """``ITEM id quando remetente destino texto``."""

    message_id: int
    time_ms: int
    sender: str
    target: str
    text: str


@dataclass(frozen=True)
class End:
    """``END``, closing a multi-line reply."""


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
    """``MSG ...`` (a push); ``target`` is this user's nickname or a ``#room``.

    ``message_id`` and ``time_ms`` are None on a version-1 connection.
    """

    sender: str
    target: str
    text: str
    message_id: int | None = None
    time_ms: int | None = None


@dataclass(frozen=True)
class Joined:
    """``ENTROU nick`` (presence) or ``ENTROU #room nick`` (``room`` set)."""

    nick: str
    room: str | None = None


@dataclass(frozen=True)
class Left:
    """``SAIU nick`` (presence) or ``SAIU #room nick`` (``room`` set)."""

    nick: str
    room: str | None = None


@dataclass(frozen=True)
class Delivered:
    """``ENTREGUE id recipient``: a receipt (a push)."""

    message_id: int
    recipient: str


@dataclass(frozen=True)
class Pong:
    """``PONG [token]``."""

    token: str = ""


ServerLine = (Ok | OkMessage | Error | UsersHeader | UserEntry | RoomsHeader | RoomEntry
              | HistoryHeader | HistoryItem | End | Found | NotFound | Message | Joined | Left
              | Delivered | Pong)
PUSHES = (Message, Joined, Left, Delivered)
"""Server lines that are not replies to a request."""


class BadServerLine(ValueError):
    """A line from the server that this protocol version cannot read."""


def _server_number(text: str, digits: int = MAX_ID_DIGITS) -> int:
    value = _number(text, digits)
    if value is None:
        raise BadServerLine(f"número inválido: {text[:40]!r}")
    return value


def _parse_port(text: str) -> int:
    port = _number(text, 5)
    if port is None or not 1 <= port <= 65535:
        raise BadServerLine(f"porta inválida: {text[:40]!r}")
    return port


def _server_time(text: str) -> int:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise BadServerLine(str(exc)) from None


def _parse_msg(rest: str, version: int) -> Message | None:
    message_id = time_ms = None
    if version >= 2:
        id_text, _, rest = rest.partition(" ")
        when, _, rest = rest.partition(" ")
        message_id, time_ms = _server_number(id_text), _server_time(when)
    sender, _, rest = rest.partition(" ")
    target, space, text = rest.partition(" ")
    if sender and target and space:
        return Message(sender, target, text, message_id, time_ms)
    return None


def _parse_history_item(rest: str) -> HistoryItem | None:
    id_text, _, rest = rest.partition(" ")
    when, _, rest = rest.partition(" ")
    message = _parse_msg(rest, 1)
    if message is None:
        return None
    return HistoryItem(_server_number(id_text), _server_time(when), message.sender,
                       message.target, message.text)


def _parse_presence(rest: str, kind: type[Joined] | type[Left]) -> Joined | Left | None:
    if not rest:
        return None
    if is_room(rest):
        room, _, nick = rest.partition(" ")
        return kind(nick, room) if nick and " " not in nick else None
    return kind(rest)


def _parse_ok(rest: str) -> Ok | OkMessage:
    if not rest:
        return Ok()
    id_text, _, when = rest.partition(" ")
    return OkMessage(_server_number(id_text), _server_time(when))


def _parse_count(rest: str, kind: type) -> object:
    return kind(_server_number(rest, 9))


def _parse_error(rest: str) -> Error:
    code_word, _, text = rest.partition(" ")
    try:
        code = ErrorCode(code_word)
    except ValueError:
        code = None
    return Error(code, text, code_word)


def _parse_user(rest: str) -> UserEntry | None:
    parts = rest.split(" ")
    return UserEntry(parts[0], parts[1], _parse_port(parts[2])) if len(parts) == 3 else None


def _parse_room_entry(rest: str) -> RoomEntry | None:
    parts = rest.split(" ")
    return RoomEntry(parts[0], _server_number(parts[1], 9)) if len(parts) == 2 else None


def _parse_found(rest: str) -> Found | None:
    parts = rest.split(" ")
    return Found(parts[0], _parse_port(parts[1])) if len(parts) == 2 else None


def _parse_delivered(rest: str) -> Delivered | None:
    id_text, _, recipient = rest.partition(" ")
    return Delivered(_server_number(id_text), recipient) if recipient else None


_SERVER_LINE_PARSERS = {
    "OK": _parse_ok,
    "ERRO": _parse_error,
    "USUARIOS": lambda rest: _parse_count(rest, UsersHeader),
    "USUARIO": _parse_user,
    "SALAS": lambda rest: _parse_count(rest, RoomsHeader),
    "SALA": _parse_room_entry,
    "HISTORICO": lambda rest: _parse_count(rest, HistoryHeader),
    "ITEM": _parse_history_item,
    "END": lambda rest: None if rest else End(),
    "ENCONTRADO": _parse_found,
    "ENTROU": lambda rest: _parse_presence(rest, Joined),
    "SAIU": lambda rest: _parse_presence(rest, Left),
    "ENTREGUE": _parse_delivered,
    "PONG": Pong,
}


def parse_server_line(line: str, version: int = 1) -> ServerLine:
    """Turn one decoded line from the server into a value; ``BadServerLine`` if unreadable.

    ``version`` is what the connection negotiated: it decides the MSG form.
    """
    word, _, rest = line.partition(" ")
    if word == "MSG":
        item: ServerLine | None = _parse_msg(rest, version)
    elif line == "NAO ENCONTRADO":
        item = NotFound()
    else:
        parser = _SERVER_LINE_PARSERS.get(word)
        item = parser(rest) if parser is not None else None
    if item is None:
        raise BadServerLine(f"linha inesperada do servidor: {line[:80]!r}")
    return item


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
    """``name`` as a server may announce it: ENVIAR's text rule, one line, at most 64 characters."""
    cleaned = " ".join(clean_text(name).split())
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
