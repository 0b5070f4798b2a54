"""The chat client's window: one Tk window over the network session of ``sessao.py``.

Layers, each testable alone:

* ``sessao.ChatSession`` (no Tk) owns the connection; it fills a bounded
  event queue and never blocks the window.
* The **model** below (no Tk either): ``ConversationStore`` keeps every
  conversation's lines in memory, within fixed bounds (lines and characters
  per conversation and in all, and a number of conversations with the least
  recently used evicted: the server can send their history again).
  ``split_for_sending`` and ``validate_connect_form`` are the text and form
  rules, in one place each.
* The **window** (``ChatApp`` and its parts) runs only in Tk's thread: every
  ``POLL_MS`` it takes a bounded batch of events, updates the model, and
  then redraws only what changed, within a time budget per tick. Nothing
  that arrives opens a window or moves the focus: a message updates a
  badge, the total in the title, and rings the bell (once in a while).

Run ``python3 cliente.py --help`` for the command line.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import datetime
import itertools
import logging
import signal
import sys
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import argumentos
import protocolo
import sessao
from protocolo import ErrorCode
from rede import format_host_port, parse_host_port

# Re-exported: what other modules and tests used to find here.
from sessao import (  # noqa: F401
    ChatSession,
    Connected,
    ConnectError,
    ConnectFailed,
    Disconnected,
    HistoryPage,
    Lost,
    NotConnectedError,
    Reconnecting,
    Reply,
    RoomList,
    SendQueueFullError,
    UserList,
)

try:  # The model works without Tk; only the window needs it.
    import tkinter as tk
    import tkinter.font as tkfont
    from tkinter import ttk
except ImportError:  # pragma: no cover - depends on the system's python3-tk
    tk = None  # type: ignore[assignment]

import descoberta

log = logging.getLogger("cliente")

APP_NAME = "Chat da turma"
WM_CLASS = "chat-redes"
DEFAULT_HOST = "127.0.0.1"

# --------------------------------------------------------------------------
# Bounds (each defined once; the README lists them)

MAX_CONVERSATIONS = 200
"""Conversations kept in memory; the least recently used one goes first."""
MAX_ENTRIES_PER_CONVERSATION = 5000
MAX_CHARS_PER_CONVERSATION = 1_000_000
MAX_TOTAL_ENTRIES = 40_000
MAX_TOTAL_CHARS = 4_000_000
"""All conversations together: at most about 16 MB of text even in 4-byte characters."""
MAX_STATUS_MARKS = 500
"""Own messages whose ✓/✓✓ the pane can still update in place."""
HISTORY_PAGE = 100
"""Messages asked per HISTORICO (the server may send fewer)."""
CATCH_UP_PAGES = 3
"""Pages fetched after a reconnect to fill a room's gap; past that, the room starts afresh."""
MAX_PIECES_PER_SEND = 40
"""Messages one input may become (lines, and cuts of long lines)."""
POLL_MS = 30
"""How often the window takes events from the session."""
TICK_BUDGET = 0.02
"""Seconds of work per tick before the window yields to Tk (redraws, keys, clicks)."""
EVENTS_PER_TAKE = 200
EVENTS_PER_TICK = 1000
"""At most this many events per tick: with their lines drawn, about 20 ms here."""
SIDEBAR_CHANGES_PER_TICK = 400
BELL_INTERVAL = 2.0
"""At most one bell every this many seconds."""
GROUP_SECONDS = 300
"""Consecutive messages of one sender within this many seconds share one header."""
MIN_WIDTH, MIN_HEIGHT = 660, 480
SIDEBAR_WIDTH = 264
START_WIDTH, START_HEIGHT = 980, 660

# Own message states, in the order they progress
LOCAL = 1 << 62
"""Sorts a local line after every message of the same time."""
PENDING = "enviando"
STORED = "guardada"
WAITING = "aguardando"
DELIVERED = "entregue"
UNSENT = "nao_enviada"
REFUSED = "recusada"


# --------------------------------------------------------------------------
# Texts and forms


@dataclass(frozen=True)
class ConnectSettings:
    """A validated connect form."""

    host: str
    port: int
    nick: str
    password: str | None
    tls: bool


def validate_connect_form(address: str, nick: str, password: str, tls: bool,
                          default_port: int = protocolo.DEFAULT_PORT
                          ) -> tuple[ConnectSettings | None, dict[str, str]]:
    """The form's one validation: the settings, or the errors by field (in Portuguese).

    Fields: ``servidor``, ``apelido``, ``senha``. The nickname follows
    ``protocolo``'s rules; the password is one token of 6-128 characters.
    """
    errors: dict[str, str] = {}
    host, port = "", default_port
    if not address.strip():
        errors["servidor"] = "Informe o servidor (por exemplo 192.168.0.10 ou 192.168.0.10:1998)."
    else:
        try:
            host, port = parse_host_port(address, default_port)
        except ValueError as exc:
            text = str(exc)
            errors["servidor"] = f"{text[:1].upper()}{text[1:]}."
    nick = nick.strip()
    if not nick:
        errors["apelido"] = "Informe um apelido."
    elif not protocolo.valid_nick(nick):
        errors["apelido"] = "Apelido inválido: 1 a 32 letras de um alfabeto, dígitos, _ - ."
    if password and (not protocolo.valid_password(password) or " " in password):
        errors["senha"] = "Senha inválida: 6 a 128 caracteres, sem espaços."
    if errors:
        return None, errors
    return ConnectSettings(host, port, nick, password or None, tls), {}


_NO_CUT_BEFORE = frozenset("\u200d\ufe0e\ufe0f")


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` so its first part has at most ``limit`` UTF-8 bytes.

    Prefers the last space in the final fifth, and never separates a letter
    from its combining marks or an emoji from its joiner or modifiers.
    """
    size, cut = 0, 0
    for index, char in enumerate(text):
        size += len(char.encode("utf-8", "surrogatepass"))
        if size > limit:
            break
        cut = index + 1
    else:
        return len(text)
    space = text.rfind(" ", max(1, cut - cut // 5), cut)
    if space > 0:
        return space + 1
    while cut > 1 and (unicodedata.combining(text[cut]) or text[cut] in _NO_CUT_BEFORE
                       or text[cut - 1] == "\u200d" or "\U0001f3fb" <= text[cut] <= "\U0001f3ff"):
        cut -= 1
    return cut


def split_for_sending(target: str, text: str) -> list[str]:
    """The messages one input becomes: one per non-empty line, long lines cut to fit.

    Each piece is repaired with ``protocolo.clean_text`` (controls become
    spaces; invisible and direction-changing characters go) and fits one
    ENVIAR line. ``ValueError`` (in Portuguese) past ``MAX_PIECES_PER_SEND``.
    """
    room = protocolo.MAX_REQUEST_BYTES - len(
        protocolo.format_request(protocolo.Send(target, "")))
    pieces: list[str] = []
    for raw_line in text.splitlines():
        line = protocolo.clean_text(raw_line).rstrip()
        while line.strip():
            cut = _cut_point(line, room)
            piece, line = line[:cut].rstrip(), line[cut:]
            if piece.strip():
                pieces.append(piece)
            if len(pieces) > MAX_PIECES_PER_SEND:
                raise ValueError(f"Texto longo demais para enviar de uma vez (mais de "
                                 f"{MAX_PIECES_PER_SEND} mensagens). Divida-o em partes.")
    return pieces


_WEEKDAYS = ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira",
             "sábado", "domingo")
_MONTHS = ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto",
           "setembro", "outubro", "novembro", "dezembro")


def local_time(time_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time_ms / 1000)


def day_label(day: datetime.date, today: datetime.date) -> str:
    """``Hoje``, ``Ontem``, a weekday this week, or the full date, in Portuguese."""
    if day == today:
        return "Hoje"
    if day == today - datetime.timedelta(days=1):
        return "Ontem"
    if today - datetime.timedelta(days=6) <= day < today:
        return _WEEKDAYS[day.weekday()].capitalize()
    text = f"{day.day} de {_MONTHS[day.month - 1]}"
    return text if day.year == today.year else f"{text} de {day.year}"


def clock(time_ms: int) -> str:
    return local_time(time_ms).strftime("%H:%M")


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# The model: conversations in memory, bounded


@dataclass(eq=False)
class Entry:
    """One line of a conversation: a message (``kind`` "msg") or a notice."""

    kind: str
    text: str
    sender: str = ""
    time_ms: int = 0
    message_id: int | None = None
    own: bool = False
    status: str = ""
    serial: int = 0
    error: bool = False
    detail: str = ""
    order: tuple[int, int, int] = (0, 0, 0)
    """Where the line goes: (server time, id, 0) for messages; local lines go after
    the newest message seen when they were made, (that time, LOCAL, sequence)."""

    @property
    def identity(self) -> tuple[int, int] | None:
        """(id, time): ids alone repeat when a server without disk restarts."""
        return None if self.message_id is None else (self.message_id, self.time_ms)


@dataclass(eq=False)
class Conversation:
    """A room or a person: its lines (sorted by ``order``) and what the window shows of it."""

    key: str
    name: str
    is_room: bool
    entries: list[Entry] = field(default_factory=list)
    identities: set[tuple[int, int]] = field(default_factory=set)
    chars: int = 0
    unread: int = 0
    appended: int = 0
    """Entries ever appended at the end; the pane draws those it has not drawn yet."""
    revision: int = 0
    """Bumped when lines change other than at the end: the pane redraws all."""
    dropped: int = 0
    """Oldest entries ever dropped to stay within bounds; the pane drops them too."""
    history: str = "unknown"  # unknown, loading, more, done
    members: tuple[str, ...] = ()
    draft: str = ""

    @property
    def oldest_id(self) -> int | None:
        """The id to ask HISTORICO for what came before (the oldest message here)."""
        return next((e.message_id for e in self.entries if e.message_id is not None), None)

    @property
    def newest_id(self) -> int | None:
        return next((e.message_id for e in reversed(self.entries)
                     if e.message_id is not None), None)


class ConversationStore:
    """Every conversation the window knows, within the bounds above.

    Conversations are kept in least-recently-used order; past a bound the
    oldest goes (never the one on screen), and a conversation past its own
    bound loses its oldest lines. Indexes from a send's serial and from a
    message id to its line let replies and receipts find it.
    """

    def __init__(self, *, max_conversations: int = MAX_CONVERSATIONS,
                 max_entries: int = MAX_ENTRIES_PER_CONVERSATION,
                 max_chars: int = MAX_CHARS_PER_CONVERSATION,
                 max_total_entries: int = MAX_TOTAL_ENTRIES,
                 max_total_chars: int = MAX_TOTAL_CHARS) -> None:
        self.max_conversations = max_conversations
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_total_entries = max_total_entries
        self.max_total_chars = max_total_chars
        self.conversations: collections.OrderedDict[str, Conversation] = (
            collections.OrderedDict())
        self.selected: str | None = None
        self.me = ""
        self.newest_time = 0
        """The latest server time seen: local lines (notices, sends) go right after it."""
        self.total_entries = 0
        self.total_chars = 0
        self.evicted: list[str] = []
        """Keys evicted since the window last looked (it removes their list entries)."""
        self._sequence = itertools.count(1)
        self._by_serial: dict[int, tuple[Conversation, Entry]] = {}
        self._by_id: dict[int, tuple[Conversation, Entry]] = {}

    # -- conversations --

    @staticmethod
    def key_of(name: str) -> str:
        return protocolo.room_key(name) if protocolo.is_room(name) else protocolo.nick_key(name)

    def get(self, key: str) -> Conversation | None:
        return self.conversations.get(key)

    def ensure(self, name: str) -> Conversation:
        """The conversation with ``name`` (a nickname or a #room), made on first use."""
        key = self.key_of(name)
        conv = self.conversations.get(key)
        if conv is None:
            conv = Conversation(key, name, protocolo.is_room(name))
            self.conversations[key] = conv
            self._evict_if_needed()
        else:
            self.conversations.move_to_end(key)
        return conv

    def remove(self, key: str) -> None:
        conv = self.conversations.pop(key, None)
        if conv is not None:
            self._forget(conv, conv.entries)
            self.total_entries -= len(conv.entries)
            self.total_chars -= conv.chars

    def clear(self) -> None:
        for key in list(self.conversations):
            self.remove(key)

    @property
    def total_unread(self) -> int:
        return sum(conv.unread for conv in self.conversations.values())

    # -- lines --

    def _order_of(self, entry: Entry) -> tuple[int, int, int]:
        if entry.message_id is not None:
            self.newest_time = max(self.newest_time, entry.time_ms)
            return (entry.time_ms, entry.message_id, 0)
        return (self.newest_time, LOCAL, next(self._sequence))

    def _add(self, conv: Conversation, entry: Entry) -> bool:
        """Put ``entry`` in place; False if the same message is already there."""
        identity = entry.identity
        if identity is not None:
            if identity in conv.identities:
                return False
            conv.identities.add(identity)
        entry.order = self._order_of(entry)
        if not conv.entries or entry.order > conv.entries[-1].order:
            conv.entries.append(entry)
            conv.appended += 1
        else:
            position = bisect.bisect([e.order for e in conv.entries], entry.order)
            conv.entries.insert(position, entry)
            conv.revision += 1
        conv.chars += len(entry.text)
        self.total_entries += 1
        self.total_chars += len(entry.text)
        if entry.serial:
            self._by_serial[entry.serial] = (conv, entry)
        if entry.own and entry.message_id is not None and not conv.is_room:
            self._by_id[entry.message_id] = (conv, entry)
        self._trim(conv)
        self._evict_if_needed()
        return True

    def add_incoming(self, message: protocolo.Message) -> tuple[Conversation, Entry] | None:
        """A pushed message, in its conversation; None for a repeat."""
        own = protocolo.nick_key(message.sender) == protocolo.nick_key(self.me)
        if protocolo.is_room(message.target):
            name = message.target
        else:
            name = message.target if own else message.sender
        conv = self.ensure(name)
        entry = Entry("msg", message.text, message.sender, message.time_ms or now_ms(),
                      message.message_id, own, STORED if own else "")
        return (conv, entry) if self._add(conv, entry) else None

    def add_own(self, target: str, text: str, serial: int) -> tuple[Conversation, Entry]:
        conv = self.ensure(target)
        entry = Entry("msg", text, self.me, max(now_ms(), self.newest_time), None, True,
                      PENDING, serial)
        self._add(conv, entry)
        return conv, entry

    def add_notice(self, conv: Conversation, text: str, error: bool = False) -> Entry:
        entry = Entry("notice", text, time_ms=max(now_ms(), self.newest_time), error=error)
        self._add(conv, entry)
        return entry

    def add_history(self, conv: Conversation, items: Iterable[protocolo.HistoryItem]) -> int:
        """Lines from HISTORICO, merged by id; how many were new."""
        me = protocolo.nick_key(self.me)
        added = 0
        for item in items:
            own = protocolo.nick_key(item.sender) == me
            entry = Entry("msg", item.text, item.sender, item.time_ms, item.message_id, own,
                          STORED if own else "")
            added += self._add(conv, entry)
        return added

    def own_entry(self, serial: int) -> tuple[Conversation, Entry] | None:
        return self._by_serial.get(serial)

    def set_stored(self, serial: int, message_id: int, time_ms: int,
                   waiting: bool) -> tuple[Conversation, Entry] | None:
        """A send got ``OK <id> <quando>``: ✓, and the id for a later receipt."""
        found = self._by_serial.get(serial)
        if found is None:
            return None
        conv, entry = found
        if (message_id, time_ms) in conv.identities:  # history brought it first: keep one
            self._drop(conv, entry)
            return None
        entry.message_id, entry.time_ms = message_id, time_ms
        entry.status = WAITING if waiting else STORED
        conv.identities.add((message_id, time_ms))
        self.newest_time = max(self.newest_time, time_ms)
        if not conv.is_room:
            self._by_id[message_id] = (conv, entry)
        return found

    def set_delivered(self, message_id: int) -> tuple[Conversation, Entry] | None:
        found = self._by_id.pop(message_id, None)
        if found is not None:
            found[1].status = DELIVERED
            self._by_serial.pop(found[1].serial, None)
        return found

    def set_failed(self, serial: int, status: str, detail: str
                   ) -> tuple[Conversation, Entry] | None:
        found = self._by_serial.get(serial)
        if found is not None:
            found[1].status, found[1].detail = status, detail
        return found

    def drop_own(self, serial: int) -> Conversation | None:
        """Remove an unsent line (it is being sent again)."""
        found = self._by_serial.get(serial)
        if found is None:
            return None
        self._drop(*found)
        return found[0]

    def _drop(self, conv: Conversation, entry: Entry) -> None:
        with contextlib.suppress(ValueError):
            conv.entries.remove(entry)
            conv.revision += 1
            conv.chars -= len(entry.text)
            self.total_entries -= 1
            self.total_chars -= len(entry.text)
            if entry.identity is not None:
                conv.identities.discard(entry.identity)
        self._forget(conv, [entry])

    def _forget(self, conv: Conversation, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.serial:
                self._by_serial.pop(entry.serial, None)
            if entry.message_id is not None:
                self._by_id.pop(entry.message_id, None)

    # -- bounds --

    def _trim(self, conv: Conversation) -> None:
        excess = 0
        chars = conv.chars
        while (len(conv.entries) - excess > self.max_entries
               or (chars > self.max_chars and len(conv.entries) - excess > 1)):
            chars -= len(conv.entries[excess].text)
            excess += 1
        if excess:
            self.drop_oldest(conv, excess)

    def drop_oldest(self, conv: Conversation, count: int) -> None:
        """Forget the ``count`` oldest lines of ``conv`` (the server still has them)."""
        dropped = conv.entries[:count]
        del conv.entries[:count]
        conv.dropped += len(dropped)
        removed_chars = sum(len(entry.text) for entry in dropped)
        conv.chars -= removed_chars
        self.total_entries -= len(dropped)
        self.total_chars -= removed_chars
        for entry in dropped:
            if entry.identity is not None:
                conv.identities.discard(entry.identity)
        self._forget(conv, dropped)
        if conv.history == "done":
            conv.history = "more"  # the server still has them

    def _evict_if_needed(self) -> None:
        while (len(self.conversations) > self.max_conversations
               or self.total_entries > self.max_total_entries
               or self.total_chars > self.max_total_chars):
            victim = next((key for key in self.conversations if key != self.selected), None)
            if victim is None:  # only the conversation on screen is left: trim it
                conv = self.conversations[self.selected]
                if len(conv.entries) <= 1:
                    return
                self.drop_oldest(conv, max(1, len(conv.entries) // 10))
                continue
            self.remove(victim)
            self.evicted.append(victim)


# --------------------------------------------------------------------------
# LAN discovery (the found servers, for the connect panel)


def default_discovery(hosts: tuple[str, ...] = ()) -> object:
    """Start looking for servers on the LAN; the result has ``done()`` and ``result()``."""
    return descoberta.discover_in_background(protocolo.DEFAULT_PORT, hosts, timeout=1.0)


def typed_address_only(hosts: tuple[str, ...] = ()) -> object:
    """``--sem-descoberta``: no broadcast; only the typed address is asked for its name."""
    return descoberta.discover_in_background(protocolo.DEFAULT_PORT, hosts, broadcast=False,
                                             timeout=1.0)


# --------------------------------------------------------------------------
# The look: palette, fonts, ttk style, icon

BG = "#eef0f4"
SURFACE = "#ffffff"
TEXT = "#1f2430"
MUTED = "#6b7383"
BORDER = "#d5d9e2"
ACCENT = "#2f6fde"
ACCENT_DARK = "#2459b8"
ACCENT_SOFT = "#e7effd"
OWN_BACKGROUND = "#f1f6ff"
ERROR = "#c0392b"
SUCCESS = "#1e9e5a"
WARNING = "#c77d0a"
SIDEBAR = "#222833"
SIDEBAR_TEXT = "#e8ebf1"
SIDEBAR_MUTED = "#8a93a6"
SIDEBAR_SELECTED = "#2f6fde"
SIDEBAR_SELECTED_IDLE = "#3a4252"
NAME_COLORS = ("#b4451f", "#1d7a4c", "#7a3fb0", "#a11d5b", "#0f6e8c", "#8a6d00",
               "#3f5fbf", "#9c3d3d")
"""Other people's names: a steady colour per name, all readable on white."""


def name_color(name: str) -> str:
    return NAME_COLORS[zlib.crc32(protocolo.nick_key(name).encode()) % len(NAME_COLORS)]


def _make_fonts(master: tk.Misc) -> dict[str, tkfont.Font]:
    base = tkfont.nametofont("TkDefaultFont", root=master)
    family = base.actual("family")
    size = max(base.actual("size"), 10)
    for name in ("TkDefaultFont", "TkTextFont", "TkMenuFont"):
        with contextlib.suppress(tk.TclError):
            tkfont.nametofont(name, root=master).configure(size=size)

    def font(delta: int = 0, **options: object) -> tkfont.Font:
        return tkfont.Font(root=master, family=family, size=size + delta, **options)

    return {
        "text": font(1), "bold": font(1, weight="bold"), "small": font(-1),
        "small_bold": font(-1, weight="bold"), "italic": font(-1, slant="italic"),
        "title": font(6, weight="bold"), "heading": font(3, weight="bold"),
        "base": font(0), "base_bold": font(0, weight="bold"),
    }


def _setup_style(master: tk.Misc, fonts: dict[str, tkfont.Font]) -> None:
    style = ttk.Style(master)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    master.configure(background=BG)
    style.configure(".", background=BG, foreground=TEXT, font=fonts["base"],
                    bordercolor=BORDER, lightcolor=BG, darkcolor=BG, focuscolor=ACCENT,
                    troughcolor=BG, selectbackground=ACCENT, selectforeground="#ffffff")
    style.configure("TFrame", background=BG)
    style.configure("Card.TFrame", background=SURFACE)
    style.configure("Surface.TFrame", background=SURFACE)
    style.configure("TLabel", background=BG, foreground=TEXT)
    style.configure("Card.TLabel", background=SURFACE)
    style.configure("Muted.TLabel", background=SURFACE, foreground=MUTED, font=fonts["small"])
    style.configure("Title.TLabel", background=SURFACE, font=fonts["title"])
    style.configure("Heading.TLabel", background=SURFACE, font=fonts["heading"])
    style.configure("Field.TLabel", background=SURFACE, font=fonts["base_bold"])
    style.configure("Subtitle.TLabel", background=SURFACE, foreground=MUTED)
    style.configure("Status.TFrame", background=SURFACE)
    style.configure("Status.TLabel", background=SURFACE, foreground=TEXT)
    style.configure("TCheckbutton", background=SURFACE, focuscolor=ACCENT)
    style.map("TCheckbutton", background=[("active", SURFACE)])
    style.configure("TButton", background=SURFACE, foreground=TEXT, padding=(12, 5),
                    bordercolor=BORDER, lightcolor=SURFACE, darkcolor=SURFACE,
                    focuscolor=ACCENT, focusthickness=1)
    style.map("TButton", background=[("pressed", "#dfe3ea"), ("active", "#f3f5f9")],
              bordercolor=[("focus", ACCENT)])
    style.configure("Accent.TButton", background=ACCENT, foreground="#ffffff",
                    bordercolor=ACCENT_DARK, lightcolor=ACCENT, darkcolor=ACCENT_DARK,
                    font=fonts["base_bold"], focuscolor="#ffffff")
    style.map("Accent.TButton",
              background=[("disabled", "#9db8ea"), ("pressed", ACCENT_DARK),
                          ("active", "#3a7ae6")],
              foreground=[("disabled", "#eef3fd")],
              bordercolor=[("focus", "#143a80")])
    style.configure("Link.TButton", background=SURFACE, foreground=ACCENT, padding=(6, 2),
                    bordercolor=SURFACE, lightcolor=SURFACE, darkcolor=SURFACE)
    style.map("Link.TButton", background=[("active", ACCENT_SOFT)],
              bordercolor=[("focus", ACCENT)])
    style.configure("Sidebar.TButton", background="#2e3542", foreground=SIDEBAR_TEXT,
                    bordercolor="#3b4352", lightcolor="#2e3542", darkcolor="#2e3542",
                    padding=(6, 4), focuscolor=SIDEBAR_TEXT)
    style.map("Sidebar.TButton", background=[("disabled", "#272d38"), ("pressed", "#262c37"),
                                             ("active", "#38404f")],
              foreground=[("disabled", "#687186")], bordercolor=[("focus", "#8fb1f0")])
    style.configure("TEntry", fieldbackground=SURFACE, bordercolor=BORDER, lightcolor=SURFACE,
                    darkcolor=SURFACE, padding=(6, 4), insertcolor=TEXT)
    style.map("TEntry", bordercolor=[("focus", ACCENT)], lightcolor=[("focus", ACCENT)],
              fieldbackground=[("disabled", "#f3f4f7")])
    style.configure("Invalid.TEntry", bordercolor=ERROR, lightcolor="#f6d5d1")
    style.map("Invalid.TEntry", bordercolor=[("focus", ERROR)], lightcolor=[("focus", ERROR)])
    style.configure("Sidebar.TCombobox", fieldbackground="#2e3542", foreground=SIDEBAR_TEXT,
                    background="#2e3542", bordercolor="#3b4352", arrowcolor=SIDEBAR_TEXT,
                    lightcolor="#2e3542", darkcolor="#2e3542", insertcolor=SIDEBAR_TEXT,
                    padding=(5, 3))
    style.map("Sidebar.TCombobox", bordercolor=[("focus", "#8fb1f0")],
              fieldbackground=[("readonly", "#2e3542")])
    style.configure("Sidebar.TFrame", background=SIDEBAR)
    style.configure("Sidebar.TLabel", background=SIDEBAR, foreground=SIDEBAR_TEXT)
    style.configure("SidebarMuted.TLabel", background=SIDEBAR, foreground=SIDEBAR_MUTED,
                    font=fonts["small"])
    style.configure("SidebarName.TLabel", background=SIDEBAR, foreground=SIDEBAR_TEXT,
                    font=fonts["base_bold"])
    style.configure("SidebarHeading.TLabel", background=SIDEBAR, foreground=SIDEBAR_MUTED,
                    font=fonts["small_bold"])
    style.configure("Sidebar.Treeview", background=SIDEBAR, fieldbackground=SIDEBAR,
                    foreground=SIDEBAR_TEXT, bordercolor=SIDEBAR, lightcolor=SIDEBAR,
                    darkcolor=SIDEBAR, rowheight=fonts["base"].metrics("linespace") + 12,
                    font=fonts["base"], indent=0)
    style.map("Sidebar.Treeview",
              background=[("selected", "focus", SIDEBAR_SELECTED),
                          ("selected", SIDEBAR_SELECTED_IDLE)],
              foreground=[("selected", "#ffffff")])
    style.layout("Sidebar.Treeview", [("Treeview.treearea", {"sticky": "nswe"})])
    style.configure("Servers.Treeview", background=SURFACE, fieldbackground=SURFACE,
                    bordercolor=BORDER, rowheight=fonts["base"].metrics("linespace") + 8)
    style.map("Servers.Treeview", background=[("selected", "focus", ACCENT),
                                              ("selected", ACCENT_SOFT)],
              foreground=[("selected", "focus", "#ffffff"), ("selected", TEXT)])
    style.configure("Vertical.TScrollbar", background="#d8dce4", troughcolor=SURFACE,
                    bordercolor=SURFACE, lightcolor="#d8dce4", darkcolor="#d8dce4",
                    arrowcolor=MUTED, gripcount=0)
    style.configure("Sidebar.Vertical.TScrollbar", background="#3b4352", troughcolor=SIDEBAR,
                    bordercolor=SIDEBAR, lightcolor="#3b4352", darkcolor="#3b4352",
                    arrowcolor=SIDEBAR_MUTED)


def _draw_icon(master: tk.Misc, size: int) -> tk.PhotoImage:
    """The app icon, drawn pixel by pixel: a blue speech bubble with three dots."""
    image = tk.PhotoImage(master=master, width=size, height=size)
    scale = size / 64
    radius = 14 * scale
    left, top, right, bottom = 4 * scale, 6 * scale, 60 * scale, 46 * scale
    dots = [(20 * scale, 26 * scale), (32 * scale, 26 * scale), (44 * scale, 26 * scale)]
    dot_radius = 4.2 * scale
    rows = []
    outside: list[tuple[int, int]] = []
    for y in range(size):
        row = []
        for x in range(size):
            px, py = x + 0.5, y + 0.5
            inside = left <= px <= right and top <= py <= bottom
            if inside:
                cx = min(max(px, left + radius), right - radius)
                cy = min(max(py, top + radius), bottom - radius)
                inside = (px - cx) ** 2 + (py - cy) ** 2 <= radius ** 2
            # The tail, bottom left.
            if not inside and bottom - 2 * scale <= py <= 58 * scale:
                depth = (py - (bottom - 2 * scale)) / (58 * scale - bottom + 2 * scale)
                inside = 14 * scale + depth * 2 * scale <= px <= 30 * scale - depth * 14 * scale
            if not inside:
                row.append("#ffffff")
                outside.append((x, y))
                continue
            is_dot = any((px - dx) ** 2 + (py - dy) ** 2 <= dot_radius ** 2 for dx, dy in dots)
            shade = int(0x2f + (py / size) * 0x10)
            row.append("#ffffff" if is_dot else f"#{shade:02x}{0x6f - shade // 6:02x}de")
        rows.append("{" + " ".join(row) + "}")
    image.put(" ".join(rows))
    for x, y in outside:
        image.transparency_set(x, y, True)
    return image


def _dot(master: tk.Misc, color: str, hollow: bool = False, size: int = 12) -> tk.PhotoImage:
    """A small round presence dot (or a blank of the same size when ``color`` is empty)."""
    image = tk.PhotoImage(master=master, width=size, height=size)
    if not color:
        image.put("#000000", to=(0, 0, size, size))
        for y in range(size):
            for x in range(size):
                image.transparency_set(x, y, True)
        return image
    center = (size - 1) / 2
    radius = size / 2 - 2
    for y in range(size):
        for x in range(size):
            distance = ((x - center) ** 2 + (y - center) ** 2) ** 0.5
            filled = distance <= radius if not hollow else radius - 1.6 <= distance <= radius
            if filled:
                image.put(color, to=(x, y))
            else:
                image.transparency_set(x, y, True)
    return image


def bind_where_known(widget: tk.Misc, sequences: Iterable[str],
                     callback: Callable[[object], object]) -> None:
    """Bind each of ``sequences`` that this platform's Tk knows (X11 has ISO_Left_Tab)."""
    for sequence in sequences:
        with contextlib.suppress(tk.TclError):
            widget.bind(sequence, callback)


def fit_text(text: str, font: tkfont.Font, width: int) -> str:
    """``text`` cut with "…" to fit ``width`` pixels on one line."""
    if width <= 0 or font.measure(text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if font.measure(text[:middle] + "…") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "…"


class OneLineLabel(ttk.Label if tk is not None else object):  # type: ignore[misc]
    """A label that never asks for more room: its text is cut with "…" to its width.

    Status texts change all the time; a label that grew with them would make
    the window jump. The full text stays in ``full_text`` (tests read it).
    """

    def __init__(self, master: tk.Misc, font: tkfont.Font, **options: object) -> None:
        super().__init__(master, width=1, font=font, **options)
        self._font = font
        self.full_text = ""
        self.bind("<Configure>", lambda _event: self._refit())

    def set(self, text: str) -> None:
        self.full_text = text
        self._refit()

    def _refit(self) -> None:
        self.configure(text=fit_text(self.full_text, self._font, self.winfo_width() - 4))


class AutoScrollbar(ttk.Scrollbar if tk is not None else object):  # type: ignore[misc]
    """A scrollbar that is there only when there is something to scroll."""

    def set(self, first: float | str, last: float | str) -> None:
        if float(first) <= 0.0 and float(last) >= 1.0:
            self.grid_remove()
        else:
            self.grid()
        super().set(first, last)


class FieldError(tk.Label if tk is not None else object):  # type: ignore[misc]
    """A field's error: red, at most ``lines`` lines, always taking the same height."""

    def __init__(self, master: tk.Misc, font: tkfont.Font, lines: int = 2) -> None:
        super().__init__(master, font=font, foreground=ERROR, background=SURFACE,
                         anchor="nw", justify="left", height=lines)
        self._font = font
        self._lines = lines
        self.full_text = ""
        self.bind("<Configure>", lambda _event: self._refit())

    def set(self, text: str) -> None:
        self.full_text = text
        self._refit()

    def _refit(self) -> None:
        width = max(self.winfo_width() - 4, 50)
        self.configure(wraplength=width, text=_fit_lines(self.full_text, self._font, width,
                                                         self._lines))


def _fit_lines(text: str, font: tkfont.Font, width: int, lines: int) -> str:
    """``text`` cut with "…" so that it wraps into at most ``lines`` lines of ``width``."""
    words = text.split(" ")
    out: list[str] = []
    current = ""
    for index, word in enumerate(words):
        candidate = f"{current} {word}".strip()
        if font.measure(candidate) <= width:
            current = candidate
            continue
        out.append(current)
        current = word
        if len(out) == lines:
            rest = " ".join(words[index:])
            out[-1] = fit_text(out[-1] + " " + rest, font, width)
            return "\n".join(out)
    out.append(current)
    return "\n".join(line for line in out if line)


# --------------------------------------------------------------------------
# The window's parts


class ConnectPanel:
    """Found servers, address, nickname, password, TLS and Conectar: the way in."""

    def __init__(self, app: ChatApp, parent: tk.Misc) -> None:
        self.app = app
        fonts = app.fonts
        self.frame = ttk.Frame(parent, style="TFrame")
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(0, weight=1)
        card = ttk.Frame(self.frame, style="Card.TFrame", padding=(28, 20, 28, 20))
        card.grid(row=0, column=0)
        self.card = card
        card.columnconfigure(0, weight=1, uniform="fields")
        card.columnconfigure(1, weight=1, uniform="fields")

        title = ttk.Frame(card, style="Card.TFrame")
        title.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 12))
        ttk.Label(title, image=app.icons["large"], style="Card.TLabel").pack(side="left")
        texts = ttk.Frame(title, style="Card.TFrame")
        texts.pack(side="left", padx=(12, 0))
        ttk.Label(texts, text=APP_NAME, style="Title.TLabel").pack(anchor="w")
        ttk.Label(texts, text="Converse com a turma na rede local.",
                  style="Subtitle.TLabel").pack(anchor="w")

        servers_head = ttk.Frame(card, style="Card.TFrame")
        servers_head.grid(row=1, column=0, columnspan=2, sticky="ew")
        ttk.Label(servers_head, text="Servidores na rede", style="Field.TLabel").pack(
            side="left")
        self.refresh_servers_button = ttk.Button(
            servers_head, text="Procurar de novo", style="Link.TButton",
            command=self.app.discover_servers)
        self.refresh_servers_button.pack(side="right")
        box = tk.Frame(card, background=SURFACE, highlightthickness=1,
                       highlightbackground=BORDER, highlightcolor=ACCENT)
        box.grid(row=2, column=0, columnspan=2, sticky="ew", pady=(4, 10))
        self.servers_list = ttk.Treeview(box, show="tree", height=3, selectmode="browse",
                                         style="Servers.Treeview")
        self.servers_list.pack(fill="both", expand=True)
        self.servers_placeholder = tk.Label(box, text="", background=SURFACE, foreground=MUTED,
                                            font=fonts["small"])
        self.servers_list.bind("<<TreeviewSelect>>", self._on_server_selected)
        self.servers_list.bind("<Double-Button-1>", lambda _e: self.app.connect())
        self.servers_list.bind("<Return>", lambda _e: self.app.connect())
        self.servers: dict[str, object] = {}

        # Made in the order Tab visits them: address, TLS, nickname, password, Conectar.
        self.address_entry = ttk.Entry(card, textvariable=app.address_var, width=44)
        self.address_entry.grid(row=4, column=0, columnspan=2, sticky="ew", pady=(3, 0))
        head = ttk.Frame(card, style="Card.TFrame")
        head.grid(row=3, column=0, columnspan=2, sticky="ew")
        ttk.Label(head, text="Servidor", style="Field.TLabel").pack(side="left")
        self.tls_check = ttk.Checkbutton(head, text="Usar TLS", variable=app.tls_var)
        self.tls_check.pack(side="right")
        self.errors = {"servidor": FieldError(card, fonts["small"], 2)}
        self.errors["servidor"].grid(row=5, column=0, columnspan=2, sticky="ew")

        ttk.Label(card, text="Apelido", style="Field.TLabel").grid(row=6, column=0, sticky="w")
        ttk.Label(card, text="Senha (opcional)", style="Field.TLabel").grid(
            row=6, column=1, sticky="w", padx=(8, 0))
        self.nick_entry = ttk.Entry(card, textvariable=app.nick_var, width=18)
        self.nick_entry.grid(row=7, column=0, sticky="ew", padx=(0, 8), pady=(3, 0))
        self.password_entry = ttk.Entry(card, textvariable=app.password_var, width=18, show="•")
        self.password_entry.grid(row=7, column=1, sticky="ew", padx=(8, 0), pady=(3, 0))
        self.errors["apelido"] = FieldError(card, fonts["small"], 2)
        self.errors["apelido"].grid(row=8, column=0, sticky="ew", padx=(0, 8))
        self.errors["senha"] = FieldError(card, fonts["small"], 2)
        self.errors["senha"].grid(row=8, column=1, sticky="ew", padx=(8, 0))
        self.errors["tls"] = self.errors["servidor"]
        ttk.Label(card, text="Com senha, o apelido fica reservado para você e as mensagens "
                             "esperam quando estiver offline.",
                  style="Muted.TLabel", wraplength=380, justify="left").grid(
            row=9, column=0, columnspan=2, sticky="w", pady=(0, 10))

        self.connect_button = ttk.Button(card, text="Conectar", style="Accent.TButton",
                                         command=app.connect)
        self.connect_button.grid(row=10, column=0, columnspan=2, sticky="ew", ipady=3)
        self.entries = {"servidor": self.address_entry, "apelido": self.nick_entry,
                        "senha": self.password_entry, "tls": self.address_entry}
        for entry in (self.address_entry, self.nick_entry, self.password_entry,
                      self.tls_check):
            entry.bind("<Return>", self._on_return)
            entry.bind("<KP_Enter>", self._on_return)

    def _on_return(self, _event: object) -> str:
        self.app.connect()
        return "break"

    def initial_focus(self) -> tk.Widget:
        if not self.app.address_var.get().strip():
            return self.address_entry
        if not self.app.nick_var.get().strip():
            return self.nick_entry
        return self.connect_button

    def set_errors(self, errors: dict[str, str]) -> None:
        for name, label in self.errors.items():
            if name == "tls":
                continue
            label.set(errors.get(name, "") or (errors.get("tls", "") if name == "servidor"
                                                else ""))
        for name, entry in self.entries.items():
            if name != "tls":
                entry.configure(style="Invalid.TEntry" if name in errors or (
                    name == "servidor" and "tls" in errors) else "TEntry")

    def error_text(self, name: str) -> str:
        return self.errors[name].full_text

    def set_busy(self, busy: bool) -> None:
        state = "disabled" if busy else "normal"
        for widget in (self.address_entry, self.nick_entry, self.password_entry,
                       self.tls_check, self.connect_button, self.refresh_servers_button):
            widget.configure(state=state)
        self.connect_button.configure(text="Conectando…" if busy else "Conectar")

    def show_servers(self, servers: list, searching: bool) -> None:
        self.servers_list.delete(*self.servers_list.get_children())
        self.servers = {}
        for index, server in enumerate(servers):
            iid = f"s{index}"
            self.servers[iid] = server
            self.servers_list.insert("", "end", iid=iid, text="  " + server.label)
        if servers:
            self.servers_placeholder.place_forget()
            return
        self.servers_placeholder.configure(
            text="Procurando servidores…" if searching else
            "Nenhum servidor respondeu. Digite o endereço abaixo.")
        self.servers_placeholder.place(relx=0.5, rely=0.5, anchor="center")

    def choose_server(self, index: int) -> None:
        """Select the ``index``-th server found (its address and TLS fill the form)."""
        rows = self.servers_list.get_children()
        if 0 <= index < len(rows):
            self.servers_list.selection_set(rows[index])
            self._on_server_selected(None)

    def _on_server_selected(self, _event: object) -> None:
        selection = self.servers_list.selection()
        server = self.servers.get(selection[0]) if selection else None
        if server is None:
            return
        port = server.port
        self.app.address_var.set(server.host if port == protocolo.DEFAULT_PORT
                                 else format_host_port(server.host, port))
        self.app.tls_var.set(bool(server.tls))


class Sidebar:
    """Salas and Pessoas: one list, a dot for presence, a badge for unread messages.

    Changes are queued by key (``mark``) and applied in bounded batches by
    ``sync``, so a list of thousands never stalls the window.
    """

    HEAD_ROOMS = "h:salas"
    HEAD_PEOPLE = "h:pessoas"
    NOBODY = "h:ninguem"
    """A placeholder row under Pessoas while nobody else is there (not selectable)."""

    def __init__(self, app: ChatApp, parent: tk.Misc) -> None:
        self.app = app
        fonts = app.fonts
        self.frame = ttk.Frame(parent, style="Sidebar.TFrame", width=SIDEBAR_WIDTH)
        self.frame.grid_propagate(False)
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(1, weight=1)

        me = ttk.Frame(self.frame, style="Sidebar.TFrame", padding=(14, 12, 10, 8))
        me.grid(row=0, column=0, sticky="ew")
        self.me_dot = ttk.Label(me, image=app.icons["offline"], style="Sidebar.TLabel")
        self.me_dot.pack(side="left")
        self.me_label = ttk.Label(me, text="", style="SidebarName.TLabel")
        self.me_label.pack(side="left", padx=(6, 0))
        self.server_label = ttk.Label(me, text="", style="SidebarMuted.TLabel")
        self.server_label.pack(side="right")

        holder = ttk.Frame(self.frame, style="Sidebar.TFrame")
        holder.grid(row=1, column=0, sticky="nsew")
        holder.columnconfigure(0, weight=1)
        holder.rowconfigure(0, weight=1)
        self.tree = ttk.Treeview(holder, show="tree", columns=("badge",), selectmode="browse",
                                 style="Sidebar.Treeview", takefocus=True)
        self.tree.column("#0", stretch=True, minwidth=120)
        self.tree.column("badge", width=44, minwidth=44, stretch=False, anchor="e")
        scrollbar = AutoScrollbar(holder, orient="vertical", command=self.tree.yview,
                                  style="Sidebar.Vertical.TScrollbar")
        self.tree.configure(yscrollcommand=scrollbar.set)
        self.tree.grid(row=0, column=0, sticky="nsew", padx=(6, 6))
        scrollbar.grid(row=0, column=1, sticky="ns")
        self.tree.tag_configure("heading", foreground=SIDEBAR_MUTED, font=fonts["small_bold"])
        self.tree.tag_configure("offline", foreground="#9aa3b5")
        self.tree.tag_configure("unread", foreground="#ffffff", font=fonts["base_bold"])
        self.tree.insert("", "end", iid=self.HEAD_ROOMS, text="SALAS", tags=("heading",))
        self.tree.insert("", "end", iid=self.HEAD_PEOPLE, text="PESSOAS", tags=("heading",))
        self.tree.tag_configure("placeholder", foreground=SIDEBAR_MUTED, font=fonts["italic"])
        self._show_nobody(True)
        self.tree.bind("<<TreeviewSelect>>", self._on_select)
        self.tree.bind("<Return>", lambda _e: self.app.start_chat() or "break")
        self.tree.bind("<KP_Enter>", lambda _e: self.app.start_chat() or "break")

        join = ttk.Frame(self.frame, style="Sidebar.TFrame", padding=(12, 10, 12, 0))
        join.grid(row=2, column=0, sticky="ew")
        join.columnconfigure(0, weight=1)
        ttk.Label(join, text="ENTRAR EM UMA SALA", style="SidebarHeading.TLabel").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 4))
        self.room_entry = ttk.Combobox(join, textvariable=app.room_var, width=12,
                                       style="Sidebar.TCombobox",
                                       postcommand=self.app.refresh_rooms)
        self.room_entry.grid(row=1, column=0, sticky="ew")
        self.join_button = ttk.Button(join, text="Entrar", style="Sidebar.TButton",
                                      command=app.join_room)
        self.join_button.grid(row=1, column=1, sticky="ns", padx=(6, 0))
        self.room_entry.bind("<Return>", lambda _e: self.app.join_room() or "break")
        self.room_error = OneLineLabel(join, fonts["small"], style="SidebarMuted.TLabel")
        self.room_error.grid(row=2, column=0, columnspan=2, sticky="ew", pady=(2, 0))

        actions = ttk.Frame(self.frame, style="Sidebar.TFrame", padding=(12, 4, 12, 12))
        actions.grid(row=3, column=0, sticky="ew")
        actions.columnconfigure(0, weight=1, uniform="a")
        actions.columnconfigure(1, weight=1, uniform="a")
        self.refresh_button = ttk.Button(actions, text="Atualizar Lista",
                                         style="Sidebar.TButton", command=app.refresh_users)
        self.refresh_button.grid(row=0, column=0, sticky="ew")
        self.chat_button = ttk.Button(actions, text="Iniciar Chat", style="Sidebar.TButton",
                                      command=app.start_chat)
        self.chat_button.grid(row=0, column=1, sticky="ew", padx=(6, 0))

        self._rooms: list[str] = []  # keys, sorted
        self._people: list[tuple[tuple, str]] = []  # (sort key, key), sorted
        self._person_sort: dict[str, tuple] = {}
        self._dirty: dict[str, None] = {}

    # -- what is shown --

    def mark(self, key: str) -> None:
        """``key`` (a room or person) may have changed: redraw it at the next ``sync``."""
        self._dirty[key] = None

    def sync(self, budget: int = SIDEBAR_CHANGES_PER_TICK) -> bool:
        """Apply up to ``budget`` queued changes; True if more are waiting."""
        keys = list(itertools.islice(self._dirty, budget))
        for key in keys:
            del self._dirty[key]
            if key.startswith("#"):
                self._sync_room(key)
            else:
                self._sync_person(key)
        if keys:
            online = sum(1 for sort, _ in self._people if sort[0] == 0)
            self.tree.item(self.HEAD_PEOPLE, text=f"PESSOAS · {online} online")
            self._show_nobody(not self._people)
        return bool(self._dirty)

    def _show_nobody(self, show: bool) -> None:
        if show and not self.tree.exists(self.NOBODY):
            self.tree.insert("", "end", iid=self.NOBODY, text="   ninguém mais por aqui",
                             tags=("placeholder",))
        elif not show and self.tree.exists(self.NOBODY):
            self.tree.delete(self.NOBODY)

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def _badge(self, conv: Conversation | None) -> tuple[str, list[str]]:
        if conv is not None and conv.unread:
            return (str(conv.unread) if conv.unread < 1000 else "999+"), ["unread"]
        return "", []

    def _sync_room(self, key: str) -> None:
        app = self.app
        name = app.rooms.get(key)
        iid = f"r:{key}"
        if name is None:
            if self.tree.exists(iid):
                self.tree.delete(iid)
                self._rooms.remove(key)
            return
        badge, tags = self._badge(app.store.get(key))
        if self.tree.exists(iid):
            self.tree.item(iid, text=f" {name}", values=(badge,), tags=tags)
            return
        position = bisect.bisect(self._rooms, key)
        self._rooms.insert(position, key)
        self.tree.insert("", 1 + position, iid=iid, text=f" {name}", values=(badge,),
                         tags=tags, image=app.icons["room"])

    def _sync_person(self, key: str) -> None:
        app = self.app
        iid = f"p:{key}"
        conv = app.store.get(key)
        online = key in app.online
        name = app.online.get(key) or (conv.name if conv else None)
        if name is None or key == protocolo.nick_key(app.nick):
            if self.tree.exists(iid):
                self.tree.delete(iid)
                self._people.remove((self._person_sort.pop(key), key))
            return
        sort = (0 if online else 1, key)
        badge, tags = self._badge(conv)
        if not online:
            tags.append("offline")
        image = app.icons["online" if online else "offline"]
        old = self._person_sort.get(key)
        if old is not None and old != sort:
            self._people.remove((old, key))
            old = None
        if old is None:
            position = bisect.bisect(self._people, (sort, key))
            self._people.insert(position, (sort, key))
            self._person_sort[key] = sort
            index = 2 + len(self._rooms) + position
            if self.tree.exists(iid):
                self.tree.move(iid, "", index)
            else:
                self.tree.insert("", index, iid=iid, text=f" {name}", image=image)
        self.tree.item(iid, text=f" {name}", values=(badge,), tags=tags, image=image)

    def clear(self) -> None:
        for key in list(self._rooms):
            self.tree.delete(f"r:{key}")
        for _sort, key in self._people:
            self.tree.delete(f"p:{key}")
        self._rooms.clear()
        self._people.clear()
        self._person_sort.clear()
        self._dirty.clear()
        self.tree.item(self.HEAD_PEOPLE, text="PESSOAS")
        self._show_nobody(True)

    # -- selection --

    def keys(self) -> list[str]:
        """Conversation keys in the order shown (rooms, then people)."""
        return list(self._rooms) + [key for _sort, key in self._people]

    def labels(self) -> list[str]:
        """What each row shows, with its badge (for tests): ``#geral``, ``ana (2)``."""
        out = []
        for iid in self.tree.get_children():
            if iid.startswith("h:"):
                continue
            text = self.tree.item(iid, "text").strip()
            badge = self.tree.set(iid, "badge")
            out.append(f"{text} ({badge})" if badge else text)
        return out

    def selected(self) -> str | None:
        selection = self.tree.selection()
        if not selection or selection[0].startswith("h:"):
            return None
        return selection[0][2:]

    def select(self, key: str | None) -> None:
        """Show ``key`` as selected (the window already shows its conversation).

        Tk reports the change later, as ``<<TreeviewSelect>>``; ``_on_select``
        then finds the conversation already open and does nothing.
        """
        if key is None:
            if self.tree.selection():
                self.tree.selection_set(())
            return
        iid = f"r:{key}" if key.startswith("#") else f"p:{key}"
        if self.tree.exists(iid) and self.tree.selection() != (iid,):
            self.tree.selection_set(iid)
            self.tree.focus(iid)
            self.tree.see(iid)

    def _on_select(self, _event: object) -> None:
        selection = self.tree.selection()
        if not selection:
            return
        iid = selection[0]
        if iid.startswith("h:"):  # headings are not conversations: skip to the next row
            rows = self.tree.get_children()
            after = rows[rows.index(iid) + 1:] if iid in rows else ()
            target = next((row for row in after if not row.startswith("h:")), None)
            if target is None:
                self.tree.selection_set(())
                return
            self.tree.selection_set(target)
            self.tree.focus(target)
            return
        current = self.app.current
        if current is None or current.key != iid[2:]:
            self.app.open_conversation(iid[2:], focus_input=False)


class ConversationView:
    """The selected conversation: a header, the lines, paging on scroll-up.

    Draws a ``Conversation`` from the model: new lines at the end are added
    incrementally (the flood path); anything else redraws it all. Lines of
    own messages keep a mark where their ✓ goes, to update it in place.
    """

    LEFT = 18

    def __init__(self, app: ChatApp, parent: tk.Misc) -> None:
        self.app = app
        fonts = app.fonts
        self.frame = ttk.Frame(parent, style="Surface.TFrame")
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(2, weight=1)

        header = ttk.Frame(self.frame, style="Surface.TFrame", padding=(18, 12, 12, 10))
        header.grid(row=0, column=0, sticky="ew")
        header.columnconfigure(0, weight=1)
        self.title_label = OneLineLabel(header, fonts["heading"], style="Heading.TLabel")
        self.title_label.grid(row=0, column=0, sticky="ew")
        self.subtitle_label = OneLineLabel(header, fonts["small"], style="Muted.TLabel")
        self.subtitle_label.grid(row=1, column=0, sticky="ew")
        self.leave_button = ttk.Button(header, text="Sair da sala", style="Link.TButton",
                                       command=app.leave_room)
        self.close_button = ttk.Button(header, text="Fechar", style="Link.TButton",
                                       command=app.close_conversation)
        self.leave_button.grid(row=0, column=1, rowspan=2, padx=(6, 0))
        self.close_button.grid(row=0, column=2, rowspan=2, padx=(2, 0))
        ttk.Separator(self.frame).grid(row=1, column=0, sticky="ew")

        body = ttk.Frame(self.frame, style="Surface.TFrame")
        body.grid(row=2, column=0, sticky="nsew")
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)
        self.text = tk.Text(body, wrap="word", state="disabled", relief="flat", borderwidth=0,
                            highlightthickness=0, padx=4, pady=8, font=fonts["text"],
                            cursor="arrow", background=SURFACE, foreground=TEXT,
                            takefocus=0, width=40, height=10, spacing1=1, spacing3=1,
                            selectbackground=ACCENT_SOFT, selectforeground=TEXT,
                            inactiveselectbackground=ACCENT_SOFT)
        self.scrollbar = AutoScrollbar(body, orient="vertical", command=self.text.yview)
        self.text.configure(yscrollcommand=self._on_scroll)
        self.text.bind("<Configure>", self._on_resize, add="+")
        self.text.grid(row=0, column=0, sticky="nsew")
        self.scrollbar.grid(row=0, column=1, sticky="ns")
        self.placeholder = tk.Label(body, background=SURFACE, foreground=MUTED,
                                    font=fonts["base"], justify="center")
        self._configure_tags()

        self.conv: Conversation | None = None
        self._drawn_revision = -1
        self._drawn_appended = 0
        self._drawn_dropped = 0
        self._drawn: collections.deque[tuple[Entry, int]] = collections.deque()
        """Each drawn entry and how many text lines it took, oldest first."""
        self._marks: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self._links: dict[str, int] = {}
        self._paging_check: str | None = None
        self._showing_end = True
        """Whether the newest line was in view at the last scroll report (before any resize)."""

    def _configure_tags(self) -> None:
        fonts, text, left = self.app.fonts, self.text, self.LEFT
        text.tag_configure("day", justify="center", foreground=MUTED, font=fonts["small_bold"],
                           spacing1=14, spacing3=6)
        text.tag_configure("notice", justify="center", foreground=MUTED, font=fonts["italic"],
                           spacing1=6, spacing3=6, lmargin1=left, lmargin2=left, rmargin=left)
        text.tag_configure("notice_error", foreground=ERROR)
        text.tag_configure("head", spacing1=10, lmargin1=left)
        text.tag_configure("time", foreground=MUTED, font=fonts["small"])
        text.tag_configure("body", lmargin1=left, lmargin2=left, rmargin=left, spacing3=2)
        text.tag_configure("own", background=OWN_BACKGROUND, lmargincolor=OWN_BACKGROUND)
        text.tag_configure("own_name", foreground=ACCENT, font=fonts["bold"])
        for index, color in enumerate(NAME_COLORS):
            text.tag_configure(f"name{index}", foreground=color, font=fonts["bold"])
        text.tag_configure("status", foreground=MUTED, font=fonts["small"])
        text.tag_configure("status_done", foreground=ACCENT, font=fonts["small_bold"])
        text.tag_configure("status_error", foreground=ERROR, font=fonts["small"])
        text.tag_configure("link", foreground=ACCENT, underline=True, font=fonts["small_bold"])
        text.tag_bind("link", "<Enter>", lambda _e: text.configure(cursor="hand2"))
        text.tag_bind("link", "<Leave>", lambda _e: text.configure(cursor="arrow"))
        text.tag_bind("link", "<Button-1>", self._on_link)
        text.tag_raise("sel")

    # -- showing a conversation --

    def show(self, conv: Conversation | None) -> None:
        """Draw ``conv`` from scratch (None: the placeholder)."""
        self.conv = conv
        self._drawn_revision = -1
        if conv is None:
            self._clear()
            self.title_label.set("")
            self.subtitle_label.set("")
            self.leave_button.grid_remove()
            self.close_button.grid_remove()
            self.placeholder.configure(text=self.app.placeholder_text())
            self.placeholder.place(relx=0.5, rely=0.45, anchor="center")
            return
        self.placeholder.place_forget()
        self.close_button.grid()
        if conv.is_room:
            self.leave_button.grid()
        else:
            self.leave_button.grid_remove()
        self.update_header()
        self.sync()
        self.text.see("end")

    def update_header(self) -> None:
        conv = self.conv
        if conv is None:
            return
        self.title_label.set(conv.name)
        self.subtitle_label.set(self.app.subtitle_for(conv))

    def sync(self) -> None:
        """Bring the pane up to date with the model (cheaply when only lines were added)."""
        conv = self.conv
        if conv is None:
            return
        if conv.revision != self._drawn_revision:
            self._redraw()
            return
        new = conv.appended - self._drawn_appended
        gone = conv.dropped - self._drawn_dropped
        if new <= 0 and gone <= 0:
            return
        if new > len(conv.entries) or gone > len(self._drawn):
            self._redraw()
            return
        follow = self.at_bottom()
        if new > 0:
            self._draw(conv.entries[-new:])
        if gone > 0:
            self._forget_oldest(gone)
        self._drawn_appended, self._drawn_dropped = conv.appended, conv.dropped
        if follow:
            self.text.see("end")

    def at_bottom(self) -> bool:
        """Whether the newest line is in view (a pane not laid out yet counts as showing it)."""
        return self.text.winfo_height() <= 1 or self.text.yview()[1] >= 0.999

    def _clear(self) -> None:
        self.text.configure(state="normal")
        self.text.delete("1.0", "end")
        self.text.configure(state="disabled")
        for serial in self._marks:
            self.text.mark_unset(f"st{serial}")
        self._marks.clear()
        for tag in self._links:
            self.text.tag_delete(tag)
        self._links.clear()
        self._drawn.clear()

    def _redraw(self) -> None:
        conv = self.conv
        assert conv is not None
        lines_before = self._line_count()
        top_before = self.text.yview()[0]
        follow = self.at_bottom()
        self._clear()
        self._draw(conv.entries)
        self._drawn_revision = conv.revision
        self._drawn_appended, self._drawn_dropped = conv.appended, conv.dropped
        if follow or lines_before <= 1:
            self.text.see("end")
        elif top_before <= 0.0:
            # Older lines came in on top: keep the line the user was reading in place.
            added = self._line_count() - lines_before
            self.text.yview(f"{max(added, 0) + 1}.0")

    def _line_count(self) -> int:
        return int(self.text.index("end-1c").split(".")[0])

    def _forget_oldest(self, count: int) -> None:
        """The model dropped its ``count`` oldest lines: drop them here too."""
        lines = 0
        for _ in range(count):
            entry, taken = self._drawn.popleft()
            lines += taken
            if entry.serial in self._marks:
                del self._marks[entry.serial]
                self.text.mark_unset(f"st{entry.serial}")
        if lines:
            self.text.configure(state="normal")
            self.text.delete("1.0", f"{lines + 1}.0")
            self.text.configure(state="disabled")

    def _draw(self, entries: list[Entry]) -> None:
        """Append ``entries`` in as few insert calls as possible."""
        text = self.text
        args: list[object] = []
        today = datetime.date.today()
        previous = self._drawn[-1][0] if self._drawn else None
        text.configure(state="normal")
        for entry in entries:
            lines = 1
            day = local_time(entry.time_ms).date()
            if previous is None or local_time(previous.time_ms).date() != day:
                args += [day_label(day, today) + "\n", ("day",)]
                lines += 1
                previous = None
            if entry.kind == "notice":
                tags = ("notice", "notice_error") if entry.error else ("notice",)
                args += [f"{entry.text} · {clock(entry.time_ms)}\n", tags]
            else:
                block = ("own",) if entry.own else ()
                if not self._same_group(previous, entry):
                    name_tag = "own_name" if entry.own else (
                        f"name{NAME_COLORS.index(name_color(entry.sender))}")
                    args += [entry.sender, ("head", name_tag, *block),
                             f"  {clock(entry.time_ms)}\n", ("head", "time", *block)]
                    lines += 1
                args += [entry.text, ("body", *block)]
                if entry.own:
                    if self._may_change(entry):
                        text.insert("end", *args, "  ", ("body", *block))
                        args = []
                        self._mark_status(entry)
                    else:
                        args += ["  ", ("body", *block), *self._status_parts(entry)]
                args += ["\n", ("body", *block)]
            self._drawn.append((entry, lines))
            previous = entry
        if args:
            text.insert("end", *args)
        text.configure(state="disabled")

    @staticmethod
    def _same_group(previous: Entry | None, entry: Entry) -> bool:
        return (previous is not None and previous.kind == "msg"
                and previous.sender == entry.sender and previous.own == entry.own
                and entry.time_ms - previous.time_ms < GROUP_SECONDS * 1000)

    def _may_change(self, entry: Entry) -> bool:
        """Whether an own message's status can still change (it then keeps a mark)."""
        if entry.status == PENDING:
            return True
        return entry.status in (STORED, WAITING) and self.app.expects_receipts(self.conv)

    def _mark_status(self, entry: Entry) -> None:
        """Insert the status at the end with a mark before it, to rewrite it in place."""
        mark = f"st{entry.serial}"
        self.text.mark_set(mark, "end-1c")
        self.text.mark_gravity(mark, "left")
        self.text.insert("end", *self._status_parts(entry))
        self._marks[entry.serial] = entry
        while len(self._marks) > MAX_STATUS_MARKS:
            old, _ = self._marks.popitem(last=False)
            self.text.mark_unset(f"st{old}")

    def _status_parts(self, entry: Entry) -> list[object]:
        """(text, tags) pairs that show an own message's state."""
        block = ("body", "own")
        if entry.status == PENDING:
            return ["enviando…", ("status", *block)]
        if entry.status == STORED:
            return ["✓", ("status_done", *block)]
        if entry.status == WAITING:
            peer = self.conv.name if self.conv else ""
            return [f"✓ · {peer} está offline: será entregue quando voltar", ("status", *block)]
        if entry.status == DELIVERED:
            return ["✓✓", ("status_done", *block)]
        if entry.status in (UNSENT, REFUSED):
            link = f"rs{entry.serial}"
            self._links[link] = entry.serial
            return [f"✗ {entry.detail or 'não enviada'} ", ("status_error", *block),
                    "Reenviar", ("link", link, *block)]
        return []

    def update_status(self, entry: Entry) -> None:
        """An own message's state changed: rewrite its status where it is drawn."""
        if self._marks.get(entry.serial) is not entry:
            return
        mark = f"st{entry.serial}"
        self.text.configure(state="normal")
        self.text.delete(mark, f"{mark} lineend")
        parts = self._status_parts(entry)
        if parts:
            self.text.insert(mark, *parts)
        self.text.configure(state="disabled")
        if not self._may_change(entry):
            del self._marks[entry.serial]
            self.text.mark_unset(mark)

    def _on_link(self, _event: object) -> str:
        for tag in self.text.tag_names("current"):
            if tag in self._links:
                self.app.resend(self._links[tag])
                break
        return "break"

    def history(self) -> str:
        """What the pane shows, as plain text (for tests and copying)."""
        return self.text.get("1.0", "end-1c")

    # -- paging --

    def _on_scroll(self, first: str, last: str) -> None:
        self.scrollbar.set(first, last)
        self._showing_end = float(last) >= 0.999
        if float(first) <= 0.0 and self._paging_check is None and self.conv is not None:
            self._paging_check = self.text.after_idle(self._check_paging)

    def _on_resize(self, _event: object) -> None:
        """A pane showing its newest line keeps showing it when the window changes size.

        Tk keeps the top line in place on a resize, so a pane that grows
        (the window is maximised, or is first laid out while lines arrive)
        would otherwise stop short of the end, and stop following new lines.
        """
        if self._showing_end:
            self.text.see("end")

    def _check_paging(self) -> None:
        self._paging_check = None
        # dlineinfo brings the layout up to date first; yview() may still tell
        # the position from before the last lines were drawn, and a page would
        # be fetched (and the view moved off the end) that nobody scrolled to.
        if self.conv is not None and self.text.dlineinfo("1.0") is not None:
            self.app.load_older(self.conv)

    def cancel(self) -> None:
        if self._paging_check is not None:
            with contextlib.suppress(tk.TclError):
                self.text.after_cancel(self._paging_check)
            self._paging_check = None


class Composer:
    """The message box: Enter sends, Shift+Enter breaks the line; one draft per conversation."""

    def __init__(self, app: ChatApp, parent: tk.Misc) -> None:
        self.app = app
        fonts = app.fonts
        self.frame = ttk.Frame(parent, style="Surface.TFrame", padding=(14, 8, 14, 6))
        self.frame.columnconfigure(0, weight=1)
        box = tk.Frame(self.frame, background=SURFACE, highlightthickness=1,
                       highlightbackground=BORDER, highlightcolor=ACCENT)
        box.grid(row=0, column=0, sticky="ew")
        box.columnconfigure(0, weight=1)
        self.text = tk.Text(box, height=3, wrap="word", relief="flat", borderwidth=0,
                            highlightthickness=0, padx=8, pady=6, font=fonts["text"],
                            background=SURFACE, foreground=TEXT, insertbackground=TEXT,
                            undo=True, width=20)
        self.text.grid(row=0, column=0, sticky="ew")
        self.placeholder = tk.Label(box, text="", background=SURFACE, foreground="#9aa1ae",
                                    font=fonts["text"], cursor="xterm")
        self.placeholder.bind("<Button-1>", lambda _e: self.text.focus_set())
        self.send_button = ttk.Button(self.frame, text="Enviar", style="Accent.TButton",
                                      command=app.send_current)
        self.send_button.grid(row=0, column=1, sticky="ns", padx=(8, 0))
        self.hint = OneLineLabel(self.frame, fonts["small"], style="Muted.TLabel")
        self.hint.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(3, 0))
        self.hint.set("Enter envia · Shift+Enter quebra a linha")
        text = self.text
        for sequence in ("<Return>", "<KP_Enter>"):
            text.bind(sequence, self._on_return)
        for sequence in ("<Shift-Return>", "<Shift-KP_Enter>"):
            text.bind(sequence, self._on_newline)
        text.bind("<Tab>", self._focus_next)
        bind_where_known(text, ("<Shift-Tab>", "<ISO_Left_Tab>"), self._focus_previous)
        text.bind("<<Modified>>", self._on_modified)
        text.bind("<FocusIn>", lambda _e: self._update_placeholder())
        text.bind("<FocusOut>", lambda _e: self._update_placeholder())

    def get(self) -> str:
        return self.text.get("1.0", "end-1c")

    def set(self, value: str) -> None:
        self.text.delete("1.0", "end")
        if value:
            self.text.insert("1.0", value)
        self.text.edit_reset()
        self._update_placeholder()

    def set_target(self, conv: Conversation | None) -> None:
        state = "normal" if conv is not None else "disabled"
        self.text.configure(state=state)
        self.send_button.configure(state=state)
        self._update_placeholder()

    def _placeholder_text(self) -> str:
        conv = self.app.current
        if conv is None:
            return ""
        return f"Mensagem para {conv.name}"

    def _update_placeholder(self) -> None:
        if self.get() or str(self.text.cget("state")) == "disabled":
            self.placeholder.place_forget()
            return
        self.placeholder.configure(text=self._placeholder_text())
        self.placeholder.place(in_=self.text, x=9, y=6)

    def _on_modified(self, _event: object) -> None:
        if self.text.edit_modified():
            self.text.edit_modified(False)
            self._update_placeholder()

    def _on_return(self, _event: object) -> str:
        self.app.send_current()
        return "break"

    def _on_newline(self, _event: object) -> str:
        self.text.insert("insert", "\n")
        self.text.see("insert")
        return "break"

    def _focus_next(self, _event: object) -> str:
        self.text.tk_focusNext().focus_set()
        return "break"

    def _focus_previous(self, _event: object) -> str:
        self.text.tk_focusPrev().focus_set()
        return "break"


class StatusBar:
    """One line at the bottom: the connection's state and what can be done about it.

    Its height never changes (the buttons' row is always reserved), so the
    window does not jump when the state does.
    """

    def __init__(self, app: ChatApp, parent: tk.Misc) -> None:
        self.app = app
        fonts = app.fonts
        self.frame = ttk.Frame(parent, style="Status.TFrame", padding=(12, 4, 8, 4))
        self.frame.columnconfigure(1, weight=1)
        self.dot = ttk.Label(self.frame, image=app.icons["offline"], style="Status.TLabel")
        self.dot.grid(row=0, column=0, padx=(0, 6))
        self.label = OneLineLabel(self.frame, fonts["small"], style="Status.TLabel")
        self.label.grid(row=0, column=1, sticky="ew")
        buttons = ttk.Frame(self.frame, style="Status.TFrame")
        buttons.grid(row=0, column=2, sticky="e")
        self.reconnect_button = ttk.Button(buttons, text="Reconectar agora",
                                           style="Link.TButton", command=app.reconnect_now)
        self.cancel_button = ttk.Button(buttons, text="Cancelar", style="Link.TButton",
                                        command=app.cancel_reconnect)
        self.connect_button = ttk.Button(buttons, text="Conectar", style="Link.TButton",
                                         command=app.connect_again)
        self.disconnect_button = ttk.Button(buttons, text="Desconectar", style="Link.TButton",
                                            command=app.disconnect)
        self._buttons = (self.reconnect_button, self.cancel_button, self.connect_button,
                         self.disconnect_button)
        self.frame.update_idletasks()
        self.frame.rowconfigure(0, minsize=self.reconnect_button.winfo_reqheight())
        self.kind = "offline"

    def set(self, text: str, kind: str = "offline",
            buttons: tuple[ttk.Button, ...] = ()) -> None:
        """``kind``: online, waiting, offline or error (the dot's colour)."""
        self.kind = kind
        self.label.set(text)
        self.label.configure(foreground=ERROR if kind == "error" else TEXT)
        self.dot.configure(image=self.app.icons[{"online": "online", "waiting": "waiting",
                                                 "error": "error"}.get(kind, "offline")])
        for button in self._buttons:
            if button in buttons:
                button.pack(side="left", padx=(4, 0))
            else:
                button.pack_forget()

    @property
    def text(self) -> str:
        return self.label.full_text


# --------------------------------------------------------------------------
# The application


class ChatApp:
    """The main window: connect panel, then sidebar + conversation + composer.

    ``master`` is the window to build in (a ``Tk`` root, or a ``Toplevel``
    so tests can host several clients in one Tk). Everything here runs in
    Tk's thread; the session's thread only fills the queue ``_poll`` drains.
    """

    def __init__(self, master: tk.Misc, *, host: str = DEFAULT_HOST,
                 port: int = protocolo.DEFAULT_PORT, nick: str = "", use_tls: bool = False,
                 tls_ca: str | None = None,
                 session_factory: Callable[[], ChatSession] = ChatSession,
                 discover: Callable[[tuple[str, ...]], object] | None = default_discovery,
                 sound: bool = True, store: ConversationStore | None = None,
                 history_page: int = HISTORY_PAGE) -> None:
        if tk is None:
            raise RuntimeError("tkinter não está disponível neste Python")
        self.master = master
        self.tls_ca = tls_ca
        self.session_factory = session_factory
        self.discover = discover
        self.sound = sound
        self.history_page = history_page
        self.session: ChatSession | None = None
        self.settings: ConnectSettings | None = None
        self.nick = ""
        self.store = store or ConversationStore()
        self.online: dict[str, str] = {}  # nick key -> nickname as the server spells it
        self.rooms: dict[str, str] = {}  # room key -> room name, the rooms this user is in
        self.current: Conversation | None = None
        self.received = 0  # messages received this run (tests and diagnostics)
        self.bells = 0
        self._poll_id: str | None = None
        self._tick_ids: dict[str, str] = {}
        self._quit_requested = False
        self._closed = False
        self._view_name = ""
        self._history_requests: dict[int, tuple[str, str, int]] = {}  # serial -> key, why, page
        self._catch_up: dict[str, tuple[int, int]] = {}  # room -> (newest id before, added)
        self._joining: str | None = None  # the room the user asked to join
        self._auto_open = False  # open the first room joined after connecting
        self._refresh_asked = False
        self._local_serials = itertools.count(-1, -1)  # lines that never reached the session
        self._last_bell = 0.0
        self._retry_at = 0.0
        self._lost_message = ""
        self._title = ""
        self._in_tick = False  # inside _poll's event loop: _reading may be kept
        self._reading: bool | None = None
        self._discovery: object | None = None

        self.fonts = _make_fonts(master)
        _setup_style(master, self.fonts)
        self.icons = {
            "large": _draw_icon(master, 48), "window": _draw_icon(master, 64),
            "small": _draw_icon(master, 32), "online": _dot(master, SUCCESS),
            "offline": _dot(master, "#8a93a6", hollow=True), "waiting": _dot(master, WARNING),
            "error": _dot(master, ERROR), "room": _dot(master, ""),
        }
        with contextlib.suppress(tk.TclError):
            master.iconphoto(True, self.icons["window"], self.icons["small"])
        address = host if port == protocolo.DEFAULT_PORT else format_host_port(host, port)
        self.address_var = tk.StringVar(master, address)
        self._default_address = address if (host, port) == (DEFAULT_HOST,
                                                             protocolo.DEFAULT_PORT) else None
        """The address nobody chose: the first server found on the LAN may replace it."""
        self.nick_var = tk.StringVar(master, nick)
        self.password_var = tk.StringVar(master, "")
        self.tls_var = tk.BooleanVar(master, use_tls or bool(tls_ca))
        self.room_var = tk.StringVar(master, "")
        self._build()
        master.protocol("WM_DELETE_WINDOW", self.close)
        self._show_connect_view()
        self._bind_keys()
        self.set_title()
        self._poll_id = master.after(POLL_MS, self._poll)
        self.discover_servers()

    # -- layout ------------------------------------------------------------

    def _build(self) -> None:
        master = self.master
        master.minsize(MIN_WIDTH, MIN_HEIGHT)
        with contextlib.suppress(tk.TclError):
            if not master.winfo_ismapped():
                master.geometry(f"{START_WIDTH}x{START_HEIGHT}")
        master.columnconfigure(0, weight=1)
        master.rowconfigure(0, weight=1)
        self.body = ttk.Frame(master, style="TFrame")
        self.body.grid(row=0, column=0, sticky="nsew")
        self.body.columnconfigure(0, weight=1)
        self.body.rowconfigure(0, weight=1)
        ttk.Separator(master).grid(row=1, column=0, sticky="ew")
        self.status = StatusBar(self, master)
        self.status.frame.grid(row=2, column=0, sticky="ew")

        self.panel = ConnectPanel(self, self.body)
        self.chat = ttk.Frame(self.body, style="TFrame")
        self.chat.columnconfigure(1, weight=1)
        self.chat.rowconfigure(0, weight=1)
        self.sidebar = Sidebar(self, self.chat)
        self.sidebar.frame.grid(row=0, column=0, sticky="nsw")
        right = ttk.Frame(self.chat, style="Surface.TFrame")
        right.grid(row=0, column=1, sticky="nsew")
        right.columnconfigure(0, weight=1)
        right.rowconfigure(0, weight=1)
        self.view = ConversationView(self, right)
        self.view.frame.grid(row=0, column=0, sticky="nsew")
        ttk.Separator(right).grid(row=1, column=0, sticky="ew")
        self.composer = Composer(self, right)
        self.composer.frame.grid(row=2, column=0, sticky="ew")

        # Names the tests and the docs use.
        self.address_entry = self.panel.address_entry
        self.nick_entry = self.panel.nick_entry
        self.password_entry = self.panel.password_entry
        self.tls_check = self.panel.tls_check
        self.connect_button = self.panel.connect_button
        self.refresh_button = self.sidebar.refresh_button
        self.chat_button = self.sidebar.chat_button
        self.send_button = self.composer.send_button

    def _show_connect_view(self, focus: bool = True) -> None:
        self._view_name = "connect"
        self.chat.grid_remove()
        self.panel.frame.grid(row=0, column=0, sticky="nsew")
        self.status.set("Pronto para conectar." if self.settings is None else "Desconectado.",
                        "offline")
        if focus:
            self._focus(self.panel.initial_focus())

    def _show_chat_view(self) -> None:
        self._view_name = "chat"
        self.panel.frame.grid_remove()
        self.chat.grid(row=0, column=0, sticky="nsew")

    @property
    def view_name(self) -> str:
        """``connect`` or ``chat``: which of the two faces the window shows."""
        return self._view_name

    def _focus(self, widget: tk.Widget) -> None:
        with contextlib.suppress(tk.TclError):
            widget.focus_set()

    def _bind_keys(self) -> None:
        master = self.master
        targets = (master, self.composer.text, self.sidebar.tree)
        for widget in targets:
            widget.bind("<Control-Tab>", lambda _e: self.cycle(1) or "break")
            bind_where_known(widget, ("<Control-Shift-Tab>", "<Control-ISO_Left_Tab>"),
                             lambda _e: self.cycle(-1) or "break")
            widget.bind("<Escape>", lambda _e: self.close_conversation() or "break")
            for number in range(1, 10):
                widget.bind(f"<Alt-Key-{number}>",
                            lambda _e, n=number: self.go_to(n) or "break")
        master.bind("<FocusIn>", self._on_window_focus, add="+")

    # -- titles, placeholders ------------------------------------------------

    def set_title(self) -> None:
        unread = self.store.total_unread
        title = f"Chat — {self.nick}" if self.nick and self._view_name == "chat" else APP_NAME
        if unread:
            title = f"({unread}) {title}"
        if title != self._title:
            self._title = title
            self.master.title(title)
            with contextlib.suppress(tk.TclError):  # Tk 8.7+: a badge on the icon
                self.master.tk.call("wm", "iconbadge", self.master, str(unread or ""))

    def placeholder_text(self) -> str:
        if not self.rooms and not self.online:
            return "Nenhuma conversa ainda."
        return ("Escolha uma sala ou uma pessoa à esquerda.\n"
                "Ctrl+Tab passa de uma conversa à outra.")

    def subtitle_for(self, conv: Conversation) -> str:
        if conv.is_room:
            count = len(conv.members)
            if not count:
                return "sala"
            names = ", ".join(conv.members[:6])
            more = f" e mais {count - 6}" if count > 6 else ""
            return f"{count} {'participante' if count == 1 else 'participantes'}: {names}{more}"
        if conv.key in self.online:
            return "online"
        return "offline · se tiver conta, recebe as mensagens quando voltar"

    # -- connecting ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    def discover_servers(self) -> None:
        """Procurar de novo: look for servers on the LAN (in the background)."""
        if self.discover is None:
            self.panel.show_servers([], searching=False)
            return
        host = self.address_var.get().strip()
        try:
            self._discovery = self.discover((host,) if host else ())
        except OSError as exc:
            log.warning("descoberta indisponível: %s", sessao.describe_os_error(exc))
            self._discovery = None
            self.panel.show_servers([], searching=False)
            return
        self.panel.show_servers([], searching=True)
        self._after("discovery", 100, self._check_discovery)

    def _check_discovery(self) -> None:
        search = self._discovery
        if search is None:
            return
        if not search.done():
            self._after("discovery", 100, self._check_discovery)
            return
        self._discovery = None
        try:
            servers = search.result(0)
        except Exception as exc:  # a failed search is an empty one, not a crash
            log.warning("falha na descoberta: %s", exc)
            servers = []
        self.panel.show_servers(list(servers), searching=False)
        if servers and self.address_var.get() == self._default_address:
            self.panel.choose_server(0)

    def connect(self) -> None:
        """Conectar: validate the form in one place, then connect in the background."""
        if self.session is not None or self._view_name != "connect":
            return
        settings, errors = validate_connect_form(
            self.address_var.get(), self.nick_var.get(), self.password_var.get(),
            self.tls_var.get())
        self.panel.set_errors(errors)
        if settings is None:
            first = next(name for name in ("servidor", "apelido", "senha") if name in errors)
            self._focus(self.panel.entries[first])
            return
        if self.settings is not None and (settings.host, settings.port, settings.nick) != (
                self.settings.host, self.settings.port, self.settings.nick):
            self._forget_everything()
        self._start(settings)

    def _start(self, settings: ConnectSettings) -> None:
        self.settings = settings
        session = self.session_factory()
        self.session = session
        self.panel.set_busy(True)
        secure = " com TLS" if settings.tls else ""
        self.status.set(f"Conectando a {format_host_port(settings.host, settings.port)}"
                        f"{secure}…", "waiting")
        # Back on the same server with the same name: the same rooms as before.
        rooms = tuple(self.rooms.values()) or (protocolo.DEFAULT_ROOM,)
        session.start(settings.host, settings.port, settings.nick, password=settings.password,
                      use_tls=settings.tls, tls_ca=self.tls_ca if settings.tls else None,
                      rooms=rooms)

    def connect_again(self) -> None:
        """Conectar (in the status bar, after the session ended): same server, name, password."""
        if self.session is None and self.settings is not None:
            self._start(self.settings)

    def disconnect(self) -> None:
        """Desconectar: leave the server and go back to the connect panel."""
        session, self.session = self.session, None
        if session is not None:
            session.close(wait=False)
        self._went_offline()
        self.panel.set_busy(False)
        self._show_connect_view()
        self.status.set("Desconectado.", "offline")
        self.set_title()

    def reconnect_now(self) -> None:
        if self.session is not None:
            self.session.reconnect_now()

    def cancel_reconnect(self) -> None:
        if self.session is not None:
            self.session.cancel_reconnect()

    def _forget_everything(self) -> None:
        """Another server or name: nothing of the last one carries over."""
        self.store.clear()
        self.rooms.clear()
        self.online.clear()
        self.sidebar.clear()
        self.current = None
        self.store.selected = None
        self.view.show(None)

    def _went_offline(self) -> None:
        """Nobody is known to be online while we are not connected."""
        for key in list(self.online):
            self.sidebar.mark(key)
        self.online.clear()
        self.sidebar.me_dot.configure(image=self.icons["offline"])
        self.view.update_header()

    # -- conversations -------------------------------------------------------

    def open_conversation(self, key: str, focus_input: bool = True) -> None:
        """Show the conversation ``key`` (a room this user is in, or a person)."""
        if self.current is not None:
            self.current.draft = self.composer.get()
        name = self.rooms.get(key) or self.online.get(key)
        conv = self.store.get(key)
        if conv is None:
            if name is None:
                return
            conv = self.store.ensure(name)
        self.store.conversations.move_to_end(key)
        self.current = conv
        self.store.selected = key
        if conv.unread:
            conv.unread = 0
            self.sidebar.mark(key)
        self.sidebar.select(key)
        self.view.show(conv)
        self.composer.set_target(conv)
        self.composer.set(conv.draft)
        if conv.history == "unknown":
            self._ask_history(conv, None, "first")
        if conv.is_room and self.connected:
            with contextlib.suppress(NotConnectedError, SendQueueFullError):
                self.session.members(conv.name)
        if focus_input:
            self._focus(self.composer.text)
        self.set_title()

    def close_conversation(self) -> None:
        """Esc: back to the placeholder; the conversation stays in the list."""
        if self.current is None:
            return
        self.current.draft = self.composer.get()
        self.current = None
        self.store.selected = None
        self.sidebar.select(None)
        self.view.show(None)
        self.composer.set("")
        self.composer.set_target(None)
        self._focus(self.sidebar.tree)

    def start_chat(self) -> None:
        """Iniciar Chat: open the selected person's (or room's) conversation, ready to type."""
        key = self.sidebar.selected()
        if key is None:
            self.flash("Selecione uma pessoa ou sala na lista.", error=True)
            return
        self.open_conversation(key, focus_input=True)

    def cycle(self, step: int) -> None:
        """Ctrl+Tab / Ctrl+Shift+Tab: the next or previous conversation in the list."""
        keys = self.sidebar.keys()
        if not keys:
            return
        current = self.current.key if self.current else None
        index = keys.index(current) + step if current in keys else (0 if step > 0 else -1)
        self.open_conversation(keys[index % len(keys)], focus_input=True)

    def go_to(self, number: int) -> None:
        """Alt+number: the n-th conversation in the list."""
        keys = self.sidebar.keys()
        if 1 <= number <= len(keys):
            self.open_conversation(keys[number - 1], focus_input=True)

    def _on_window_focus(self, _event: object) -> None:
        self._mark_current_read()

    def _mark_current_read(self) -> None:
        conv = self.current
        if conv is not None and conv.unread and self._window_has_focus() and self.view.at_bottom():
            conv.unread = 0
            self.sidebar.mark(conv.key)
            self.set_title()

    def _reading_current(self) -> bool:
        """Whether the user sees the newest lines of the current conversation.

        Asked for each message of a flood, and two Tk round trips each
        (focus, scroll position) were a third of the window's work: the answer
        is kept until the tick ends or an event other than a message comes
        (messages only change the pane when it is redrawn, after the tick).
        """
        if self._reading is None or not self._in_tick:
            self._reading = self._window_has_focus() and self.view.at_bottom()
        return self._reading

    def _window_has_focus(self) -> bool:
        """True when the keyboard focus is in this window (Tk says None when it is not ours)."""
        try:
            focus = self.master.focus_get()
            return focus is not None and focus.winfo_toplevel() is self.master
        except (tk.TclError, KeyError):
            return False

    # -- rooms -----------------------------------------------------------------

    def join_room(self) -> None:
        """Entrar: join (or create) the room typed in the sidebar."""
        name = self.room_var.get().strip()
        if name and not name.startswith("#"):
            name = "#" + name
        if not protocolo.valid_room(name):
            self.sidebar.room_error.configure(foreground="#ffb4a9")
            self.sidebar.room_error.set("Nome de sala: # e 1 a 32 letras, dígitos, _ - .")
            return
        self.sidebar.room_error.set("")
        if not self._request(lambda session: session.join(name)):
            return
        self.room_var.set("")
        self._joining = protocolo.room_key(name)

    def leave_room(self) -> None:
        conv = self.current
        if conv is not None and conv.is_room:
            self._request(lambda session: session.leave(conv.name))

    def refresh_rooms(self) -> None:
        """The combobox opens: ask which rooms exist."""
        self._request(lambda session: session.list_rooms(), quiet=True)

    def refresh_users(self) -> None:
        """Atualizar Lista: ask the server for the users and rooms again."""
        if self._request(lambda session: session.list_users()):
            self._refresh_asked = True
            self._request(lambda session: session.list_rooms(), quiet=True)

    def _request(self, make: Callable[[ChatSession], object], quiet: bool = False) -> bool:
        session = self.session
        try:
            if session is None:
                raise NotConnectedError
            make(session)
        except NotConnectedError:
            if not quiet:
                self.flash("Sem conexão com o servidor agora.", error=True)
            return False
        except SendQueueFullError:
            if not quiet:
                self.flash("O servidor não está recebendo pedidos agora. Tente de novo.",
                           error=True)
            return False
        return True

    # -- history ---------------------------------------------------------------

    def _ask_history(self, conv: Conversation, before: int | None, why: str,
                     page: int = 0) -> None:
        if not conv.is_room and not (self.session and self.session.account):
            conv.history = "done"  # the server keeps history only between accounts
            return
        session = self.session
        if session is None or not session.connected:
            return
        try:
            pending = session.history(conv.name, before, self.history_page)
        except (NotConnectedError, SendQueueFullError):
            return
        if why != "catch-up":
            conv.history = "loading"
        self._history_requests[pending.serial] = (conv.key, why, page)

    def load_older(self, conv: Conversation) -> None:
        """The user scrolled to the top: ask for the page before the oldest line."""
        if conv.history in ("more", "unknown") and conv.entries:
            self._ask_history(conv, conv.oldest_id, "older")
        elif conv.history == "unknown":
            self._ask_history(conv, None, "first")

    def _on_history(self, serial: int, result: object) -> None:
        key, why, page = self._history_requests.pop(serial, ("", "", 0))
        conv = self.store.get(key)
        if conv is None:
            return
        if not isinstance(result, HistoryPage):
            if why != "catch-up":
                conv.history = "done" if isinstance(result, protocolo.Error) else "more"
            return
        items = result.items
        if why == "catch-up":
            self._catch_up_page(conv, items, page)
            return
        added = self.store.add_history(conv, items)
        conv.history = "more" if items else "done"
        if conv is self.current:
            self.view.sync()
            if why == "older" and added == 0 and items:
                self.load_older(conv)

    def _catch_up_page(self, conv: Conversation, items: tuple, page: int) -> None:
        """After a reconnect: fill the room's gap, or start afresh if it is too big."""
        last, total = self._catch_up.get(conv.key, (0, 0))
        total += self.store.add_history(conv, items)
        # A gap: the page reaches back no further than what came before the loss.
        gap = bool(items) and items[0].message_id > last and last not in {
            item.message_id for item in items}
        if gap and page + 1 < CATCH_UP_PAGES:
            self._catch_up[conv.key] = (last, total)
            self._ask_history(conv, items[0].message_id, "catch-up", page + 1)
            return
        self._catch_up.pop(conv.key, None)
        if gap:  # too much was missed: keep the newest pages, page back for the rest
            oldest = items[0].message_id
            older = sum(1 for e in conv.entries if e.message_id is not None
                        and e.message_id < oldest)
            self.store.drop_oldest(conv, older)
            conv.history = "more"
        if total == 1:
            note = "Reconectado: 1 mensagem enviada enquanto você estava fora está acima."
        elif total:
            note = (f"Reconectado: {total} mensagens enviadas enquanto você estava fora "
                    "estão acima.")
        else:
            note = "Reconectado."
        self.store.add_notice(conv, note)
        if conv is self.current:
            self.view.sync()

    # -- sending -----------------------------------------------------------------

    def send_current(self) -> None:
        """Enviar (and Enter): every non-empty line of the box, in order; the box empties."""
        conv = self.current
        text = self.composer.get()
        self._focus(self.composer.text)
        if conv is None or not text.strip():
            return
        try:
            pieces = split_for_sending(conv.name, text)
        except ValueError as exc:
            self.composer.hint.set(str(exc))
            return
        self.composer.set("")
        conv.draft = ""
        for piece in pieces:
            self._send_piece(conv, piece)
        self.view.sync()
        self.view.text.see("end")

    def _send_piece(self, conv: Conversation, text: str) -> None:
        session = self.session
        try:
            if session is None:
                raise NotConnectedError
            pending = session.send_message(conv.name, text)
        except (NotConnectedError, SendQueueFullError, ValueError) as exc:
            if isinstance(exc, NotConnectedError):
                detail = "sem conexão: não enviada"
            elif isinstance(exc, SendQueueFullError):
                detail = "o servidor não está recebendo agora: não enviada"
            else:
                detail = f"não enviada: {exc}"
            _, entry = self.store.add_own(conv.name, text, next(self._local_serials))
            self.store.set_failed(entry.serial, UNSENT, detail)
            return
        self.store.add_own(conv.name, text, pending.serial)

    def resend(self, serial: int) -> None:
        """Reenviar: the unsent line goes again, as a new message at the end."""
        found = self.store.own_entry(serial)
        if found is None:
            return
        conv, entry = found
        self.store.drop_own(serial)
        self._send_piece(conv, entry.text)
        if conv is self.current:
            self.view.sync()

    # -- status texts ---------------------------------------------------------

    def flash(self, text: str, error: bool = False) -> None:
        """A passing message in the status bar; the connection state comes back after."""
        self.status.set(text, "error" if error else self.status.kind, self._status_buttons())
        self._after("flash", 4000, self._show_connection_state)

    def _status_buttons(self) -> tuple:
        session = self.session
        if session is None:
            return (self.status.connect_button,) if self.settings else ()
        if session.state == "waiting":
            return (self.status.reconnect_button, self.status.cancel_button)
        if session.state in ("opening", "registering") and self._view_name == "chat":
            return (self.status.cancel_button,)
        return (self.status.disconnect_button,) if self._view_name == "chat" else ()

    def _show_connection_state(self) -> None:
        session = self.session
        if session is None:
            if self._view_name == "chat":
                self.status.set(self._lost_message or "Desconectado.", "error",
                                self._status_buttons())
            return
        if session.connected:
            secure = " (TLS)" if session.tls else ""
            account = "" if session.account else " sem conta"
            self.status.set(f"Conectado como {self.nick}{account} a {session.address}{secure}.",
                            "online", self._status_buttons())
        elif session.state == "waiting":
            seconds = max(0, round(self._retry_at - time.monotonic()))
            self.status.set(f"{self._lost_message} Reconectando em {seconds} s…", "waiting",
                            self._status_buttons())
            self._after("countdown", 1000, self._show_connection_state)
        elif self._view_name == "chat":
            self.status.set(f"{self._lost_message} Reconectando…", "waiting",
                            self._status_buttons())

    def _after(self, name: str, delay_ms: int, callback: Callable[[], None]) -> None:
        old = self._tick_ids.pop(name, None)
        if old is not None:
            with contextlib.suppress(tk.TclError):
                self.master.after_cancel(old)

        def run() -> None:
            self._tick_ids.pop(name, None)
            callback()

        self._tick_ids[name] = self.master.after(delay_ms, run)

    # -- the queue ------------------------------------------------------------

    def _poll(self) -> None:
        """Take session events in bounded batches, then redraw what changed."""
        self._poll_id = None
        if self._quit_requested:
            self.close()
            return
        self._reading, self._in_tick = None, True
        try:
            busy = self._take_events(time.monotonic())
        finally:
            self._in_tick = False
        self._after_events()
        busy = busy or self.sidebar.pending > 0
        self._poll_id = self.master.after(1 if busy else POLL_MS, self._poll)

    def _take_events(self, started: float) -> bool:
        """Dispatch queued events until the queue is empty or the tick's budget is spent.

        True when more may be coming soon: the budget ran out, or events came
        at all (in a burst the session is still reading the rest, and waiting
        ``POLL_MS`` for it after every batch would make the burst idle most
        of its time). The budget is in time *and* events: drawing the lines
        costs more than taking them, after the dispatch.
        """
        session = self.session
        taken = 0
        while session is not None and session is self.session:
            events = session.events.take(EVENTS_PER_TAKE)
            for event in events:
                try:
                    self._dispatch(event)
                except tk.TclError:
                    log.exception("erro ao mostrar o evento %s", type(event).__name__)
            taken += len(events)
            if len(events) < EVENTS_PER_TAKE:
                break
            if taken >= EVENTS_PER_TICK or time.monotonic() - started > TICK_BUDGET:
                break
        return taken > 0

    def _after_events(self) -> None:
        for key in self.store.evicted:
            self.sidebar.mark(key)
        self.store.evicted.clear()
        self.view.sync()
        self.sidebar.sync()
        self._mark_current_read()
        self.set_title()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, protocolo.Message):
            self._on_message(event)
            return
        self._reading = None  # anything else may change what the user sees
        if isinstance(event, Reply):
            self._on_reply(event)
        elif isinstance(event, protocolo.Joined | protocolo.Left):
            self._on_presence(event)
        elif isinstance(event, protocolo.Delivered):
            found = self.store.set_delivered(event.message_id)
            if found is not None and found[0] is self.current:
                self.view.update_status(found[1])
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, ConnectFailed):
            self._on_connect_failed(event)
        elif isinstance(event, Disconnected):
            self._on_disconnected(event)
        elif isinstance(event, Reconnecting):
            self._show_connection_state()

    def _on_connected(self, event: Connected) -> None:
        self.nick = event.nick
        self.store.me = event.nick
        self.sidebar.me_label.configure(text=event.nick)
        self.sidebar.me_dot.configure(image=self.icons["online"])
        self.sidebar.server_label.configure(text=event.address + (" · TLS" if event.tls else ""))
        self.panel.set_busy(False)
        self.password_var.set("")  # kept by the session for reconnecting, not by the form
        self._lost_message = ""
        if not event.reconnected:
            self._auto_open = True
            self._show_chat_view()
            self.view.show(self.current)
            self.composer.set_target(self.current)
            self._focus(self.composer.text if self.current else self.sidebar.tree)
        else:
            for key in list(self.rooms):
                conv = self.store.get(key)
                if conv is not None and conv.history != "unknown":
                    self._catch_up[key] = (conv.newest_id or 0, 0)
                    self._ask_history(conv, None, "catch-up")
                elif conv is not None:
                    self.store.add_notice(conv, "Reconectado.")
            for conv in self.store.conversations.values():
                if not conv.is_room:
                    self.store.add_notice(conv, "Reconectado.")
        self._show_connection_state()
        self.set_title()

    def _on_connect_failed(self, event: ConnectFailed) -> None:
        self.session = None
        self.panel.set_busy(False)
        if self._view_name != "connect":
            self._show_connect_view(focus=False)
            if self.settings is not None and not self.password_var.get():
                self.password_var.set(self.settings.password or "")  # a retry is one click
        self.panel.set_errors({event.field: event.message})
        self.status.set("Não foi possível conectar.", "error")
        self._focus(self.panel.entries.get(event.field, self.panel.address_entry))

    def _on_disconnected(self, event: Disconnected) -> None:
        self._went_offline()
        if event.retry_in is not None:
            first = not self._lost_message
            self._lost_message = event.message if event.message.endswith((".", "?", "!")) else (
                event.message + ".")
            self._retry_at = time.monotonic() + event.retry_in
            if first:
                for conv in list(self.store.conversations.values()):
                    self.store.add_notice(conv, "Conexão com o servidor perdida. Reconectando…",
                                          error=True)
            self._show_connection_state()
            return
        # The session has ended.
        self.session = None
        if event.by_user and self._view_name == "connect":
            return
        self._lost_message = event.message
        self.status.set(event.message if not event.by_user else "Desconectado. "
                        "Clique em Conectar para voltar.", "offline" if event.by_user
                        else "error", self._status_buttons())

    def _on_message(self, message: protocolo.Message) -> None:
        self.received += 1
        added = self.store.add_incoming(message)
        if added is None:
            return
        conv, entry = added
        sender_key = protocolo.nick_key(message.sender)
        if not protocolo.is_room(message.target) and not entry.own:
            if sender_key not in self.online:
                self.online[sender_key] = message.sender  # it is online right now
            self.sidebar.mark(sender_key)
        if entry.own:
            return
        if not (conv is self.current and self._reading_current()):
            conv.unread += 1
            self.sidebar.mark(conv.key)
            self._ring(conv)

    def _ring(self, conv: Conversation) -> None:
        """The bell, when allowed and not too often (the title counts every message)."""
        now = time.monotonic()
        if not self.sound or now - self._last_bell < BELL_INTERVAL:
            return
        if conv.is_room and conv is not self.current and conv.unread > 1:
            return  # a busy room rings once, not on every line
        self._last_bell = now
        self.bells += 1
        with contextlib.suppress(tk.TclError):
            self.master.bell()

    def _on_presence(self, event: protocolo.Joined | protocolo.Left) -> None:
        key = protocolo.nick_key(event.nick)
        if event.room is not None:
            conv = self.store.get(protocolo.room_key(event.room))
            if conv is not None:
                members = [name for name in conv.members if protocolo.nick_key(name) != key]
                if isinstance(event, protocolo.Joined):
                    members.append(event.nick)
                conv.members = tuple(sorted(members, key=protocolo.nick_key))
                if conv is self.current:
                    self.view.update_header()
            return
        if isinstance(event, protocolo.Joined):
            self.online[key] = event.nick
        else:
            self.online.pop(key, None)
        self.sidebar.mark(key)
        if self.current is not None and self.current.key == key:
            self.view.update_header()

    def _on_reply(self, event: Reply) -> None:
        request, result = event.request, event.result
        if isinstance(request, protocolo.Send):
            self._on_send_reply(event)
        elif isinstance(request, protocolo.History):
            self._on_history(event.serial, result)
        elif isinstance(request, protocolo.ListUsers) and isinstance(result, UserList):
            old = set(self.online)
            me = protocolo.nick_key(self.nick)
            self.online = {protocolo.nick_key(n): n for n in result.nicks
                           if protocolo.nick_key(n) != me}
            for key in old | set(self.online):
                self.sidebar.mark(key)
            self.view.update_header()
            if self._refresh_asked:
                self._refresh_asked = False
                self.flash(f"Lista atualizada às {time.strftime('%H:%M')}.")
            if self.current is None:
                self.view.show(None)  # the placeholder's text depends on the lists
        elif isinstance(request, protocolo.Members) and isinstance(result, UserList):
            conv = self.store.get(protocolo.room_key(request.room))
            if conv is not None:
                conv.members = tuple(sorted(result.nicks, key=protocolo.nick_key))
                if conv is self.current:
                    self.view.update_header()
        elif isinstance(request, protocolo.ListRooms) and isinstance(result, RoomList):
            self.sidebar.room_entry.configure(values=[room.room for room in result.rooms])
        elif isinstance(request, protocolo.Join):
            self._on_join_reply(request.room, result)
        elif isinstance(request, protocolo.Leave) and not isinstance(result, Lost):
            key = protocolo.room_key(request.room)
            self.rooms.pop(key, None)
            self.sidebar.mark(key)
            if self.current is not None and self.current.key == key:
                self.close_conversation()
            self.store.remove(key)

    def _on_join_reply(self, room: str, result: object) -> None:
        key = protocolo.room_key(room)
        if isinstance(result, protocolo.Ok):
            self.rooms[key] = room
            self.sidebar.mark(key)
            self.sidebar.sync()
            if self._joining == key:  # the user asked: show it, ready to type
                self._joining = None
                self.open_conversation(key, focus_input=True)
            elif self._auto_open and self.current is None:
                # The first room after Conectar; the focus moves only if it is still
                # where connecting left it.
                self._auto_open = False
                self.open_conversation(key, focus_input=self._focus_in_chat_idle())
        elif isinstance(result, protocolo.Error):
            text = ("Você já está no máximo de salas." if result.code is ErrorCode.LIMITE
                    else "Nome de sala inválido." if result.code is ErrorCode.SALA_INVALIDA
                    else f"Não foi possível entrar em {room}.")
            self.sidebar.room_error.configure(foreground="#ffb4a9")
            self.sidebar.room_error.set(text)

    def _focus_in_chat_idle(self) -> bool:
        """True when moving the focus to the message box cannot take anything from the user."""
        try:
            focus = self.master.focus_get()
        except (tk.TclError, KeyError):
            return False
        return (focus is None or focus is self.sidebar.tree
                or str(focus).startswith(str(self.panel.frame) + "."))

    def expects_receipts(self, conv: Conversation | None) -> bool:
        """Whether ✓✓ can come for own messages in ``conv`` (direct, between accounts)."""
        return (conv is not None and not conv.is_room and self.session is not None
                and self.session.account)

    def _on_send_reply(self, event: Reply) -> None:
        result = event.result
        found = self.store.own_entry(event.serial)
        if found is None:
            return
        conv, entry = found
        if isinstance(result, protocolo.OkMessage):
            waiting = not conv.is_room and conv.key not in self.online
            if self.store.set_stored(event.serial, result.message_id, result.time_ms,
                                     waiting) is None:
                return  # a copy came with the history first; the pane redraws
        elif isinstance(result, protocolo.Ok):  # a version-1 answer: stored, no id
            entry.status = STORED
        elif isinstance(result, Lost):
            self.store.set_failed(event.serial, UNSENT, "não enviada (a conexão caiu)")
        else:
            self.store.set_failed(event.serial, REFUSED,
                                  sessao.describe_send_error(result, event.request.target))
        if conv is self.current:
            self.view.update_status(entry)

    # -- closing -------------------------------------------------------------

    def request_quit(self) -> None:
        """Ask for a clean exit from any context (e.g. a signal handler)."""
        self._quit_requested = True

    def close(self) -> None:
        """The X button: leave the server (bounded), stop everything, destroy the window."""
        if self._closed:
            return
        self._closed = True
        if self._poll_id is not None:
            with contextlib.suppress(tk.TclError):
                self.master.after_cancel(self._poll_id)
            self._poll_id = None
        for after_id in self._tick_ids.values():
            with contextlib.suppress(tk.TclError):
                self.master.after_cancel(after_id)
        self._tick_ids.clear()
        self.view.cancel()
        # Hide first: waiting for the server to confirm SAIR must not look like a freeze.
        with contextlib.suppress(tk.TclError):
            self.master.withdraw()
            self.master.update_idletasks()
        session, self.session = self.session, None
        if session is not None:
            session.close(wait=True)
        with contextlib.suppress(tk.TclError):
            self.master.destroy()
        self._release_tk_objects()

    def _release_tk_objects(self) -> None:
        """Free this window's images, fonts and variables now, in Tk's thread.

        Otherwise they go whenever the garbage collector finds them, maybe
        in another thread, where tkinter's clean-up waits up to a second per
        object for Tk's loop (and then fails): a closed window would stall
        whatever thread collects it.
        """
        for image in self.icons.values():
            with contextlib.suppress(tk.TclError):
                image.tk.call("image", "delete", image.name)
            image.name = ""  # nothing left for Image.__del__ to do
        for font in self.fonts.values():
            with contextlib.suppress(tk.TclError):
                font._call("font", "delete", font.name)
            font.delete_font = False
        for variable in (self.address_var, self.nick_var, self.password_var, self.tls_var,
                         self.room_var):
            with contextlib.suppress(tk.TclError):
                variable._tk.globalunsetvar(variable._name)
            variable._tk = None  # Variable.__del__ returns at once

    @property
    def closed(self) -> bool:
        return self._closed


# --------------------------------------------------------------------------
# Command line, in Portuguese (argumentos.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argumentos.PortugueseArgumentParser(
        prog="chat-cliente",
        description="Cliente gráfico do chat em rede local: salas, conversas diretas, "
                    "histórico e confirmação de entrega.",
        epilog="A janela procura os servidores da rede local (broadcast UDP) e mostra os que "
               "responderem; se o endereço não foi dado, o primeiro encontrado já vem escolhido.")
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="SERVIDOR",
                        help="servidor: endereço IPv4, IPv6 ou nome; aceita host:porta e "
                             f"[ipv6]:porta (padrão: {DEFAULT_HOST})")
    parser.add_argument("--port", type=_port, default=None, metavar="PORTA",
                        help=f"porta do servidor (padrão: {protocolo.DEFAULT_PORT})")
    parser.add_argument("--apelido", default="", help="apelido a usar no chat")
    parser.add_argument("--conectar", action="store_true",
                        help="conectar assim que a janela abrir (sem senha)")
    parser.add_argument("--tls", action="store_true",
                        help="conectar com TLS, verificando o certificado do servidor")
    parser.add_argument("--tls-ca", metavar="CA",
                        help="certificado (PEM) da autoridade que assina o do servidor; "
                             "implica --tls (padrão: as autoridades do sistema)")
    parser.add_argument("--sem-som", action="store_true",
                        help="não tocar o aviso sonoro quando chega mensagem")
    parser.add_argument("--sem-descoberta", action="store_true",
                        help="não procurar servidores por broadcast na rede local (o endereço "
                             "digitado ainda é consultado)")
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdecimal() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"porta inválida: {text!r} (use um número de 1 a "
                                         "65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 cliente.py`` and of the ``chat-cliente`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_host_port(args.host, args.port or protocolo.DEFAULT_PORT)
    except ValueError as exc:
        parser.error(f"--host: {exc}")
    if args.port:
        port = args.port
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if tk is None:
        print("erro: o tkinter não está instalado (no Debian/Ubuntu: apt install python3-tk)",
              file=sys.stderr)
        return 1
    try:
        root = tk.Tk(className=WM_CLASS)
    except tk.TclError as exc:
        print(f"erro: não foi possível abrir a janela ({exc}). A variável DISPLAY está "
              "definida?", file=sys.stderr)
        return 1
    app = ChatApp(root, host=host, port=port, nick=args.apelido, use_tls=args.tls,
                  tls_ca=args.tls_ca, sound=not args.sem_som,
                  discover=typed_address_only if args.sem_descoberta else default_discovery)

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
