"""The message store: messages, delivery cursors, receipts and accounts in SQLite.

Theory of operation
===================

One SQLite file (by default ``default_data_path()``) holds everything the
server must not lose. ``Store`` is a plain object, with no sockets and one
thread of its own (the checkpointer, below), safe to call from any number
of server threads:

* **Writes** (appends, cursors, receipts, accounts) go through ONE write
  connection guarded by a lock, each inside an explicit ``BEGIN IMMEDIATE``
  transaction that is committed before the method returns. The lock is held
  only for the SQL it guards.
* **Reads** (history, pending messages, account look-ups) borrow a
  connection from a small bounded pool (``READ_POOL_SIZE``), so they run
  while a write is in progress.
* **Checkpoints** (copying the ``-wal`` into the database file) run on a
  thread of their own with a connection of their own (``_Checkpointer``),
  not inside a commit as SQLite does by default: a commit then never waits
  for megabytes to be copied, and a message's ``OK`` with it.

Why WAL: in write-ahead-log mode readers never block the writer nor the
writer the readers, and a commit is one sequential append to the ``-wal``
file. With ``synchronous=NORMAL`` (the default) a committed transaction
survives the process being killed at any moment (the data is in the
operating system's cache, which the kernel writes out); with ``fsync=True``
(``synchronous=FULL``) every commit is flushed to the disk and survives a
power cut too, at the price of one fsync per commit. What NORMAL does not
survive is the machine or the disk failing: when the kernel turned an ext4
file system read-only after an error, the pages it had not written yet were
gone, and with them the last acknowledged messages; with fsync=True all of
them were there (``tests/test_armazem.py`` checks the latter).

Measured with ``bench/armazem.py`` (2 cores, SQLite 3.40): one commit of
32 messages takes 0.16 ms (0.5 ms with fsync); the 500 newest rows of a
room or a conversation among 1,000,000 messages 1.6-2.4 ms;
``pending_count`` with 10,000 messages waiting 0.8 ms.

Schema (version ``len(MIGRATIONS)``, kept in ``PRAGMA user_version``; the
file is marked with ``PRAGMA application_id`` = ``APPLICATION_ID``):

* ``messages``: one row per accepted message. ``id`` is an AUTOINCREMENT
  key, so ids are never reused even after retention deletes old rows.
  ``conversation`` is the room's key for a room message and
  ``"<key>\\n<key>"`` (the two nickname keys, sorted) for a direct message,
  so both kinds of history are one index range (``messages_by_conversation``);
  SQLite computes it (a generated column), which keeps the insert cheap.
  ``to_account`` marks a direct message whose recipient had an account when
  it was sent: only those can be *pending*, so only those enter the
  pending index -- chat between nicknames without accounts costs one index
  less per message. ``receipt`` is the state of the delivery receipt: none,
  awaited, due, sent.
* ``accounts``: nickname key, nickname as shown, the password record (a
  salted scrypt hash, never the password), creation time, ``first_id``
  (the newest message id when the account was created) and ``received_id``,
  the delivery cursor.

Cursors and receipts: an account has received every direct message
addressed to it with ``id <= received_id``; the others are *pending*.
``mark_received`` moves the cursor forward only. A message stored with
``wants_receipt`` waits in state *awaited*; when the recipient's cursor
passes it, it becomes *due* for its sender, and ``mark_receipts_sent``
records that the ``ENTREGUE`` went out, so each receipt is delivered once.

An account owns what happened after it was created, never before: its
cursor starts at the newest id (older messages are not pending for it),
the direct-message history it reads starts at ``first_id``, and receipts
are due only to a sender account that existed when the message was sent.
So a nickname whose account was removed and created again by someone else
never exposes the previous owner's conversations or receipts.

Retention: ``prune()`` deletes messages older than ``retention_days`` (0 =
keep everything), except direct messages still pending for an existing
account and messages whose receipt is still due to an existing sender.
The server calls it when it sees fit (at start, then now and then); it
deletes in short transactions, so appends go on meanwhile.

Faults: every failure of SQLite or of the disk becomes ``StoreError``
(with a short Portuguese sentence for the logs) and a failed write leaves
nothing behind: the transaction is rolled back and what was committed
before stays intact. Before each commit the store checks that the data
file is still the one it opened; a deleted or replaced file makes every
later write fail instead of writing to a file nobody will ever read.
``Store.open`` refuses, with ``StoreCorruptError``, a file that is not a
chat database, without writing a byte to it.

What the administrator can read: the file holds message texts, nicknames
and times **in clear** (only passwords are hashed). Whoever can read the
file (the server's user, root) can read every message; the file is created
with mode 0600 in a directory with mode 0700.

Passwords: ``hashlib.scrypt`` with N = 2**14, r = 8, p = 1 (16 MiB of memory,
the scrypt paper's parameters for interactive logins), a 16-byte random salt
and a 32-byte hash. Measured on the project's machine (2 cores): median of
10 hashes = 48 ms. The record names its parameters, so they can change
later and old records still verify.

``MemoryStore`` is the ``--efemero`` variant: nothing on disk, no accounts,
only bounded recent room history.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import ntpath
import os
import posixpath
import secrets
import sqlite3
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import argumentos
import protocolo

log = logging.getLogger("armazem")

# --------------------------------------------------------------------------
# Constants

APP_DIRECTORY = "chat-redes"
DATA_FILE_NAME = "chat.sqlite3"
APPLICATION_ID = 0x43484154
"""``PRAGMA application_id`` of a chat database ("CHAT" in ASCII)."""
READ_POOL_SIZE = 4
"""Read connections, opened with the store; a fifth concurrent reader waits for one."""
READ_POOL_WAIT_S = 30.0
"""How long a reader waits for a free read connection before giving up."""
BUSY_TIMEOUT_MS = 5000
"""How long SQLite waits for a lock held by another process (the CLI, a reader)."""
JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
"""The -wal file is cut back to this size after a checkpoint."""
CHECKPOINT_INTERVAL_S = 0.05
"""The background checkpoint runs at most this often, and only after writes.

Short, so each catch-up (below) has little to copy and little to flush:
measured at P=100, 0.25 s with 16,000 frames stalled writes for tens of ms
(busy p99 35 -> 65-71 ms), 0.05 s with 4,000 did not (see bench/README.md)."""
CHECKPOINT_CATCH_UP_FRAMES = 4000
"""Past this many -wal frames (~16 MB), the checkpointer holds writes while it copies the rest.

Under steady writes each background checkpoint ends with new frames behind
it, so the -wal never starts over and would grow without end; this bounds
it. The frames before were already copied, so writes wait only for the few
written during the last background pass."""
CHECKPOINT_STOP_WAIT_S = 10.0
"""How long closing the store waits for a checkpoint in progress."""
PRUNE_CHUNK_IDS = 10_000
"""Retention deletes this many ids per transaction, so appends interleave."""
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
ROOM_HISTORY_LIMIT = 1000
"""Room messages a ``MemoryStore`` keeps per room."""
MAX_MEMORY_ROOMS = 1000
"""Rooms a ``MemoryStore`` keeps history for (least recently written dropped)."""
_MAX_ID = 2**63 - 1
_MS_PER_DAY = 86_400_000
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_HEADER_BYTES = 100

# The ``receipt`` column. Literal in the schema's partial index (a released
# migration never changes), named everywhere else.
RECEIPT_NONE = 0
RECEIPT_AWAITED = 1
RECEIPT_DUE = 2
RECEIPT_SENT = 3

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
SCRYPT_DKLEN = 32
SCRYPT_MAXMEM = 64 * 1024 * 1024
"""Explicit memory bound for scrypt (N = 2**14, r = 8 needs 16 MiB)."""
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAX_R = 32
_SCRYPT_MAX_P = 16
_SCRYPT_MAX_DKLEN = 128
_SCRYPT_MAX_COST = 256 * 1024 * 1024
"""A record asking for more memory than this is refused as malformed."""


# --------------------------------------------------------------------------
# Errors and values


class StoreError(Exception):
    """The store could not do it (disk full, read-only, file removed, I/O error).

    ``str()`` is a short Portuguese sentence fit for a log line; the SQLite or
    OS error, when there is one, is chained as ``__cause__``.
    """


class StoreCorruptError(StoreError):
    """``Store.open`` found a file that is not a usable chat database.

    The file is left byte for byte as it was: nothing is repaired.
    """


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message the server accepted and wants stored (keys computed by the caller)."""

    sender_key: str
    sender: str
    target_key: str
    target: str
    text: str = field(repr=False)  # message contents never reach a log through repr()
    room: bool
    wants_receipt: bool
    to_account: bool = True
    """For a direct message: its recipient has an account (the message may wait for it)."""


@dataclass(frozen=True, slots=True)
class PreparedMessages:
    """Messages ready to be written (``Store.prepare``): their count, time and row values."""

    count: int
    time_ms: int
    values: list = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its id and acceptance time (UTC epoch ms) included."""

    id: int
    time_ms: int
    sender: str
    target: str
    text: str = field(repr=False)
    sender_key: str
    target_key: str
    room: bool


@dataclass(frozen=True, slots=True)
class Receipt:
    """An ``ENTREGUE`` due to ``sender_key``: ``recipient`` got message ``message_id``."""

    message_id: int
    sender_key: str
    recipient: str


@dataclass(frozen=True, slots=True)
class Account:
    """An account, without its password record (see ``Store.password_record``).

    ``first_id`` is the newest message id when the account was created: the
    account's direct-message history starts after it.
    """

    key: str
    nick: str
    created_ms: int
    received_id: int
    first_id: int = 0


class MessageStore(Protocol):
    """What the server needs from a store: ``Store`` and ``MemoryStore`` both fit."""

    durable: bool
    accounts_enabled: bool
    path: str | None

    def append_messages(self, messages: Sequence[NewMessage]) -> list[tuple[int, int]]: ...
    def prepare(self, messages: Sequence[NewMessage]) -> PreparedMessages: ...
    def write(self, prepared: PreparedMessages) -> list[tuple[int, int]]: ...
    def pending_messages(self, account_key: str, after_id: int = 0,
                         limit: int = 200) -> list[StoredMessage]: ...
    def pending_count(self, account_key: str) -> int: ...
    def newest_id(self) -> int: ...
    def mark_received(self, account_key: str, up_to_id: int) -> list[Receipt]: ...
    def receipts_due(self, sender_key: str, limit: int = 500) -> list[Receipt]: ...
    def mark_receipts_sent(self, message_ids: Sequence[int]) -> None: ...
    def history_room(self, room_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]: ...
    def history_pair(self, a_key: str, b_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]: ...
    def get_account(self, key: str) -> Account | None: ...
    def password_record(self, key: str) -> str | None: ...
    def create_account(self, key: str, nick: str, password_record: str) -> bool: ...
    def set_password_record(self, key: str, record: str) -> bool: ...
    def list_accounts(self) -> list[Account]: ...
    def remove_account(self, key: str) -> bool: ...
    def prune(self) -> int: ...
    def close(self) -> None: ...


def conversation_key(message_target_key: str, sender_key: str, room: bool) -> str:
    """The ``conversation`` column: the room's key, or the two nickname keys sorted."""
    if room:
        return message_target_key
    first, second = sorted((sender_key, message_target_key))
    return f"{first}\n{second}"


# --------------------------------------------------------------------------
# Where the data lives


def default_data_path(platform: str = sys.platform, environ: Mapping[str, str] = os.environ,
                      home: str | None = None) -> str:
    """The platform's per-user data directory + ``chat-redes/chat.sqlite3``.

    Linux and others: ``$XDG_DATA_HOME`` (when absolute, as the XDG spec
    asks) or ``~/.local/share``; Windows: ``%APPDATA%`` or
    ``~/AppData/Roaming``; macOS: ``~/Library/Application Support``.
    Pure: it creates nothing (``Store.open`` does).
    """
    if home is None:
        home = os.path.expanduser("~")
    if platform == "win32":
        base = environ.get("APPDATA") or ntpath.join(home, "AppData", "Roaming")
        return ntpath.join(base, APP_DIRECTORY, DATA_FILE_NAME)
    if platform == "darwin":
        base = posixpath.join(home, "Library", "Application Support")
    else:
        xdg = environ.get("XDG_DATA_HOME", "")
        base = xdg if posixpath.isabs(xdg) else posixpath.join(home, ".local", "share")
    return posixpath.join(base, APP_DIRECTORY, DATA_FILE_NAME)


def _make_private_directories(directory: str) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700."""
    missing = []
    current = directory
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIRECTORY_MODE)


# --------------------------------------------------------------------------
# Schema and migrations

_SCHEMA_V1 = (
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        sender_key TEXT NOT NULL,
        sender TEXT NOT NULL,
        target_key TEXT NOT NULL,
        target TEXT NOT NULL,
        text TEXT NOT NULL,
        room INTEGER NOT NULL,
        to_account INTEGER NOT NULL,
        receipt INTEGER NOT NULL DEFAULT 0,
        conversation TEXT GENERATED ALWAYS AS (CASE
            WHEN room THEN target_key
            WHEN sender_key < target_key THEN sender_key || char(10) || target_key
            ELSE target_key || char(10) || sender_key END) VIRTUAL
    )""",
    # Room history and direct-message history: one range of this index each.
    "CREATE INDEX messages_by_conversation ON messages(conversation, id)",
    # Pending messages of an account and the receipts its cursor makes due.
    "CREATE INDEX messages_pending ON messages(target_key, id) WHERE to_account = 1",
    # Receipts due to a sender: a small index, rows leave it once sent.
    "CREATE INDEX messages_receipt_due ON messages(sender_key, id) WHERE receipt = 2",
    """CREATE TABLE accounts (
        key TEXT PRIMARY KEY,
        nick TEXT NOT NULL,
        password_record TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        first_id INTEGER NOT NULL,
        received_id INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    """Version 1: the first schema."""
    for statement in _SCHEMA_V1:
        conn.execute(statement)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_v1]
"""Step i (0-based) takes a database from user_version i to i + 1.

Append a step to change the schema; never edit a released one. Steps run in
order inside one transaction, so a failed migration leaves the old version.
"""

_REQUIRED_TABLES = frozenset({"messages", "accounts"})
MIN_SQLITE = (3, 31, 0)
"""Generated columns (``conversation``) need SQLite 3.31 (2020); Python 3.10+ ships newer."""


def schema_version() -> int:
    """The schema version this code writes: the number of migration steps."""
    return len(MIGRATIONS)


def _apply_migrations(conn: sqlite3.Connection, path: str) -> None:
    """Bring the database to ``schema_version()`` in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_version(version, path)
        if version < schema_version():
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version = {schema_version():d}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            log.info("esquema do armazenamento atualizado da versão %d para a %d",
                     version, schema_version())
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _check_version(version: int, path: str) -> None:
    if version > schema_version():
        raise StoreCorruptError(
            f"o arquivo de dados {path} foi criado por uma versão mais nova do servidor "
            f"(esquema {version}; esta versão conhece até o {schema_version()})")


# --------------------------------------------------------------------------
# Opening a file without touching it


def _corrupt(path: str, why: str) -> StoreCorruptError:
    return StoreCorruptError(f"o arquivo {path} não é um banco de dados do chat utilizável: {why}")


def _read_header(path: str) -> tuple[bytes, int]:
    """The first 100 bytes of ``path`` and its size (``StoreError`` if unreadable)."""
    try:
        with open(path, "rb") as data_file:
            size = os.fstat(data_file.fileno()).st_size
            return data_file.read(_SQLITE_HEADER_BYTES), size
    except OSError as exc:
        raise StoreError(f"não foi possível ler o arquivo de dados {path}: {exc.strerror}") \
            from exc


def _check_header(path: str, header: bytes, size: int, wal_present: bool) -> None:
    """Refuse what is plainly not an intact SQLite file, from its header alone."""
    if len(header) < _SQLITE_HEADER_BYTES or not header.startswith(_SQLITE_MAGIC):
        raise _corrupt(path, "conteúdo não reconhecido")
    page_size = int.from_bytes(header[16:18], "big")
    if page_size == 1:
        page_size = 65536
    if page_size < 512 or page_size & (page_size - 1):
        raise _corrupt(path, "cabeçalho inválido")
    if size % page_size:
        raise _corrupt(path, "arquivo truncado")
    change_counter = header[24:28]
    pages = int.from_bytes(header[28:32], "big")
    # While a -wal file exists, a checkpoint may have been interrupted after
    # writing page 1: the main file can then be shorter than its header says.
    if not wal_present and header[92:96] == change_counter and pages * page_size > size:
        raise _corrupt(path, "arquivo truncado")


def _inspect_schema(conn: sqlite3.Connection, path: str) -> int:
    """Check that ``conn``'s database is a chat database; return its user_version.

    0 means an empty database (to be initialised). Anything else that is
    not ours, or not intact enough to read, raises ``StoreCorruptError``.
    """
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and application_id == 0 and not tables:
            return 0
        if application_id != APPLICATION_ID or version < 1:
            raise _corrupt(path, "pertence a outro programa")
        _check_version(version, path)
        if not tables >= _REQUIRED_TABLES:
            raise _corrupt(path, "faltam tabelas do chat")
        # Touch the root and the newest pages of each table.
        conn.execute("SELECT max(id) FROM messages").fetchone()
        conn.execute("SELECT count(*) FROM accounts").fetchone()
        return version
    except sqlite3.DatabaseError as exc:
        raise _corrupt(path, "conteúdo danificado") from exc


def _validate_existing(path: str) -> None:
    """Refuse a non-empty file that is not a usable chat database, writing nothing.

    With no ``-wal`` file the main file is the whole database and is read
    with ``immutable=1`` (no locks, no -wal/-shm created). With a -wal file
    (a server has it open, or crashed) a read-only connection reads both;
    the side files exist already.
    """
    header, size = _read_header(path)
    if size == 0:
        return
    wal_present = os.path.exists(path + "-wal")
    _check_header(path, header, size, wal_present)
    options = "mode=ro" if wal_present else "immutable=1"
    try:
        conn = sqlite3.connect(f"{_file_uri(path)}?{options}", uri=True,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"não foi possível abrir o arquivo de dados {path}") from exc
    try:
        _inspect_schema(conn, path)
    finally:
        conn.close()


def _file_uri(path: str) -> str:
    """An SQLite ``file:`` URI for an absolute path (quoting what URIs reserve)."""
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    if os.name == "nt":
        quoted = "/" + quoted.replace("\\", "/")
    return f"file:{quoted}"


def _create_empty_file(path: str) -> None:
    """Create the data file with mode 0600 (and its directories with 0700)."""
    try:
        _make_private_directories(os.path.dirname(path))
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        os.close(fd)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"não foi possível criar o arquivo de dados {path}: "
                         f"{exc.strerror}") from exc


# --------------------------------------------------------------------------
# SQLite errors in Portuguese

_ERROR_TEXTS = {
    "SQLITE_FULL": "disco cheio: o armazenamento não aceitou a gravação",
    "SQLITE_READONLY": "armazenamento somente leitura: não foi possível gravar",
    "SQLITE_IOERR": "erro de entrada/saída no armazenamento",
    "SQLITE_BUSY": "armazenamento ocupado por outro processo",
    "SQLITE_LOCKED": "armazenamento ocupado por outro processo",
    "SQLITE_CORRUPT": "arquivo de dados danificado",
    "SQLITE_NOTADB": "arquivo de dados danificado",
    "SQLITE_CANTOPEN": "não foi possível abrir o arquivo de dados",
}
_ERROR_MESSAGES = (  # for Python < 3.11, which has no sqlite_errorname
    ("disk is full", "SQLITE_FULL"),
    ("readonly", "SQLITE_READONLY"),
    ("i/o error", "SQLITE_IOERR"),
    ("locked", "SQLITE_BUSY"),
    ("malformed", "SQLITE_CORRUPT"),
    ("not a database", "SQLITE_NOTADB"),
    ("unable to open", "SQLITE_CANTOPEN"),
)


def _error_name(exc: sqlite3.Error) -> str:
    """SQLite's primary error name for ``exc`` (e.g. ``SQLITE_FULL``)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return "_".join(name.split("_")[:2])
    message = str(exc).lower()
    for fragment, guessed in _ERROR_MESSAGES:
        if fragment in message:
            return guessed
    return "SQLITE_ERROR"


def _store_error(exc: sqlite3.Error) -> StoreError:
    """A ``StoreError`` for ``exc``, chained to it."""
    name = _error_name(exc)
    error = StoreError(_ERROR_TEXTS.get(name, "falha no armazenamento"))
    error.__cause__ = exc
    return error


# --------------------------------------------------------------------------
# The checkpointer


class _Checkpointer:
    """Copies the ``-wal`` into the database file on a thread of its own.

    Why: by default SQLite checkpoints inside the commit that takes the
    ``-wal`` past ~1000 pages, so every few megabytes one group of messages
    waited for them to be copied before its ``OK``. Here the write
    connection never checkpoints (``wal_autocheckpoint = 0``); after writes,
    at most every ``CHECKPOINT_INTERVAL_S``, this thread runs a PASSIVE
    checkpoint on its own connection, which copies while the writer goes on
    appending (SQLite releases the GIL meanwhile). Past
    ``CHECKPOINT_CATCH_UP_FRAMES`` it copies the rest holding the write lock,
    so the ``-wal`` can start over. A failed checkpoint loses nothing (the
    frames stay in the ``-wal``, which SQLite reads); it is logged (once per
    kind of failure in a row) and tried again after the next write.

    The thread closes its own connection when it ends, so a pass stuck on
    the disk past ``stop``'s bound still closes it (and, as the last
    connection, removes the ``-wal``) once it finishes. A catch-up stuck on
    the disk holds the write lock, and closing the store waits for it.
    """

    def __init__(self, conn: sqlite3.Connection, write_lock: threading.Lock) -> None:
        self._conn = conn
        self._write_lock = write_lock
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="armazem-checkpoint",
                                        daemon=True)
        self.runs = 0
        self.catch_ups = 0
        self._failing = ""  # the SQLite error name of the last failed pass, if it failed

    def start(self) -> None:
        self._thread.start()

    def wanted(self) -> None:
        """Something was committed: checkpoint within ``CHECKPOINT_INTERVAL_S``."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread, waiting (bounded) for the checkpoint in progress."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join(CHECKPOINT_STOP_WAIT_S)
        if self._thread.is_alive():
            log.warning("o checkpoint do armazenamento não terminou em %.0f s; ele fecha o "
                        "arquivo quando terminar", CHECKPOINT_STOP_WAIT_S)

    def _run(self) -> None:
        try:
            # ``stop`` sets _stopping before _wanted: if the clear() below
            # eats its wake-up, the loop's condition still sees it.
            while not self._stopping.is_set():
                self._wanted.wait()
                if self._stopping.wait(CHECKPOINT_INTERVAL_S):
                    return
                self._wanted.clear()
                self._pass()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    def _pass(self) -> None:
        """One checkpoint; a failure is logged when it differs from the previous pass's."""
        try:
            self.checkpoint()
        except sqlite3.Error as exc:
            name = _error_name(exc)
            if name != self._failing:
                log.warning("checkpoint do armazenamento falhou (%s); os dados seguem no "
                            "arquivo -wal", name)
            self._failing = name
            return
        except Exception:  # a bug here must not end checkpoints for good
            log.exception("erro inesperado no checkpoint do armazenamento")
        self._failing = ""

    def checkpoint(self) -> tuple[int, int]:
        """One pass: frames in the ``-wal`` and frames copied into the file after it."""
        self.runs += 1
        _, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= CHECKPOINT_CATCH_UP_FRAMES:  # it did not start over since the last pass
            self.catch_ups += 1
            with self._write_lock:
                _, frames, copied = self._conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied


# --------------------------------------------------------------------------
# The read pool


class _ReadPool:
    """A fixed set of read connections, each lent to one thread at a time.

    They are all opened with the store, so that they all read the file that
    was opened, even if it is later deleted or replaced (a connection opened
    afterwards would find nothing, or another file).
    """

    def __init__(self, connections: list[sqlite3.Connection]) -> None:
        self._free = list(connections)
        self._closed = False
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self) -> sqlite3.Connection:
        deadline = time.monotonic() + READ_POOL_WAIT_S
        with self._cond:
            while not self._free:
                if self._closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise StoreError("armazenamento sobrecarregado: nenhuma conexão de leitura")
            if self._closed:
                raise StoreError("armazenamento fechado")
            return self._free.pop()

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._cond:
            if not self._closed:
                self._free.append(conn)
                self._cond.notify()
                return
        conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            free, self._free = self._free, []
            self._cond.notify_all()
        for conn in free:
            conn.close()


# --------------------------------------------------------------------------
# The store

_INSERT_COLUMNS = ("INSERT INTO messages (time_ms, sender_key, sender, target_key, target,"
                   " text, room, to_account, receipt) VALUES ")
_ROW_PLACEHOLDERS = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_CHUNK = 100
"""Rows per INSERT statement where SQLite's parameter limit cannot be read: 900
parameters, under the oldest limit (999). Python 3.11+ reads the real one
(32,766 since SQLite 3.32), and a whole group of messages is then one statement.

One multi-row statement instead of ``executemany``: the ``sqlite3`` module
releases and takes back the GIL around every statement it steps, so with
many busy threads one statement per row meant one wait for the GIL per row
(measured: 1.5 instead of 2.4 µs per row alone, and far less under load).
"""
_INSERT_PARAMETERS = 9
MAX_ROWS_PER_INSERT = 1000


def _rows_per_insert(conn: sqlite3.Connection) -> int:
    """How many rows one INSERT may carry on this connection (its parameter limit)."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
    if getlimit is None:
        return INSERT_CHUNK
    limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(MAX_ROWS_PER_INSERT, limit // _INSERT_PARAMETERS))


@functools.lru_cache(maxsize=256)
def _insert_statement(rows: int) -> str:
    return _INSERT_COLUMNS + ", ".join([_ROW_PLACEHOLDERS] * rows)
_MESSAGE_COLUMNS = "id, time_ms, sender, target, text, sender_key, target_key, room"
_NEWEST_ID = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)"
_PENDING_RANGE = (
    "target_key = :key AND to_account = 1"
    " AND id > max(:after, (SELECT received_id FROM accounts WHERE key = :key))")
_PENDING = (f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {_PENDING_RANGE}"
            " ORDER BY id LIMIT :limit")
_PENDING_COUNT = f"SELECT count(*) FROM messages WHERE {_PENDING_RANGE}"
_HISTORY_ROOM = (f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                 " WHERE conversation = :conversation AND id < :before"
                 " ORDER BY id DESC LIMIT :limit")
_HISTORY_PAIR = (f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                 " WHERE conversation = :conversation AND id < :before"
                 " AND id > coalesce((SELECT first_id FROM accounts WHERE key = :reader), 0)"
                 " ORDER BY id DESC LIMIT :limit")
_AWAITED_IN_RANGE = (
    "SELECT m.id, m.sender_key, m.target FROM messages AS m"
    " JOIN accounts AS s ON s.key = m.sender_key AND m.id > s.first_id"
    " WHERE m.target_key = :key AND m.to_account = 1 AND m.id > :old AND m.id <= :new"
    f" AND m.receipt = {RECEIPT_AWAITED} ORDER BY m.id")
_CLEAR_AWAITED_IN_RANGE = (
    f"UPDATE messages SET receipt = {RECEIPT_NONE} WHERE target_key = :key AND to_account = 1"
    f" AND id > :old AND id <= :new AND receipt = {RECEIPT_AWAITED}")
_RECEIPTS_DUE = (
    "SELECT id, sender_key, target FROM messages"
    f" WHERE sender_key = :key AND receipt = {RECEIPT_DUE}"
    " AND id > (SELECT first_id FROM accounts WHERE key = :key)"
    " ORDER BY id LIMIT :limit")
_ACCOUNT_COLUMNS = "key, nick, created_ms, received_id, first_id"
_PRUNE_RANGE = (
    "DELETE FROM messages WHERE id >= :low AND id < :high AND time_ms < :cutoff"
    " AND NOT (to_account = 1 AND EXISTS (SELECT 1 FROM accounts AS a"
    "          WHERE a.key = messages.target_key AND messages.id > a.received_id))"
    f" AND NOT (receipt = {RECEIPT_DUE} AND EXISTS (SELECT 1 FROM accounts AS s"
    "          WHERE s.key = messages.sender_key AND messages.id > s.first_id))")


def _stored(rows: list[tuple]) -> list[StoredMessage]:
    return [StoredMessage(i, t, s, tg, tx, sk, tk, r == 1) for i, t, s, tg, tx, sk, tk, r in rows]


class Store:
    """The durable store (one SQLite file); see the module docstring.

    Create it with ``Store.open``. Every method is safe to call from any
    thread; every failure is a ``StoreError``.
    """

    durable = True
    accounts_enabled = True

    def __init__(self, path: str, writer: sqlite3.Connection, readers: list[sqlite3.Connection],
                 checkpoints: sqlite3.Connection, identity: tuple[int, int], *, fsync: bool,
                 retention_days: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.fsync = fsync
        self.retention_days = retention_days
        self._clock = clock
        self._writer: sqlite3.Connection | None = writer
        self._write_lock = threading.Lock()
        self._rows_per_insert = INSERT_CHUNK
        self._identity = identity  # (st_dev, st_ino) of the file opened
        self._lost = False
        self._reads = _ReadPool(readers)
        self._checkpointer = _Checkpointer(checkpoints, self._write_lock)
        self._checkpointer.start()
        self._checkpointer.wanted()  # a -wal left by a crash or by the migrations

    def __repr__(self) -> str:
        return f"<Store {self.path!r} fsync={self.fsync}>"

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(cls, path: str, *, fsync: bool = False, retention_days: float = 0,
             clock: Callable[[], float] = time.time, create: bool = True) -> Store:
        """Open (or create, unless ``create`` is false) the chat database at ``path``.

        An existing file is validated before anything writes to it:
        ``StoreCorruptError`` for a file that is not a chat database (or one
        from a newer version), ``StoreError`` for one that cannot be opened.
        Missing directories are created with mode 0700, the file with 0600.
        """
        if not (math.isfinite(retention_days) and retention_days >= 0):
            raise ValueError("retention_days must be a finite number >= 0")
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"o SQLite deste Python ({sqlite3.sqlite_version}) é antigo demais: "
                             f"é preciso o {'.'.join(map(str, MIN_SQLITE))} ou mais novo "
                             "(ou use --efemero)")
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            raise StoreError(f"o caminho dos dados é um diretório: {path}")
        if os.path.exists(path):
            _validate_existing(path)
        elif create:
            _create_empty_file(path)
        else:
            raise StoreError(f"arquivo de dados não encontrado: {path}")
        identity = _file_identity(path)
        connections = [cls._connect_writer(path, fsync)]
        rows_per_insert = _rows_per_insert(connections[0])
        try:
            _apply_migrations(connections[0], path)
            connections += [_connect_reader(path) for _ in range(READ_POOL_SIZE)]
            connections.append(cls._connect_writer(path, fsync))  # the checkpointer's
            if identity is None or _file_identity(path) != identity:
                raise StoreError("arquivo de dados removido ou substituído")
        except BaseException as exc:
            for conn in reversed(connections):
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
            raise
        store = cls(path, connections[0], connections[1:-1], connections[-1], identity,
                    fsync=fsync, retention_days=retention_days, clock=clock)
        store._rows_per_insert = rows_per_insert
        return store

    @staticmethod
    def _connect_writer(path: str, fsync: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"o sistema de arquivos de {path} não permite o modo WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            # macOS: a plain fsync does not flush the drive's cache; F_FULLFSYNC does.
            conn.execute(f"PRAGMA fullfsync = {int(fsync)}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT:d}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close every connection (the last one checkpoints the -wal into the file)."""
        self._reads.close()
        self._checkpointer.stop()
        with self._write_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(sqlite3.Error):
                writer.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the two ways in ---------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the write connection, committed at the end.

        Any failure rolls it back and becomes ``StoreError``. Before the
        commit the data file must still be the one opened; once it is not,
        every write fails (``_lost``).
        """
        with self._write_lock:
            conn = self._writer_locked()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                self._check_same_file()
                conn.execute("COMMIT")
                self._checkpointer.wanted()
            except sqlite3.Error as exc:
                _rollback(conn)
                self._check_same_file()  # SQLite may notice a moved file first
                raise _store_error(exc) from exc
            except BaseException:
                _rollback(conn)
                raise

    def _check_same_file(self) -> None:
        """Raise (and remember) if the data file was deleted or replaced since it was opened."""
        if _file_identity(self.path) != self._identity:
            self._lost = True
            log.error("o arquivo de dados %s foi removido ou substituído; "
                      "nenhuma gravação será aceita até reiniciar o servidor", self.path)
            raise StoreError("arquivo de dados removido ou substituído")

    def _read(self, sql: str, parameters: Sequence | Mapping = ()) -> list[tuple]:
        with self._reads.connection() as conn:
            try:
                return conn.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc

    # -- messages ----------------------------------------------------------

    def append_messages(self, messages: Sequence[NewMessage]) -> list[tuple[int, int]]:
        """Store ``messages`` in one transaction; ``(id, time_ms)`` for each, in order.

        All or nothing: when this returns they are committed, when it raises
        ``StoreError`` none of them is stored. The same as
        ``write(prepare(messages))``.
        """
        return self.write(self.prepare(messages))

    def prepare(self, messages: Sequence[NewMessage]) -> PreparedMessages:
        """The Python half of an append: the rows' values, stamped with the time now.

        Split from ``write`` so a caller can do this part while holding
        whatever it holds for Python work, and let the SQL run without it.
        """
        now_ms = int(self._clock() * 1000)
        values: list[object] = []
        for m in messages:
            values += (now_ms, m.sender_key, m.sender, m.target_key, m.target, m.text, m.room,
                       not m.room and m.to_account,
                       RECEIPT_AWAITED if m.wants_receipt and not m.room else RECEIPT_NONE)
        return PreparedMessages(len(messages), now_ms, values)

    def write(self, prepared: PreparedMessages) -> list[tuple[int, int]]:
        """The SQL half: commit the prepared rows; ``(id, time_ms)`` for each, in order.

        A batch that fits in one INSERT statement is that statement alone
        (SQLite makes it its own transaction: one hand-off of the GIL for the
        whole batch); a larger one is several inside BEGIN ... COMMIT.
        """
        count, values = prepared.count, prepared.values
        if not count:
            return []
        if count <= self._rows_per_insert:
            last = self._insert_alone(count, values)
        else:
            with self._write() as conn:
                for start in range(0, count, self._rows_per_insert):
                    rows = min(self._rows_per_insert, count - start)
                    conn.execute(_insert_statement(rows),
                                 values[start * _INSERT_PARAMETERS:
                                        (start + rows) * _INSERT_PARAMETERS])
                # One writer in an IMMEDIATE transaction: AUTOINCREMENT ids are consecutive.
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        first = last - count + 1
        return [(first + offset, prepared.time_ms) for offset in range(count)]

    def _writer_locked(self) -> sqlite3.Connection:
        """The write connection (``_write_lock`` held); StoreError if closed or the file is lost."""
        if self._writer is None:
            raise StoreError("armazenamento fechado")
        if self._lost:
            raise StoreError("arquivo de dados removido ou substituído")
        return self._writer

    def _insert_alone(self, rows: int, values: list[object]) -> int:
        """One multi-row INSERT in autocommit (atomic by itself); the last id it gave."""
        with self._write_lock:
            conn = self._writer_locked()
            self._check_same_file()
            try:
                last = conn.execute(_insert_statement(rows), values).lastrowid
            except sqlite3.Error as exc:
                self._check_same_file()  # SQLite may notice a moved file first
                raise _store_error(exc) from exc
            self._checkpointer.wanted()
            return last

    def newest_id(self) -> int:
        """The largest id ever assigned (0 before the first message); never decreases."""
        return self._read(_NEWEST_ID)[0][0]

    def pending_messages(self, account_key: str, after_id: int = 0,
                         limit: int = 200) -> list[StoredMessage]:
        """Direct messages to the account after ``max(after_id, cursor)``, oldest first."""
        if limit <= 0:
            return []
        return _stored(self._read(_PENDING, {"key": account_key, "after": after_id,
                                             "limit": limit}))

    def pending_count(self, account_key: str) -> int:
        """How many direct messages wait for the account (0 when it does not exist)."""
        return self._read(_PENDING_COUNT, {"key": account_key, "after": 0})[0][0]

    def history_room(self, room_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]:
        """The newest ``limit`` messages of the room older than ``before_id``, oldest first."""
        return self._history(_HISTORY_ROOM, {"conversation": room_key}, before_id, limit)

    def history_pair(self, a_key: str, b_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]:
        """Direct messages between ``a_key`` (the reader) and ``b_key``, as ``history_room``.

        When ``a_key`` has an account, only messages since the account was
        created: what a nickname said before belongs to whoever held it then.
        """
        return self._history(_HISTORY_PAIR, {"conversation": conversation_key(b_key, a_key, False),
                                             "reader": a_key}, before_id, limit)

    def _history(self, sql: str, parameters: dict, before_id: int | None,
                 limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        rows = self._read(sql, {**parameters, "limit": limit,
                                "before": _MAX_ID if before_id is None else before_id})
        rows.reverse()
        return _stored(rows)

    # -- cursors and receipts ----------------------------------------------

    def mark_received(self, account_key: str, up_to_id: int) -> list[Receipt]:
        """Move the account's cursor forward to ``up_to_id`` (clamped to ``newest_id``).

        Returns the receipts this made due (each is returned once, here);
        an unknown account or a cursor that would move back changes nothing.
        """
        with self._write() as conn:
            row = conn.execute("SELECT received_id FROM accounts WHERE key = ?",
                               (account_key,)).fetchone()
            if row is None:
                return []
            old = row[0]
            new = min(up_to_id, conn.execute(_NEWEST_ID).fetchone()[0])
            if new <= old:
                return []
            conn.execute("UPDATE accounts SET received_id = ? WHERE key = ?", (new, account_key))
            window = {"key": account_key, "old": old, "new": new}
            due = conn.execute(_AWAITED_IN_RANGE, window).fetchall()
            conn.executemany(f"UPDATE messages SET receipt = {RECEIPT_DUE} WHERE id = ?",
                             [(message_id,) for message_id, _, _ in due])
            conn.execute(_CLEAR_AWAITED_IN_RANGE, window)
        return [Receipt(message_id, sender_key, recipient)
                for message_id, sender_key, recipient in due]

    def receipts_due(self, sender_key: str, limit: int = 500) -> list[Receipt]:
        """Receipts due to ``sender_key`` and not sent yet, oldest first."""
        if limit <= 0:
            return []
        rows = self._read(_RECEIPTS_DUE, {"key": sender_key, "limit": limit})
        return [Receipt(message_id, key, recipient) for message_id, key, recipient in rows]

    def mark_receipts_sent(self, message_ids: Sequence[int]) -> None:
        """Record that the receipts of ``message_ids`` went out: never due again."""
        if not message_ids:
            return
        with self._write() as conn:
            conn.executemany(
                f"UPDATE messages SET receipt = {RECEIPT_SENT} WHERE id = ?"
                f" AND receipt = {RECEIPT_DUE}",
                [(message_id,) for message_id in message_ids])

    # -- accounts ----------------------------------------------------------

    def get_account(self, key: str) -> Account | None:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key = ?", (key,))
        return Account(*rows[0]) if rows else None

    def password_record(self, key: str) -> str | None:
        rows = self._read("SELECT password_record FROM accounts WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def create_account(self, key: str, nick: str, password_record: str) -> bool:
        """Create the account; False if ``key`` has one. Its cursor starts at ``newest_id``."""
        created_ms = int(self._clock() * 1000)
        with self._write() as conn:
            newest = conn.execute(_NEWEST_ID).fetchone()[0]
            cursor = conn.execute(
                "INSERT OR IGNORE INTO accounts (key, nick, password_record, created_ms,"
                " first_id, received_id) VALUES (?, ?, ?, ?, ?, ?)",
                (key, nick, password_record, created_ms, newest, newest))
            return cursor.rowcount == 1

    def set_password_record(self, key: str, record: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute("UPDATE accounts SET password_record = ? WHERE key = ?",
                                  (record, key))
            return cursor.rowcount == 1

    def list_accounts(self) -> list[Account]:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY key")
        return [Account(*row) for row in rows]

    def remove_account(self, key: str) -> bool:
        """Delete the account. Its messages stay (until retention) but nobody owns them.

        Receipts and history are tied to an account's ``first_id``, so an
        account created later with the same nickname starts clean.
        """
        with self._write() as conn:
            return conn.execute("DELETE FROM accounts WHERE key = ?", (key,)).rowcount == 1

    # -- retention ---------------------------------------------------------

    def prune(self) -> int:
        """Delete messages older than ``retention_days``; return how many.

        Direct messages still pending for an existing account, and messages
        whose receipt is still due to an existing sender, are kept. Ids grow
        with time, so only the ids below the first message that is recent
        enough are examined, ``PRUNE_CHUNK_IDS`` per transaction.
        """
        if not self.retention_days:
            return 0
        cutoff = int(self._clock() * 1000) - int(self.retention_days * _MS_PER_DAY)
        first = self._read("SELECT min(id) FROM messages")[0][0]
        if first is None:
            return 0
        boundary_rows = self._read(
            "SELECT id FROM messages WHERE time_ms >= ? ORDER BY id LIMIT 1", (cutoff,))
        boundary = boundary_rows[0][0] if boundary_rows else self.newest_id() + 1
        deleted = 0
        for low in range(first, boundary, PRUNE_CHUNK_IDS):
            high = min(low + PRUNE_CHUNK_IDS, boundary)
            with self._write() as conn:
                deleted += conn.execute(_PRUNE_RANGE, {"low": low, "high": high,
                                                       "cutoff": cutoff}).rowcount
        if deleted:
            log.info("retenção: %d mensagens antigas apagadas", deleted)
        return deleted


def _file_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``: which file it is, not what it holds."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _connect_reader(path: str) -> sqlite3.Connection:
    """A read connection: ``mode=rw`` so it never creates a file, ``query_only`` to be sure."""
    conn = sqlite3.connect(f"{_file_uri(path)}?mode=rw", uri=True, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA query_only = 1")
        # A first read maps the WAL index now: a connection that has never read
        # fails (SQLITE_IOERR_FSTAT) once the file is unlinked.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open (SQLite may already have rolled back)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _open_error(path: str, exc: sqlite3.Error) -> StoreError:
    """Why the data file could not be opened for writing, for the administrator."""
    directory = os.path.dirname(path)
    if _error_name(exc) in ("SQLITE_CANTOPEN", "SQLITE_READONLY") and \
            not os.access(directory, os.W_OK):
        error = StoreError(f"o diretório de dados não permite gravação: {directory}")
    elif _error_name(exc) in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        error = _corrupt(path, "conteúdo danificado")
    else:
        error = StoreError(f"{_store_error(exc)}: {path}")
    error.__cause__ = exc
    return error


# --------------------------------------------------------------------------
# The ephemeral store


class MemoryStore:
    """The ``--efemero`` store: nothing on disk, no accounts, recent room history only.

    Ids come from a counter that starts at the clock in microseconds, so
    they keep increasing across restarts (clients that remember ids from
    before a restart are not confused). Room messages are kept in one ring of
    ``ROOM_HISTORY_LIMIT`` per room, for at most ``MAX_MEMORY_ROOMS`` rooms
    (the least recently written is dropped); direct messages are numbered
    and forgotten, since without accounts there is no offline delivery and
    no direct-message history.
    """

    durable = False
    accounts_enabled = False
    path = None

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_id = int(clock() * 1_000_000)
        self._rooms: OrderedDict[str, deque[StoredMessage]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryStore rooms={len(self._rooms)}>"

    def prepare(self, messages: Sequence[NewMessage]) -> PreparedMessages:
        """See ``Store.prepare``: here the messages themselves are kept."""
        return PreparedMessages(len(messages), int(self._clock() * 1000), list(messages))

    def write(self, prepared: PreparedMessages) -> list[tuple[int, int]]:
        """See ``Store.write``."""
        return self._append(prepared.values, prepared.time_ms)

    def append_messages(self, messages: Sequence[NewMessage]) -> list[tuple[int, int]]:
        return self._append(messages, int(self._clock() * 1000))

    def _append(self, messages: Sequence[NewMessage], now_ms: int) -> list[tuple[int, int]]:
        assigned = []
        with self._lock:
            for message in messages:
                self._last_id += 1
                assigned.append((self._last_id, now_ms))
                if message.room:
                    self._keep(StoredMessage(self._last_id, now_ms, message.sender,
                                             message.target, message.text, message.sender_key,
                                             message.target_key, True))
        return assigned

    def _keep(self, message: StoredMessage) -> None:
        ring = self._rooms.get(message.target_key)
        if ring is None:
            ring = self._rooms[message.target_key] = deque(maxlen=ROOM_HISTORY_LIMIT)
            while len(self._rooms) > MAX_MEMORY_ROOMS:
                self._rooms.popitem(last=False)
        else:
            self._rooms.move_to_end(message.target_key)
        ring.append(message)

    def newest_id(self) -> int:
        with self._lock:
            return self._last_id

    def history_room(self, room_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]:
        if limit <= 0:
            return []
        with self._lock:
            ring = list(self._rooms.get(room_key, ()))
        if before_id is not None:
            ring = [message for message in ring if message.id < before_id]
        return ring[-limit:]

    def history_pair(self, a_key: str, b_key: str, before_id: int | None = None,
                     limit: int = 50) -> list[StoredMessage]:
        return []

    def pending_messages(self, account_key: str, after_id: int = 0,
                         limit: int = 200) -> list[StoredMessage]:
        return []

    def pending_count(self, account_key: str) -> int:
        return 0

    def mark_received(self, account_key: str, up_to_id: int) -> list[Receipt]:
        return []

    def receipts_due(self, sender_key: str, limit: int = 500) -> list[Receipt]:
        return []

    def mark_receipts_sent(self, message_ids: Sequence[int]) -> None:
        return None

    def get_account(self, key: str) -> Account | None:
        return None

    def password_record(self, key: str) -> str | None:
        return None

    def create_account(self, key: str, nick: str, password_record: str) -> bool:
        return False

    def set_password_record(self, key: str, record: str) -> bool:
        return False

    def list_accounts(self) -> list[Account]:
        return []

    def remove_account(self, key: str) -> bool:
        return False

    def prune(self) -> int:
        return 0

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------
# Passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A salted scrypt record: ``scrypt$N$r$p$<salt b64>$<hash b64>``."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=SCRYPT_N,
                            r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=SCRYPT_DKLEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, record: str) -> bool:
    """Whether ``password`` matches ``record`` (constant-time); False for a malformed record.

    Parameters are read from the record, within bounds, so a record written
    with other parameters still verifies and a crafted one cannot ask for
    unbounded memory or time.
    """
    parsed = _parse_record(record)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r,
                                p=p, maxmem=2 * 128 * r * n * p + 1024 * 1024,
                                dklen=len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def _parse_record(record: object) -> tuple[int, int, int, bytes, bytes] | None:
    if not isinstance(record, str):
        return None
    parts = record.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    if not all(part.isdecimal() and part.isascii() and len(part) <= 8 for part in parts[1:4]):
        return None
    n, r, p = (int(part) for part in parts[1:4])
    if not (2 <= n <= _SCRYPT_MAX_N and n & (n - 1) == 0 and 1 <= r <= _SCRYPT_MAX_R
            and 1 <= p <= _SCRYPT_MAX_P and 128 * r * n * p <= _SCRYPT_MAX_COST):
        return None
    try:
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or not 16 <= len(expected) <= _SCRYPT_MAX_DKLEN:
        return None
    return n, r, p, salt, expected


# --------------------------------------------------------------------------
# The administrator's command line

_EXIT_OK = 0
_EXIT_NO_ACCOUNT = 1
_EXIT_USAGE = 2

class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _AccountsParser(argumentos.PortugueseArgumentParser):
    """The Portuguese parser, writing to given streams and never exiting (for tests)."""

    def __init__(self, out: TextIO, err: TextIO, **kwargs) -> None:
        super().__init__(**kwargs)
        self._out = out
        self._err = err

    def print_help(self, file: TextIO | None = None) -> None:
        self._out.write(self.format_help())

    def print_usage(self, file: TextIO | None = None) -> None:
        self._err.write(self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._err.write(message)
        raise _Exit(status)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage()
        self.exit(_EXIT_USAGE, f"{self.prog}: erro: {argumentos.translate(message)}\n")


def _accounts_parser(out: TextIO, err: TextIO) -> _AccountsParser:
    parser = _AccountsParser(
        out, err, prog="servidor.py contas",
        description="Administra as contas do chat no arquivo de dados do servidor. "
                    "Pode ser usado com o servidor rodando.")
    parser.add_argument("--dados", metavar="CAMINHO", default=None,
                        help=f"arquivo de dados (padrão: {default_data_path()})")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--listar", action="store_true",
                         help="lista as contas: apelido, data de criação e mensagens pendentes")
    actions.add_argument("--remover", metavar="APELIDO",
                         help="remove a conta do apelido (as mensagens guardadas ficam até a "
                              "retenção apagá-las)")
    return parser


def run_accounts_command(argv: Sequence[str], out: TextIO = sys.stdout,
                         err: TextIO = sys.stderr) -> int:
    """``servidor.py contas ...``: list or remove accounts; returns the exit status.

    0 success, 1 no such account, 2 bad usage or an unusable data file.
    """
    parser = _accounts_parser(out, err)
    try:
        args = parser.parse_args(list(argv))
        if not args.listar and args.remover is None:
            parser.error("indique --listar ou --remover APELIDO")
    except _Exit as exit_request:
        return exit_request.status
    path = args.dados or default_data_path()
    try:
        store = Store.open(path, create=False)
    except StoreError as exc:
        err.write(f"servidor.py contas: erro: {exc}\n")
        return _EXIT_USAGE
    try:
        if args.listar:
            return _list_accounts(store, out)
        return _remove_account(store, args.remover, out, err)
    except StoreError as exc:
        err.write(f"servidor.py contas: erro: {exc}\n")
        return _EXIT_USAGE
    finally:
        store.close()


def _list_accounts(store: Store, out: TextIO) -> int:
    accounts = store.list_accounts()
    if not accounts:
        out.write("nenhuma conta\n")
        return _EXIT_OK
    width = max(len("apelido"), *(len(account.nick) for account in accounts))
    out.write(f"{'apelido':<{width}}  {'criada em':<16}  pendentes\n")
    for account in accounts:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(account.created_ms / 1000))
        out.write(f"{account.nick:<{width}}  {created:<16}  "
                  f"{store.pending_count(account.key):>9}\n")
    out.write(f"{len(accounts)} conta(s)\n")
    return _EXIT_OK


def _remove_account(store: Store, nick: str, out: TextIO, err: TextIO) -> int:
    key = protocolo.nick_key(nick)
    account = store.get_account(key)
    if account is None or not store.remove_account(key):
        err.write(f"servidor.py contas: não existe conta com o apelido {nick!r}\n")
        return _EXIT_NO_ACCOUNT
    out.write(f"conta {account.nick!r} removida\n")
    return _EXIT_OK
