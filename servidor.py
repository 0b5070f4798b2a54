"""Chat server: one thread per connection, a shared registry, rooms, a durable message log.

How a line travels, so a reader can follow it:

1. ``Servidor`` accepts a socket, counts it against its address
   (``limites.AddressBook``) and starts a ``ClientConnection`` thread. Every socket
   is non-blocking for good; a thread that must wait for one waits in
   ``rede.wait_readable``/``wait_writable`` with a bound. No platform-only
   socket call is needed, so the same code runs on Linux, Windows and macOS.
2. The connection thread reads a chunk, cuts it into lines with
   ``protocolo.LineSplitter`` and answers them (``_handle_*`` methods).
   Busy connections take turns at this (``FairTurn``), because CPython's
   own hand-over of the GIL would let a few of them starve the rest. Before
   each read the connection pays for what it sent and caused (lines, bytes,
   replies) from its address's budget; an address over budget is simply not
   read for a while, so TCP slows the sender down instead of the server
   working for it at full speed.
3. Nothing is written straight to a socket by request handlers: replies and
   pushes are appended to the target connection's ``Outbox``, and each
   outbox touched is flushed once per batch with a non-blocking ``send``.
   What the kernel will not take waits for that connection's own writer
   thread (started only when needed). A recipient that others send to
   faster than it reads slows its senders down; only one that makes no
   progress at all is dropped.
4. ENVIAR is stored before its ``OK`` (``MessageLog``): the messages of many
   connections that arrive together are committed in one transaction (group
   commit), then delivered in the order of their ids, the same order for
   every member of a room. An account that was away gets what waited for it
   right after its registration's ``OK``, before anything newer.
5. The ``Registry`` (nicknames) and ``Rooms`` have locks that guard only
   their dictionaries and the in-memory appends of the pushes that must
   follow each change in order; no socket I/O ever happens while any of
   them is held.

Run ``python3 servidor.py --help`` for the options, and
``python3 servidor.py contas --help`` for the accounts' administration.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import functools
import logging
import math
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import argumentos
import armazem
import descoberta
import diario
import limites
import protocolo
import rede
from protocolo import ErrorCode, ProtocolError

log = logging.getLogger("servidor")

EARLY_FLUSH_BYTES = 64 * 1024
"""Replies queued past this within one batch are flushed before the batch ends."""
OWN_OUTPUT_LOW_WATER = 64 * 1024
OWN_OUTPUT_HIGH_WATER = 256 * 1024
"""A connection whose own unread output passes the high mark is not served until
it drains to the low one.

This is how a request is charged by the output it causes: a client that
pipelines LISTARs and never reads gets a few replies' worth queued, not one
reply per request it managed to send.
"""
RECV_CHUNK = 256 * 1024
"""Bytes asked of a ``recv`` on a busy connection: large, so one call brings many lines."""
IDLE_RECV_CHUNK = 4096
"""Bytes asked of a ``recv`` on a quiet connection (a large buffer per idle thread adds up)."""
THROTTLED_RECV_CHUNK = 1024
"""The least a read asks for, however little budget its address has left."""
LIGHT_BATCH_LINES = 2
"""A read of at most this many lines takes the turn's urgent lane: small, so cheap to
serve first (and a streak bound keeps the busy ones going)."""
LIGHT_LINES_PER_S = 200
"""A connection that sends fewer lines per second than this is a light user's (a
person typing sends one now and then): its batches go first to the message log.
Measured with a token bucket, because a busy sender whose reads hold a line or two
would otherwise fill that lane."""
MAX_LINES_PER_TURN = 256
"""Lines a connection handles per turn before letting the others have theirs."""
CONNECTION_STACK_SIZE = 256 * 1024
"""Thread stack for connection threads (set by ``main``); the code is shallow."""
TURN_PATIENCE = 1.0
"""Seconds a connection thread waits for its turn (``FairTurn``) before going ahead anyway."""
SNDBUF_BYTES = 256 * 1024
"""Kernel send buffer per client socket: bounds the kernel memory a non-reading peer pins."""
HISTORY_REPLY_MAX_BYTES = 256 * 1024
"""A HISTORICO reply holds the newest lines that fit in this many bytes (at most 500)."""
CATCH_UP_PAGE = 200
"""Messages pushed per page to an account catching up on what waited for it."""
MAINTENANCE_INTERVAL = 0.5
"""Seconds between the maintenance thread's rounds (cursors, stalls, address table)."""
HANDSHAKE_SEND_BOUND = 10.0
"""Seconds a TLS record we must send may make no progress (when no TEMPO clock runs)."""
MAX_GROUP_MESSAGES = 512
"""Messages per group commit (whole batches; light ones first): keeps each commit short."""
MAX_BATCHES_IN_FLIGHT = 1
"""Batches of ENVIAR a connection may have waiting for the store while it reads on."""


@dataclass
class ServerConfig:
    """Everything a ``Servidor`` can be told; 0 disables a limit."""

    host: str = ""
    """Address to listen on; "" means every interface, IPv4 and IPv6."""
    port: int = protocolo.DEFAULT_PORT
    max_clients: int = 1000
    max_per_ip: int = 64
    max_line: int = protocolo.MAX_REQUEST_BYTES
    max_pending: int = protocolo.DEFAULT_MAX_PENDING_BYTES
    """Output queued for one connection past which its senders wait (a soft bound)."""
    max_total_pending: int = 256 * 1024 * 1024
    """Output queued for all connections together; past it the worst stalled ones go."""
    rate: float = 20.0
    """Requests per second per connection (token bucket refill); excess gets LIMITE."""
    burst: int = 100
    """Token bucket size: requests a connection may send at once."""
    address_lines: float = 200.0
    """Lines per second one address may send, all its connections together (any line)."""
    address_lines_burst: int = 1000
    address_bytes: float = 1024 * 1024
    """Bytes per second one address may send or cause in replies, all connections together."""
    address_bytes_burst: int = 4 * 1024 * 1024
    registrations: float = 1.0
    """Registrations per second per address (refill); excess gets LIMITE."""
    registrations_burst: int = 20
    tls_handshakes: float = 10.0
    """TLS handshakes per second per address; excess connections are closed at once."""
    tls_handshakes_burst: int = 20
    register_timeout: float = 60.0
    """Seconds an unregistered connection may go without a request."""
    send_timeout: float = 30.0
    """Seconds queued output may make no progress at all before the peer is dropped."""
    stall_timeout: float = 10.0
    """Seconds a recipient that others are waiting on may make no progress before it is dropped."""
    shutdown_flush: float = 1.5
    """Seconds ``stop`` waits for queued output to reach the clients."""
    keepalive_idle: float = protocolo.KEEPALIVE_IDLE_S
    """Seconds of silence before TCP keepalive probes; a vanished peer goes after ~1.8x this."""
    failed_passwords: int = protocolo.FAILED_PASSWORDS_ALLOWED
    """Wrong passwords per address within a minute before password registrations get LIMITE."""
    accounts_per_hour: int = protocolo.ACCOUNTS_PER_ADDRESS_PER_HOUR
    max_pending_per_account: int = protocolo.MAX_PENDING_PER_ACCOUNT
    hashing_threads: int = 2
    """Password hashes computed at once (each costs tens of ms and ~16 MiB)."""
    tls_context: ssl.SSLContext | None = None
    store: armazem.Store | armazem.MemoryStore | None = None
    """Where messages and accounts live; None means in memory only (``--efemero``)."""
    discovery: bool = True
    """Answer ``DESCOBRIR`` datagrams on the same port (UDP)."""
    name: str = ""
    """The name announced to discovery probes; "" means the host name."""

    def address_limits(self) -> limites.AddressLimits:
        """The per-address part of this configuration."""
        return limites.AddressLimits(
            max_clients=self.max_clients, max_per_ip=self.max_per_ip,
            lines=self.address_lines, lines_burst=self.address_lines_burst,
            bytes=self.address_bytes, bytes_burst=self.address_bytes_burst,
            registrations=self.registrations, registrations_burst=self.registrations_burst,
            tls_handshakes=self.tls_handshakes, tls_handshakes_burst=self.tls_handshakes_burst,
            failed_passwords=self.failed_passwords, accounts_per_hour=self.accounts_per_hour)


# --------------------------------------------------------------------------
# Addresses and budgets


def _plain_ip(ip: str) -> str:
    """Show an IPv4 client of a dual-stack socket as IPv4 (``::ffff:1.2.3.4``)."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[len("::ffff:"):]
    return ip


# --------------------------------------------------------------------------
# Transports: what turns queued text into bytes on the wire


class PlainTransport:
    """A TCP connection without encryption, on a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.chunk = IDLE_RECV_CHUNK

    buffered = False
    """True when bytes wait inside the transport (never, for plain TCP)."""

    def handshake(self, deadline: float = 0.0) -> None:
        """Nothing to negotiate."""

    def recv(self, limit: int) -> bytes:
        """At most ``limit`` application bytes; ``b""`` at EOF; BlockingIOError when none wait.

        Reads small until a read comes back full, then large while that lasts.
        """
        asked = min(self.chunk, limit)
        data = self.sock.recv(asked)
        if asked == self.chunk:
            self.chunk = RECV_CHUNK if len(data) == asked else IDLE_RECV_CHUNK
        return data

    def encode(self, data: bytes) -> bytes:
        """Wire bytes for ``data``; called in send order."""
        return data


class TlsTransport:
    """TLS over a plain non-blocking socket, through ``ssl.MemoryBIO``.

    OpenSSL objects are not safe to use from two threads at once, and here a
    connection's reader thread decrypts while other threads queue output for
    it. So every call into the ``SSLObject`` holds ``_lock`` -- those calls
    are CPU only -- while the socket I/O happens outside it, exactly as for a
    plain connection.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()
        self._records_waiting = False

    def handshake(self, deadline: float = 0.0) -> None:
        """Complete the TLS handshake; raises ``ssl.SSLError``, ``OSError`` or TimeoutError.

        ``deadline`` (a ``time.monotonic()`` value; 0 for none) bounds the
        whole handshake, not each read, so a peer that dribbles its hello a
        byte at a time is cut off all the same.
        """
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                out = self._outgoing.read()
            if out:
                rede.send_all(self.sock, out, _remaining(deadline, HANDSHAKE_SEND_BOUND))
            if done:
                # The client's first records may have come in the same read
                # as its Finished; the next ``recv`` must look at them first.
                self._records_waiting = True
                return
            data = _recv_some(self.sock, RECV_CHUNK, deadline)
            if not data:
                raise ConnectionError("EOF durante o handshake TLS")
            self._incoming.write(data)

    @property
    def buffered(self) -> bool:
        """True when records read with the handshake wait to be decrypted."""
        return self._records_waiting

    def recv(self, limit: int) -> bytes:
        """Application bytes from the peer (about ``limit`` at most); ``b""`` at EOF.

        Reads the socket at most once. If what came holds no whole record
        yet -- or nothing came -- raises ``BlockingIOError``, so the caller
        waits and checks its clocks before reading again: a peer dribbling
        one record byte by byte cannot dodge the TEMPO bound.
        """
        data = b""
        if self._records_waiting:
            self._records_waiting = False
        else:
            data = self.sock.recv(min(RECV_CHUNK, limit))
            if not data:
                return b""
        with self._lock:
            self._incoming.write(data)
            plain = []
            try:
                while True:
                    chunk = self._tls.read(RECV_CHUNK)
                    if not chunk:
                        break
                    plain.append(chunk)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            reply = self._outgoing.read()  # e.g. TLS 1.3 key updates
        if reply:
            rede.send_all(self.sock, reply, HANDSHAKE_SEND_BOUND)
        if not plain:
            raise BlockingIOError("registro TLS incompleto")
        return b"".join(plain)

    def encode(self, data: bytes) -> bytes:
        """Wire bytes for ``data``; raises ``ssl.SSLError`` once this peer's TLS is broken."""
        with self._lock:
            self._tls.write(data)
            return self._outgoing.read()


def _remaining(deadline: float, default: float) -> float:
    """Seconds left until ``deadline`` (a monotonic time; 0 means none: ``default``)."""
    return max(0.001, deadline - time.monotonic()) if deadline else default


def _recv_some(sock: socket.socket, size: int, deadline: float) -> bytes:
    """One ``recv``, after waiting for data until ``deadline`` (0: forever).

    Waiting first works whether the socket is blocking or not.
    """
    while True:
        timeout = None if not deadline else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError("tempo esgotado esperando dados")
        if rede.wait_readable(sock, timeout):
            try:
                return sock.recv(size)
            except BlockingIOError:
                continue


# --------------------------------------------------------------------------
# Outbound queue


class Outbox:
    """A connection's queued output, with an on-demand writer thread.

    ``put`` only appends (cheap, any thread, any lock order). ``flush`` takes
    what is queued and tries one non-blocking ``send`` *outside* the lock;
    what the kernel does not take is handed to the writer thread, which
    waits for the socket so that nobody else has to. Only one thread sends
    at a time (``_busy``), so bytes leave in the order they were queued.

    ``max_pending`` is a soft bound: ``put`` says when the queue is past it,
    and the callers decide -- a sender waits for the recipient to drain, a
    connection stops reading its own requests until its replies go out.
    ``progress_at`` tells whether the peer is reading at all; a connection
    that makes no progress for ``send_timeout`` is reported broken.

    For a version-1 account, MSG lines carry their message id: ``written_id``
    is the newest one the kernel has taken, which is when the contract
    counts such a message as received.
    """

    def __init__(self, transport: PlainTransport | TlsTransport, max_pending: int,
                 name: str, on_broken: Callable[[str], None], send_timeout: float) -> None:
        self._transport = transport
        self._sock = transport.sock
        self._max_pending = max_pending
        self._name = name
        self._on_broken = on_broken
        self._send_timeout = send_timeout or None
        self._lock = threading.Lock()
        # Made on first need (the writer thread or a waiter): most connections never do.
        self._cond: threading.Condition | None = None
        self._queued: list[bytes] = []
        self._queued_id = 0  # newest tracked message id among _queued
        self._unsent = b""  # wire bytes the kernel refused, for the writer
        self._pending = 0  # bytes queued, unsent, or being sent
        self._busy = False  # a flusher or the writer is sending
        self._handed = False  # _busy was handed to the writer thread, which has not taken it
        self._writer: threading.Thread | None = None
        self._closed = False
        self._flush_on_close = False
        self._wire_total = 0  # wire bytes taken for sending, ever
        self._wire_sent = 0  # wire bytes the kernel accepted, ever
        # (wire bytes, message id) marks for written_id; made on first need (v1 accounts).
        self._tracked: collections.deque[tuple[int, int]] | None = None
        self.written_id = 0
        self.progress_at = time.monotonic()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def closed(self) -> bool:
        """True once the connection is going away: new data would be dropped."""
        return self._closed

    @property
    def drained(self) -> bool:
        return self._pending == 0

    @property
    def congested(self) -> bool:
        """True when more than ``max_pending`` bytes wait for this peer."""
        return bool(self._max_pending) and self._pending > self._max_pending

    def put(self, data: bytes, message_id: int = 0) -> bool:
        """Queue ``data``; False if the queue is now past ``max_pending``.

        Data for a closed outbox is silently dropped: its peer is gone.
        """
        with self._lock:
            if self._closed:
                return True
            if not self._pending:
                self.progress_at = time.monotonic()  # a busy period starts now
            self._queued.append(data)
            self._pending += len(data)
            if message_id:
                self._queued_id = message_id
            return not self._max_pending or self._pending <= self._max_pending

    def flush(self) -> None:
        """Send what is queued without blocking; leave the rest to the writer.

        Another thread that queues while we send finds us busy and leaves its
        bytes to us: after a few rounds we stop taking more (our own work
        waits), and the writer takes over whatever is still queued -- else it
        would sit there until the next flush, which may never come.
        """
        for _ in range(4):  # a few rounds pick up what other threads queued meanwhile
            with self._lock:
                if (self._busy or not self._queued
                        or (self._closed and not self._flush_on_close)):
                    return
                self._busy = True
                wire, broken = self._take_wire_locked()
            if not broken:
                broken = self._send_once(wire)
            if broken:
                self._break(broken)
                return
        with self._lock:
            if self._queued and not self._busy and not (self._closed
                                                        and not self._flush_on_close):
                self._busy = True
                self._wake_writer_locked()  # it inherits _busy

    def _send_once(self, wire: bytes) -> str:
        """One non-blocking send of ``wire`` (we own ``_busy``); '' or why the peer is broken."""
        try:
            sent = rede.send_nowait(self._sock, wire)
        except OSError as exc:
            return f"erro ao enviar: {exc.strerror or exc}"
        with self._lock:
            self._account_locked(sent)
            if sent < len(wire):
                self._unsent = wire[sent:]
                self._wake_writer_locked()  # it inherits _busy
            else:
                self._busy = False
        return ""

    def wait_below(self, level: int, stall_timeout: float, stop: threading.Event) -> bool:
        """Wait until at most ``level`` bytes are pending (or the outbox closes).

        False if the peer made no progress for ``stall_timeout`` seconds, or
        ``stop`` was set: the caller decides what that means.
        """
        with self._lock:
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            while self._pending > level and not self._closed:
                if stop.is_set():
                    return False
                idle = time.monotonic() - self.progress_at
                if stall_timeout and idle >= stall_timeout:
                    return False
                self._cond.wait(0.2 if not stall_timeout else min(0.2, stall_timeout - idle))
            return True

    def stalled_for(self, now: float) -> float:
        """Seconds since the peer last took a byte while output waited (0 when idle)."""
        return now - self.progress_at if self._pending else 0.0

    def close(self, flush: bool) -> None:
        """Stop taking data; with ``flush``, let what is queued still go out."""
        with self._lock:
            self._closed = True
            self._flush_on_close = flush
            if not flush:
                self._drop_locked()
            if self._cond is not None:
                self._cond.notify_all()
        if flush:
            self.flush()

    def join(self, timeout: float) -> bool:
        """Wait for the writer to finish; True if it did (or never existed)."""
        writer = self._writer
        if writer is None:
            return True
        writer.join(max(0.0, timeout))
        return not writer.is_alive()

    # -- internals --

    def _break(self, reason: str) -> None:
        with self._lock:
            self._closed = True
            self._drop_locked()
            self._busy = False
            if self._cond is not None:
                self._cond.notify_all()
        self._on_broken(reason)

    def _drop_locked(self) -> None:
        self._queued.clear()
        self._unsent = b""
        self._pending = 0
        self._tracked = None

    def _take_wire_locked(self) -> tuple[bytes, str]:
        """Everything queued, encoded for the wire: (wire, '') or (b'', why TLS broke)."""
        data = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued.clear()
        try:
            wire = self._transport.encode(data)
        except (ssl.SSLError, ValueError) as exc:  # this peer's TLS state is broken
            return b"", f"erro de TLS: {exc}"
        self._pending += len(wire) - len(data)
        self._wire_total += len(wire)
        if self._queued_id:
            if self._tracked is None:
                self._tracked = collections.deque()
            self._tracked.append((self._wire_total, self._queued_id))
            self._queued_id = 0
        return wire, ""

    def _account_locked(self, sent: int) -> None:
        if not sent:
            return
        self._pending = max(0, self._pending - sent)
        self._wire_sent += sent
        self.progress_at = time.monotonic()
        tracked = self._tracked
        while tracked and tracked[0][0] <= self._wire_sent:
            self.written_id = tracked.popleft()[1]
        if self._cond is not None:
            self._cond.notify_all()

    def _wake_writer_locked(self) -> None:
        """Hand ``_busy`` (held by the caller) and what waits to be sent to the writer thread."""
        if self._cond is None:
            self._cond = threading.Condition(self._lock)
        self._handed = True
        if self._writer is None:
            self._writer = threading.Thread(target=self._run_writer, daemon=True,
                                            name=f"escritor-{self._name}")
            self._writer.start()
        else:
            self._cond.notify_all()

    def _run_writer(self) -> None:
        """Writer thread: send, waiting for the socket, whatever ``flush`` could not.

        It sends only while it owns ``_busy``, which a flusher hands it
        (``_wake_writer_locked``), and gives it back when nothing is left.
        Woken for any other reason -- every send notifies the condition -- it
        goes back to sleep: clearing ``_busy`` then would let a third thread
        send while the flusher that owns it still does, cutting lines into
        each other and losing bytes.
        """
        broken = ""
        owns = False
        try:
            while not broken:
                with self._lock:
                    if owns and not (self._unsent or self._queued):
                        owns = self._busy = False  # all sent: flushers send again
                    while not owns:
                        if self._handed:
                            self._handed, owns = False, True
                        elif self._closed:
                            self._writer = None  # under the lock: a later hand-off starts a new one
                            return
                        else:
                            self._cond.wait()
                    if self._closed and not self._flush_on_close:
                        return
                    wire, self._unsent = self._unsent, b""
                    if self._queued:
                        more, broken = self._take_wire_locked()
                        wire += more
                if wire and not broken:
                    broken = self._send_waiting(wire)
        finally:
            with self._lock:
                if self._writer is threading.current_thread():
                    self._writer = None
                if owns:
                    self._busy = False
                if self._cond is not None:
                    self._cond.notify_all()
            if broken:
                self._break(broken)

    def _send_waiting(self, wire: bytes) -> str:
        """Send all of ``wire``, waiting for room; '' or why the peer is broken."""
        view = memoryview(wire)
        while view:
            try:
                sent = rede.send_nowait(self._sock, view)
            except OSError as exc:
                return f"erro ao enviar: {exc.strerror or exc}"
            if sent:
                with self._lock:
                    self._account_locked(sent)
                view = view[sent:]
                continue
            if self._closed and not self._flush_on_close:
                return ""
            if not rede.wait_writable(self._sock, self._send_timeout):
                return "cliente parou de ler"
        return ""


# --------------------------------------------------------------------------
# Registry: nicknames and presence


@dataclass(eq=False)
class Entry:
    """One registered user."""

    nick: str
    """The spelling given at registration, shown to everybody."""
    ip: str
    port: int
    connection: ClientConnection
    relay: bool
    """False for the directory-only form: no pushes, ENVIAR to it is SO_DIRETO."""
    account: bool = False
    """True when the nickname is an account's (registered with its password)."""


class Registry:
    """Nickname key -> ``Entry``, plus the presence subscribers.

    Writers take ``_lock``. The ENTROU/SAIU lines that a change causes are
    appended to the subscribers' outboxes *under* the lock -- an append is
    memory only -- so every subscriber sees the changes in the order they
    happened, and the last event it gets for a nickname matches the registry.
    The caller flushes those outboxes afterwards, outside the lock. Readers
    on the message path (``get``) skip the lock: a single ``dict.get`` is
    atomic in Python.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._subscribers: tuple[ClientConnection, ...] = ()  # replaced, never mutated
        self._listing: bytes | None = None  # LISTAR's reply, rebuilt after a change
        self._generation = 0  # counts changes, so a stale reply is never cached

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def add(self, key: str, entry: Entry) -> tuple[ClientConnection, ...] | None:
        """Register ``entry`` and tell the subscribers; None if the key is taken.

        Returns the subscribers whose outboxes now need a flush.
        """
        line = protocolo.format_joined(entry.nick)
        with self._lock:
            if key in self._entries:
                return None
            self._entries[key] = entry
            self._listing = None
            self._generation += 1
            return self._push_locked(line, entry.connection)

    def remove(self, key: str, connection: ClientConnection) -> tuple[ClientConnection, ...]:
        """Drop ``connection``'s registration and tell the subscribers; returns them."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.connection is not connection:
                return ()
            del self._entries[key]
            self._listing = None
            self._generation += 1
            if connection in self._subscribers:
                self._subscribers = tuple(s for s in self._subscribers if s is not connection)
            return self._push_locked(protocolo.format_left(entry.nick), connection)

    def subscribe(self, key: str, connection: ClientConnection) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if (entry is not None and entry.connection is connection and entry.relay
                    and connection not in self._subscribers):
                self._subscribers = (*self._subscribers, connection)

    def _push_locked(self, line: bytes, actor: ClientConnection) -> tuple[ClientConnection, ...]:
        subscribers = self._subscribers
        for subscriber in subscribers:
            if subscriber is not actor:
                subscriber.push(line)
        return subscribers

    def listing(self) -> list[tuple[str, str, int]]:
        """(nick, ip, port) of everybody, sorted by key."""
        with self._lock:
            entries = sorted(self._entries.items())
        return [(e.nick, e.ip, e.port) for _, e in entries]

    def listing_reply(self) -> bytes:
        """LISTAR's whole reply, cached between changes (a LISTAR costs no formatting)."""
        reply = self._listing
        if reply is None:
            with self._lock:
                generation = self._generation
                entries = sorted(self._entries.items())
            reply = protocolo.format_users([(e.nick, e.ip, e.port) for _, e in entries])
            with self._lock:
                if self._generation == generation:  # no change while we formatted
                    self._listing = reply
        return reply

    def nicks(self) -> list[str]:
        return [nick for nick, _, _ in self.listing()]

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------
# Rooms


class Room:
    """A room and its members; ``members`` is a tuple replaced on every change.

    So the fan-out of a message iterates the members as they were when it
    was delivered, without copying the list for every message.
    """

    __slots__ = ("key", "members", "name")

    def __init__(self, key: str, name: str) -> None:
        self.key = key
        self.name = name
        self.members: tuple[ClientConnection, ...] = ()


class Rooms:
    """Every room that has members, by key; a room ends with its last member.

    As in ``Registry``, the ENTROU/SAIU lines for the other members are
    appended under the lock, so they follow the membership in order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rooms: dict[str, Room] = {}

    def get(self, key: str) -> Room | None:
        return self._rooms.get(key)

    def join(self, key: str, name: str, connection: ClientConnection) -> Room:
        """Make ``connection`` a member (created with the spelling ``name`` if new)."""
        with self._lock:
            room = self._rooms.get(key)
            if room is None:
                room = self._rooms[key] = Room(key, name)
            if connection not in room.members:
                line = protocolo.format_joined(connection.nick, room.name)
                for member in room.members:
                    member.push(line)
                room.members = (*room.members, connection)
            return room

    def leave(self, room: Room, connection: ClientConnection) -> bool:
        """Remove ``connection`` from ``room``; False if it was not a member."""
        with self._lock:
            if connection not in room.members:
                return False
            room.members = tuple(m for m in room.members if m is not connection)
            line = protocolo.format_left(connection.nick, room.name)
            for member in room.members:
                member.push(line)
            if not room.members and self._rooms.get(room.key) is room:
                del self._rooms[room.key]
            return True

    def listing(self) -> list[tuple[str, int]]:
        """(name, member count) of every room, sorted by key."""
        with self._lock:
            rooms = sorted(self._rooms.items())
        return [(room.name, len(room.members)) for _, room in rooms]

    def __len__(self) -> int:
        return len(self._rooms)


# --------------------------------------------------------------------------
# Turn-taking


class FairTurn:
    """Connection threads take turns, in arrival order, at handling what they read.

    Only one thread runs Python code at a time anyway (the GIL), but CPython
    hands the GIL over unfairly: a thread coming back from a short system
    call (a non-blocking ``send``, a ``recv`` that finds data waiting) takes
    it again before the thread that was woken for it gets to run, and that
    one goes back to waiting. Under load a few busy connections then handle
    batch after batch while others wait tens of milliseconds. Handing the
    turn over first come, first served gives every busy connection one batch
    per round.

    A light connection -- a person typing, whose read held a line or two --
    should not wait a whole round behind a hundred busy ones, so it queues
    in a lane of its own that is served first; after ``URGENT_STREAK`` light
    turns in a row a busy connection gets one, so no one starves.

    The turn guards no data (the registry, the rooms and every outbox have
    their own locks), so correctness never depends on it: a thread that waits
    longer than ``patience`` seconds simply goes ahead without it. It is held
    for CPU work and non-blocking sends only, never while waiting for a peer,
    a disk or a password hash.
    """

    URGENT_STREAK = 8

    def __init__(self, patience: float = TURN_PATIENCE) -> None:
        self.patience = patience
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._urgent: collections.deque[threading.Lock] = collections.deque()
        self._streak = 0
        self._taken = False

    def acquire(self, urgent: bool = False) -> bool:
        """Wait for the turn; True once it is ours, False if we gave up waiting."""
        with self._lock:
            if not self._taken:
                self._taken = True
                return True
            baton = threading.Lock()
            baton.acquire()
            queue = self._urgent if urgent else self._waiting
            queue.append(baton)
        if baton.acquire(timeout=self.patience):
            return True  # released by ``release``: the turn was handed to us
        with self._lock:
            try:
                queue.remove(baton)
            except ValueError:
                return True  # handed to us just as the wait ran out
            return False

    def release(self, held: bool) -> None:
        """Pass the turn on: the light lane first, then the longest waiting thread."""
        if not held:
            return
        with self._lock:
            if self._urgent and (self._streak < self.URGENT_STREAK or not self._waiting):
                self._streak += 1
                self._urgent.popleft().release()
            elif self._waiting:
                self._streak = 0
                self._waiting.popleft().release()
            else:
                self._streak = 0
                self._taken = False


# --------------------------------------------------------------------------
# The message log: store first, then deliver, in one order


class Outgoing:
    """One accepted ENVIAR on its way: stored, then delivered, then answered.

    It carries the fields of ``armazem.NewMessage`` under the same names, so
    the store takes it as it is: one object per message on the hot path.
    """

    __slots__ = ("chat_room", "connection", "error", "message_id", "raw_text", "room", "sender",
                 "sender_bytes", "sender_key", "target", "target_key", "text", "time_ms",
                 "to_account", "wants_receipt")

    def __init__(self, connection: ClientConnection, target_key: str, target: str, text: str,
                 raw_text: bytes, chat_room: Room | None, to_account: bool,
                 wants_receipt: bool) -> None:
        self.connection = connection
        self.sender_key = connection.key
        self.sender = connection.nick  # as it was when the message was accepted
        self.sender_bytes = connection.nick_bytes
        self.target_key = target_key
        self.target = target  # the recipient's nickname as registered, or the room's name
        self.text = text
        self.raw_text = raw_text
        self.room = chat_room is not None
        self.chat_room = chat_room
        self.to_account = to_account
        self.wants_receipt = wants_receipt
        self.message_id = 0
        self.time_ms = 0
        self.error = ""

    def reply(self, version: int) -> bytes:
        """The sender's answer: OK (v2: with id and time) or why it was not stored."""
        if self.error:
            return protocolo.format_error(ErrorCode.ARMAZENAMENTO, self.error)
        if version >= 2:
            return protocolo.format_ok_message(self.message_id, self.time_ms)
        return protocolo.OK_LINE


class Deliveries:
    """The lines one group of messages sends to each recipient, appended in one go each.

    A batch of 32 messages to one recipient then costs one locked append and
    one ``send``, not 32. Per recipient the lines stay in id order. Senders
    whose messages went to a recipient that ends up past its bound are told
    (``Ticket.congested``), so they wait for it.
    """

    __slots__ = ("_ids", "_lines", "_tickets")

    def __init__(self) -> None:
        self._lines: dict[ClientConnection, list[bytes]] = {}
        self._tickets: dict[ClientConnection, list[Ticket]] = {}
        self._ids: dict[ClientConnection, int] = {}  # newest id for a version-1 account

    def add(self, recipient: ClientConnection, line: bytes, ticket: Ticket,
            message_id: int = 0) -> None:
        """Queue ``line`` for ``recipient``; ``message_id`` tracks a version-1 account's cursor."""
        lines = self._lines.get(recipient)
        if lines is None:
            self._lines[recipient] = [line]
            self._tickets[recipient] = [ticket]
        else:
            lines.append(line)
            tickets = self._tickets[recipient]
            if tickets[-1] is not ticket:
                tickets.append(ticket)
        if message_id:
            self._ids[recipient] = message_id

    def put_all(self) -> list[ClientConnection]:
        """Append everything to the recipients' outboxes; returns the recipients."""
        ids = self._ids
        for recipient, lines in self._lines.items():
            data = lines[0] if len(lines) == 1 else b"".join(lines)
            if not recipient.push(data, ids.get(recipient, 0)):
                for ticket in self._tickets[recipient]:
                    ticket.congested.append(recipient)
        return list(self._lines)


class Ticket:
    """One connection's batch of ENVIAR answers: stored, delivered and answered in order.

    ``slots`` holds, in the order the requests came, the messages to store
    (``Outgoing``) and the answers already known (errors, as bytes).
    """

    __slots__ = ("congested", "connection", "done", "slots", "urgent")

    def __init__(self, connection: ClientConnection, slots: list[Outgoing | bytes]) -> None:
        self.connection = connection
        self.slots = slots
        self.done = False  # set by the message log; waiters use ``MessageLog.wait``
        self.congested: list[ClientConnection] = []
        self.urgent = False  # submitted to the message log's urgent lane


class MessageLog:
    """Stores messages before their ``OK`` and delivers them in id order.

    With a store on disk, a committer thread does it: connections hand it
    their batches (``submit``) and go on reading; it takes everything queued
    -- the batches of many connections -- stores it in one transaction
    (group commit), delivers each message in id order while holding
    ``deliver_lock`` (so all members of a room see one order, and an account
    going live never misses or reorders a message), queues each sender's
    answers in the order of its requests, and flushes the outboxes it
    touched. A connection keeps at most ``MAX_BATCHES_IN_FLIGHT`` batches
    waiting, and waits for them all before any other request, so its replies
    stay in order. With an in-memory store (``--efemero``) storing costs
    nothing, so each connection does the same work itself, at once.
    """

    def __init__(self, store: armazem.Store | armazem.MemoryStore,
                 deliver: Callable[[Outgoing, Deliveries, Ticket], None],
                 turn: FairTurn | None = None) -> None:
        self.store = store
        self._deliver = deliver
        self._turn = turn
        self.deliver_lock = threading.Lock()
        self._cond = threading.Condition()  # guards the queues; wakes the committer
        self._queue: list[Ticket] = []
        self._urgent: list[Ticket] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.store.durable:
            self._thread = threading.Thread(target=self._run, daemon=True, name="gravador")
            self._thread.start()

    def stop(self, timeout: float) -> None:
        """Store and answer what is queued (bounded by ``timeout``), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @staticmethod
    def wait(ticket: Ticket, stop: threading.Event) -> None:
        """Wait until ``ticket`` is stored and answered, or ``stop`` is set.

        Each connection waits on its own event, so a finished group wakes
        exactly the connections that wait for it.
        """
        event = ticket.connection.batch_done
        while not stop.is_set():
            event.clear()
            if ticket.done:
                return
            event.wait(1.0)

    def submit(self, ticket: Ticket, urgent: bool = False) -> None:
        """Hand a batch over; ``ticket.done`` is set once it is stored and answered.

        An ``urgent`` batch (a light user's, with none of its connection's
        batches waiting in the other lane) goes in the next group, ahead of
        the busy ones.
        """
        if self._thread is None:
            self._process([ticket])
            return
        with self._cond:
            (self._urgent if urgent else self._queue).append(ticket)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._urgent) and not self._stopping:
                    self._cond.wait()
                tickets = self._next_group_locked()
                if not tickets:
                    return
            self._process(tickets)

    def _next_group_locked(self) -> list[Ticket]:
        """The light batches, then busy ones up to ``MAX_GROUP_MESSAGES``.

        A bounded group keeps a commit short, so a light user's message
        never waits behind thousands of others. (Light batches alone in a
        group of their own was measured too: their commits then came so
        often that everyone, light users included, waited longer.)
        """
        tickets, self._urgent = self._urgent, []
        queue = self._queue
        count = 0
        taken = 0
        while taken < len(queue) and count < MAX_GROUP_MESSAGES:
            count += len(queue[taken].slots)
            taken += 1
        tickets += queue[:taken]
        del queue[:taken]
        return tickets

    def _process(self, tickets: list[Ticket]) -> None:
        try:
            with self.deliver_lock:
                deliveries = Deliveries()
                stored = self._store(tickets)
                with self._turn_for_python():
                    if stored:
                        self._deliver_all(tickets, deliveries)
                    recipients = deliveries.put_all()
                    for ticket in tickets:
                        self._answer(ticket)
            # Still holding the turn: each send gives the GIL up for a moment,
            # and without the turn getting it back could mean waiting behind
            # every busy connection -- and a light user behind all of them.
            with self._turn_for_python():
                senders = {id(ticket.connection) for ticket in tickets}
                for recipient in recipients:  # the messages first: people wait for them
                    if id(recipient) not in senders:
                        recipient.outbox.flush()
                for ticket in tickets:
                    ticket.connection.outbox.flush()
        except Exception:  # a bug must not leave a sender waiting forever
            log.exception("erro inesperado ao guardar e entregar mensagens")
        finally:
            for ticket in tickets:
                ticket.done = True
                if self._thread is not None:
                    ticket.connection.batch_done.set()

    @contextlib.contextmanager
    def _turn_for_python(self) -> Iterator[None]:
        """Hold the connections' turn, ahead of the busy ones, for a stretch of Python work.

        Only the committer thread does this (inline processing already runs
        inside a connection's turn). Without it, each time the committer gave
        the GIL up -- every lock, every send -- it would wait for it behind
        whichever connection runs, and light users behind it. The SQLite work
        happens outside: it needs no GIL, and connections parse meanwhile.
        """
        held = False
        if self._thread is not None and self._turn is not None:
            held = self._turn.acquire(urgent=True)
        try:
            yield
        finally:
            if self._turn is not None:
                self._turn.release(held)

    def _store(self, tickets: list[Ticket]) -> bool:
        """Store every message of the group in one transaction; False (errors set) on failure.

        The rows are prepared holding the turn (Python work) and written
        without it (SQLite needs no GIL, and connections parse meanwhile).
        """
        try:
            with self._turn_for_python():
                outgoing = [slot for ticket in tickets for slot in ticket.slots
                            if type(slot) is Outgoing]
                if not outgoing:
                    return False
                prepared = self.store.prepare(outgoing)
            stamps = self.store.write(prepared)
        except armazem.StoreError as exc:
            log.error("falha ao guardar %d mensagem(ns): %s", len(outgoing), exc)
            for item in outgoing:
                item.error = f"o servidor não conseguiu guardar a mensagem ({exc})"
            return False
        for item, (message_id, time_ms) in zip(outgoing, stamps, strict=True):
            item.message_id, item.time_ms = message_id, time_ms
        return True

    def _deliver_all(self, tickets: list[Ticket], deliveries: Deliveries) -> None:
        """Queue every stored message for its recipients, in id order."""
        deliver = self._deliver
        for ticket in tickets:
            for slot in ticket.slots:
                if type(slot) is Outgoing:
                    deliver(slot, deliveries, ticket)

    @staticmethod
    def _answer(ticket: Ticket) -> None:
        """All of a ticket's answers, in order, in one append."""
        version = ticket.connection.version
        answers = [slot if type(slot) is bytes else slot.reply(version) for slot in ticket.slots]
        ticket.connection.outbox.put(answers[0] if len(answers) == 1 else b"".join(answers))


# --------------------------------------------------------------------------
# Accounts: passwords and their limits


class Passwords:
    """Hashing and checking passwords on a few threads of their own.

    A hash costs tens of milliseconds of CPU and 16 MiB of memory (by design:
    that is what makes stolen hashes slow to crack), so an unbounded number
    at once would be a lever to exhaust the server. ``threads`` bounds both:
    the work runs only on those long-lived threads (the connection waits for
    its answer), so the memory each hash needs is the same few buffers over
    and over -- on the connections' own threads, the C library kept one set
    per thread (20 logins at once took the server from 80 to 353 MiB). The
    per-address limits bound who may ask.
    """

    WAIT_BOUND = 60.0
    """Seconds a connection waits for its hash (a queue of 2,000 logins at most)."""

    def __init__(self, threads: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, threads), thread_name_prefix="senhas")

    def hash(self, password: str) -> str:
        return self._run(armazem.hash_password, password)

    def verify(self, password: str, record: str) -> bool:
        return self._run(armazem.verify_password, password, record)

    def _run(self, work: Callable[..., Any], *args: object) -> Any:
        """``work(*args)`` on the pool; ProtocolError (LIMITE) if not done in time or stopped."""
        try:
            future = self._pool.submit(work, *args)
        except RuntimeError:  # stopped: the server is closing
            raise ProtocolError(ErrorCode.LIMITE, "o servidor está encerrando") from None
        try:
            return future.result(self.WAIT_BOUND)
        # concurrent.futures.TimeoutError is not the builtin TimeoutError before 3.11
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()  # still queued: nobody wants it, don't spend the CPU
            raise ProtocolError(ErrorCode.LIMITE, "senhas demais sendo conferidas agora; "
                                "tente de novo em instantes") from None

    def stop(self) -> None:
        """No new work; what is queued is dropped (its connections are closing)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _recent(times: collections.deque[float], window: float, now: float) -> int:
    """How many of ``times`` fall within the last ``window`` seconds (old ones dropped)."""
    while times and now - times[0] > window:
        times.popleft()
    return len(times)


# --------------------------------------------------------------------------
# One client


class ClientConnection:
    """One client's socket, served by its own thread from accept to close.

    ``__slots__``: a server holds thousands of these, and with this many
    attributes an ordinary instance dictionary costs ~2 KiB each.
    """

    __slots__ = ("_after_reply", "_close_lock", "_close_reason", "_closed", "_deadline",
                 "_dropped_while_waiting", "_in_flight", "_light", "_pace_meter", "_quitting",
                 "_reply_bytes", "_sends", "_touched", "_turn", "account", "address",
                 "batch_done", "bucket", "config", "dropped_as_slow", "ip", "key", "live",
                 "name", "nick", "nick_bytes", "outbox", "port", "received_id", "relay",
                 "rooms", "server", "sock", "stopping", "thread", "transport", "version")

    def __init__(self, server: Servidor, sock: socket.socket, ip: str, port: int,
                 address: limites.AddressState) -> None:
        self.server = server
        self.config = server.config
        self.sock = sock
        self.ip = ip
        self.port = port
        self.address = address
        self.name = rede.format_host_port(ip, port)
        if self.config.tls_context is not None:
            self.transport: PlainTransport | TlsTransport = TlsTransport(
                sock, self.config.tls_context)
        else:
            self.transport = PlainTransport(sock)
        self.outbox = Outbox(self.transport, self.config.max_pending, self.name, self.abort,
                             self.config.send_timeout)
        self.version = 1
        self.nick: str | None = None
        self.key: str | None = None
        self.nick_bytes = b""
        self.relay = False
        self.account = False
        self.live = False
        """True once deliveries may go straight to this connection (after any catch-up)."""
        self.received_id = 0  # the cursor last stored for a version-1 account
        self.rooms: dict[str, Room] = {}
        self.bucket = limites.bucket_or_none(self.config.rate, self.config.burst)
        self._pace_meter = limites.TokenBucket(LIGHT_LINES_PER_S, LIGHT_LINES_PER_S)
        self._light = True
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"conexao-{self.name}")
        self.stopping = threading.Event()
        self.batch_done = threading.Event()
        """Set by the message log when one of this connection's batches is answered."""
        self._close_lock = threading.Lock()
        self._closed = False
        self._quitting = False
        self._close_reason = ""
        self._deadline = 0.0
        self._turn = False
        self._sends: list[Outgoing | bytes] = []  # ENVIAR answers not yet submitted, in order
        self._in_flight: collections.deque[Ticket] = collections.deque()
        self._touched: dict[int, ClientConnection] = {}
        self._after_reply: Callable[[], None] | None = None
        self._reply_bytes = 0
        self._dropped_while_waiting: set[str] = set()  # recipients' keys, to say why they went
        self.dropped_as_slow = False

    # -- life cycle --

    def run(self) -> None:
        """Thread body: serve requests until EOF, error, SAIR or abort."""
        reason = "cliente desconectou"
        try:
            self._arm_register_timer()
            self._handshake()
            reason = self._serve()
        except (ssl.SSLError, ConnectionError) as exc:
            reason = f"falha de rede: {exc}"
        except TimeoutError:  # keepalive or unacknowledged data: the peer vanished
            reason = "sem resposta da rede (a máquina do cliente sumiu?)"
        except OSError as exc:
            reason = f"falha de rede: {exc.strerror or exc}"
        except Exception:
            log.exception("erro inesperado na conexão %s", self.name)
            reason = "erro interno"
        finally:
            self._cleanup(self._close_reason or reason)

    def _handshake(self) -> None:
        """TLS only: bounded by the TEMPO clock, and by the address's handshake budget."""
        if not isinstance(self.transport, TlsTransport):
            return
        bucket = self.address.tls_handshakes
        if bucket is not None and not bucket.take():
            self.address.handshakes_refused += 1
            raise ConnectionError("handshakes TLS demais deste endereço")
        self.address.handshakes += 1
        try:
            self.transport.handshake(self._deadline)
        finally:
            self.address.handshakes -= 1

    def abort(self, reason: str) -> None:
        """Disconnect from any thread: wakes this connection's thread, which cleans up."""
        with self._close_lock:
            if self._closed:
                return
            if not self._close_reason:
                self._close_reason = reason
            self.stopping.set()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.outbox.close(flush=False)

    def _cleanup(self, reason: str) -> None:
        """The one exit path: every step runs even if an earlier one fails.

        A broken peer (a TLS state that raises, a socket already gone) must
        never keep its slot, its address count, its registration or its
        socket: each release is attempted on its own.
        """
        self.stopping.set()
        self._release_turn()
        steps = (
            self._fail_unsent,
            self._unregister,
            lambda: self.outbox.close(flush=True),
            self._wait_for_writer,
            self._close_socket,
            lambda: self.server.forget(self),
        )
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("erro ao encerrar a conexão %s", self.name)
        log.info("%s desconectado (%s)", self.name, reason)

    def _wait_for_writer(self) -> None:
        if not self.outbox.join(self.config.shutdown_flush):
            self.abort("saída não esvaziou a tempo")
            self.outbox.join(self.config.shutdown_flush)

    def _close_socket(self) -> None:
        with self._close_lock:
            self._closed = True
            self.sock.close()

    def drop_as_slow(self) -> None:
        """Disconnect a recipient that makes no progress while others wait for it."""
        self.dropped_as_slow = True
        self.abort("destinatário lento: não lê o que recebe")

    def push(self, line: bytes, message_id: int = 0) -> bool:
        """Queue a push for this client (any thread, any lock); False when it is congested."""
        return self.outbox.put(line, message_id)

    # -- reading --

    def _arm_register_timer(self) -> None:
        """Start (or, once registered, stop) the TEMPO clock of an unregistered connection."""
        limit = self.config.register_timeout
        self._deadline = time.monotonic() + limit if limit and self.key is None else 0.0

    def _serve(self) -> str:
        """Read and answer lines; returns why the connection ended."""
        splitter = protocolo.LineSplitter(self.config.max_line)
        while not self._quitting:
            allowance = self._pace()
            if not allowance:
                return self._close_reason or "encerrando"
            data = self._read(allowance)
            if data is None:
                self._send_now(protocolo.format_error(
                    ErrorCode.TEMPO, "nenhum comando completo a tempo; conexão encerrada"))
                return "tempo esgotado sem registro"
            if not data:
                return "cliente desconectou"
            lines = splitter.feed(data)
            self.address.charge_reading(len(lines), len(data))
            if lines:
                self._handle_lines(lines)
            if self._deadline and time.monotonic() > self._deadline:
                self._send_now(protocolo.format_error(
                    ErrorCode.TEMPO, "nenhum comando completo a tempo; conexão encerrada"))
                return "tempo esgotado sem registro"
        return "SAIR"

    def _pace(self) -> int:
        """Wait until this connection may read again; how many bytes it may read (0: closing).

        Two things hold a connection back: its address's budget (it sent, or
        caused, more than its share), and its own replies that it has not
        read yet. While it waits nothing is read, so TCP slows the client.
        The size of the next read is bounded by what the budget has left, so
        no single read -- of blank lines, say -- costs more than the budget.
        """
        self._settle_sends(keep=MAX_BATCHES_IN_FLIGHT)
        delay = self.address.reading_delay()
        while delay > 0:
            if self.stopping.wait(min(delay, 1.0)):
                return 0
            delay = self.address.reading_delay()
        if self.outbox.pending > OWN_OUTPUT_LOW_WATER and not self.outbox.wait_below(
                OWN_OUTPUT_LOW_WATER, self.config.send_timeout, self.stopping):
            if not self.stopping.is_set():
                self.abort("cliente parou de ler as respostas")
            return 0
        if self.stopping.is_set():
            return 0
        return self.address.read_allowance(RECV_CHUNK, THROTTLED_RECV_CHUNK)

    def _read(self, limit: int) -> bytes | None:
        """The next chunk from the peer; b"" at EOF; None when the TEMPO clock ran out.

        Where the platform allows (``rede.reads_may_block``) the socket is
        blocking and a registered connection simply waits in ``recv``: one
        system call per read. Otherwise, or while the TEMPO clock runs, it
        waits for data with a bound first.
        """
        blocking = self.server.blocking_reads
        while True:
            if (self._deadline or not blocking) and not self._wait_for_data():
                return None
            try:
                return self.transport.recv(limit)
            except BlockingIOError:  # nothing there yet, or a TLS record still incomplete
                if self.stopping.is_set():
                    return b""
                if self._deadline and time.monotonic() > self._deadline:
                    return None  # a record dribbled byte by byte does not buy time

    def _wait_for_data(self) -> bool:
        """Wait until the socket has something to read; False when the TEMPO clock ran out.

        Past the deadline, what is already waiting is still read: a client
        whose address was being slowed down may have sent its request in
        time without the server having read it yet. (``_serve`` then checks
        the clock again, so blank lines alone do not buy time.)
        """
        if self.transport.buffered:
            return True
        while True:
            timeout = None
            if self._deadline:
                timeout = max(0.0, self._deadline - time.monotonic())
            if rede.wait_readable(self.sock, timeout) or self.stopping.is_set():
                return True
            if timeout == 0.0:
                return False

    def _handle_lines(self, lines: list[bytes | protocolo.LineTooLong]) -> None:
        """Answer a batch of lines, a bounded number per turn, then flush what they touched."""
        self._reply_bytes = 0
        self._light = self._pace_meter.take(len(lines))
        if not self._light:
            # Empty it: otherwise a busy sender saves up between reads and
            # passes as light every few batches (and fills the urgent lanes).
            self._pace_meter.charge(max(0.0, self._pace_meter.level()))
        small = len(lines) <= LIGHT_BATCH_LINES
        for start in range(0, len(lines), MAX_LINES_PER_TURN):
            self._take_turn(small)
            try:
                for raw in lines[start:start + MAX_LINES_PER_TURN]:
                    if self._quitting or (self.outbox.pending > OWN_OUTPUT_HIGH_WATER
                                          and not self._wait_for_own_output()):
                        break
                    self._answer(raw)
                self._submit_sends()
                self._flush_touched()
            finally:
                self._release_turn()
            if self._quitting or self.stopping.is_set():
                break
        if self._reply_bytes:
            self.address.charge_reading(0, self._reply_bytes)

    def _wait_for_own_output(self) -> bool:
        """Serve nothing more until this client reads its replies; False if it never does."""
        self._settle_sends()
        self._flush_touched()
        drained = self._outside_turn(self.outbox.wait_below, OWN_OUTPUT_LOW_WATER,
                                     self.config.send_timeout, self.stopping)
        if not drained and not self.stopping.is_set():
            self.abort("cliente parou de ler as respostas")
        return bool(drained) and not self.stopping.is_set()

    def _take_turn(self, light: bool = False) -> None:
        if not self._turn:
            self._turn = self.server.turn.acquire(light)

    def _release_turn(self) -> None:
        if self._turn:
            self._turn = False
            self.server.turn.release(True)

    def _answer(self, raw: bytes | protocolo.LineTooLong) -> None:
        """Answer one line: a reply queued, an ENVIAR on its way, or nothing (blank)."""
        if raw is protocolo.LINE_TOO_LONG:
            if self._admitted():
                self._reply(protocolo.format_error(
                    ErrorCode.LINHA_LONGA, f"linha maior que {self.config.max_line} bytes"))
            return
        plain = protocolo.parse_plain_send(raw)
        if plain is not None:  # the hot path: an ordinary ENVIAR
            if self._admitted():
                self._queue_send(*plain)
            return
        if not raw.strip(b" "):
            return  # blank: no reply (it was paid for in the address's budget)
        if not self._admitted():
            return
        try:
            request = protocolo.parse_request(protocolo.decode_line(raw))
            if request is None:
                return
            if isinstance(request, protocolo.Send):
                self._queue_send(request.target, request.text, request.text.encode())
                return
            self._settle_sends()  # what was sent before this request happens before it
            reply = self._HANDLERS[type(request)](self, request)
        except ProtocolError as exc:
            reply = exc.to_line()
        self._reply(reply)
        if self._after_reply is not None:
            after, self._after_reply = self._after_reply, None
            after()

    def _admitted(self) -> bool:
        """Count a request against the rate limit; False (and LIMITE queued) when over it.

        A request also restarts the TEMPO clock of an unregistered connection
        (a blank line does not).
        """
        if self._deadline:
            self._deadline = time.monotonic() + self.config.register_timeout
        if self.bucket is not None and not self.bucket.take():
            self._reply(protocolo.format_error(
                ErrorCode.LIMITE, "muitos comandos por segundo; comando ignorado"))
            return False
        return True

    def _reply(self, line: bytes) -> None:
        """Queue a reply, in order with the ENVIAR answers still waiting for the store."""
        if self._sends or self._in_flight:
            self._sends.append(line)
            return
        self._reply_bytes += len(line)
        self.outbox.put(line)
        if self.outbox.pending > EARLY_FLUSH_BYTES:
            self.outbox.flush()  # e.g. pipelined LISTARs: don't pile them all up

    def _send_now(self, line: bytes) -> None:
        """Queue ``line`` and push it out at once (used right before closing)."""
        self.outbox.put(line)
        self.outbox.flush()

    # -- sending messages --

    def _require_registration(self) -> None:
        if self.key is None:
            raise ProtocolError(ErrorCode.NAO_REGISTRADO,
                                "registre-se primeiro com REGISTRAR <apelido>")

    def _require_relay(self) -> None:
        self._require_registration()
        if not self.relay:
            raise ProtocolError(ErrorCode.SO_DIRETO,
                                "um registro só de diretório não participa de salas")

    def _queue_send(self, target: str, text: str, raw_text: bytes) -> None:
        """Check an ENVIAR and put it on its way; its answer comes after the store."""
        try:
            if self.key is None:
                self._require_registration()
            if target.startswith("#"):
                outgoing = self._outgoing_to_room(target, text, raw_text)
            else:
                outgoing = self._outgoing_to_nick(target, text, raw_text)
        except ProtocolError as exc:
            self._reply(exc.to_line())
            return
        self._sends.append(outgoing)

    def _outgoing_to_room(self, name: str, text: str, raw_text: bytes) -> Outgoing:
        if not self.relay:
            raise ProtocolError(ErrorCode.SO_DIRETO,
                                "um registro só de diretório não participa de salas")
        if not protocolo.valid_room(name):
            raise ProtocolError(ErrorCode.SALA_INVALIDA, f"nome de sala inválido: {name[:40]}")
        room = self.rooms.get(protocolo.room_key(name))
        if room is None:
            raise ProtocolError(ErrorCode.NAO_MEMBRO, f"entre em {name} antes (ENTRAR {name})")
        return Outgoing(self, room.key, room.name, text, raw_text, room, False, False)

    def _outgoing_to_nick(self, nick: str, text: str, raw_text: bytes) -> Outgoing:
        key = protocolo.nick_key(nick)
        entry = self.server.registry.get(key)
        if entry is not None and not entry.connection.outbox.closed:
            if not entry.relay:
                raise ProtocolError(ErrorCode.SO_DIRETO,
                                    f"{entry.nick} está só no diretório e não recebe mensagens")
            if entry.connection.outbox.congested:
                self._wait_for_recipient(entry)
            target, account = entry.nick, entry.account
        elif key in self._dropped_while_waiting:
            self._dropped_while_waiting.discard(key)
            raise ProtocolError(ErrorCode.DESTINATARIO_LENTO,
                                f"{nick} não estava lendo as mensagens e foi desconectada")
        else:
            target = self._offline_account(nick, key)
            account = True
        wants_receipt = self.version >= 2 and self.account and account
        return Outgoing(self, key, target, text, raw_text, None, account, wants_receipt)

    def _offline_account(self, nick: str, key: str) -> str:
        """The account's nickname if ``nick`` is an offline account that may take one more."""
        store = self.server.store
        try:
            account = self.server.account(key)
            if account is None:
                raise ProtocolError(ErrorCode.NAO_ENCONTRADO, f"{nick} não está conectada")
            limit = self.config.max_pending_per_account
            if limit and store.pending_count(key) >= limit:
                raise ProtocolError(ErrorCode.LIMITE,
                                    f"{account.nick} já tem {limit} mensagens esperando")
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu consultar a conta ({exc})") from None
        return account.nick

    def _wait_for_recipient(self, entry: Entry) -> None:
        """Slow this sender down while the recipient has too much to read.

        A recipient that reads is never dropped because others send faster
        than it reads: its senders wait. One that takes nothing at all for
        ``stall_timeout`` is dropped, and the sender told.
        """
        recipient = entry.connection
        if recipient is self:
            return
        self._settle_sends()
        self._flush_touched()
        turn = self._turn
        self._release_turn()
        drained = recipient.outbox.wait_below(self.config.max_pending,
                                              self.config.stall_timeout, self.stopping)
        if turn:
            self._take_turn()
        if not drained and not self.stopping.is_set():
            recipient.drop_as_slow()
        if recipient.outbox.closed:  # dropped as slow, by us or by the maintenance round
            raise ProtocolError(ErrorCode.DESTINATARIO_LENTO,
                                f"{entry.nick} não está lendo as mensagens e foi desconectada")

    def _submit_sends(self) -> None:
        """Hand the ENVIARs read so far to the message log (their answers come in order)."""
        if self._sends:
            ticket = Ticket(self, self._sends)
            self._sends = []
            in_flight = self._in_flight
            while in_flight and in_flight[0].done and not in_flight[0].congested:
                in_flight.popleft()  # answered, and nobody to wait for: forget it
            # Urgent only behind urgent batches of ours: the urgent lane is served
            # first, in order, so our batches stay in order.
            urgent = self._light and all(t.urgent or t.done for t in in_flight)
            ticket.urgent = urgent
            self._in_flight.append(ticket)
            self.server.messages.submit(ticket, urgent)

    def _settle_sends(self, keep: int = 0) -> None:
        """Submit what is pending and wait until at most ``keep`` batches are in flight.

        Before any request other than ENVIAR every batch must be settled: its
        answers come first, and its messages are delivered before whatever
        the request changes. A sender whose messages found recipients past
        their bound waits here for them to read (it is slowed, they are not
        dropped); one that reads nothing for ``stall_timeout`` is dropped.
        """
        self._submit_sends()
        in_flight = self._in_flight
        congested: dict[int, ClientConnection] = {}
        while in_flight and (len(in_flight) > keep or in_flight[0].done):
            ticket = in_flight[0]
            if not ticket.done:
                self._outside_turn(self.server.messages.wait, ticket, self.stopping)
            in_flight.popleft()
            for recipient in ticket.congested:
                congested[id(recipient)] = recipient
        if congested:
            self._flush_touched()
            self._wait_for_congested(congested.values())

    def _wait_for_congested(self, recipients: Iterable[ClientConnection]) -> None:
        """Wait for recipients past their bound to read; drop those that stall."""
        turn = self._turn
        self._release_turn()
        for recipient in recipients:
            if recipient is self or recipient.outbox.closed:
                continue
            key = recipient.key
            if not recipient.outbox.wait_below(self.config.max_pending,
                                               self.config.stall_timeout, self.stopping) \
                    and not self.stopping.is_set():
                recipient.drop_as_slow()
            if recipient.dropped_as_slow and key is not None \
                    and len(self._dropped_while_waiting) < 64:
                self._dropped_while_waiting.add(key)  # the next ENVIAR to it says why
        if turn:
            self._take_turn()

    def _flush_touched(self) -> None:
        """Flush every outbox this batch queued to: recipients first, then our own replies.

        The recipients' messages are what people wait for, while this
        connection's own replies (the OKs) only let its sender send more.
        """
        touched = self._touched
        if touched:
            for other in touched.values():
                if other is not self:
                    other.outbox.flush()
            touched.clear()
        self.outbox.flush()

    # -- registration and accounts --

    def _handle_hello(self, request: protocolo.Hello) -> bytes:
        if self.key is not None:
            raise ProtocolError(ErrorCode.JA_REGISTRADO,
                                "OLA só vale antes do REGISTRAR")
        if request.version not in protocolo.SUPPORTED_VERSIONS:
            return protocolo.format_version_error()
        self.version = request.version
        return protocolo.OK_LINE

    def _handle_register(self, request: protocolo.Register) -> bytes:
        if self.key is not None:
            raise ProtocolError(ErrorCode.JA_REGISTRADO,
                                f"esta conexão já está registrada como {self.nick}")
        if not protocolo.valid_nick(request.nick):
            raise ProtocolError(ErrorCode.APELIDO_INVALIDO,
                                "use de 1 a 32 letras de um só alfabeto, dígitos de 0 a 9, "
                                "_, - ou .")
        if request.password is not None and not protocolo.valid_password(request.password):
            raise ProtocolError(ErrorCode.SENHA_INVALIDA,
                                f"a senha deve ter de {protocolo.MIN_PASSWORD_CHARS} a "
                                f"{protocolo.MAX_PASSWORD_CHARS} caracteres, sem caracteres "
                                "de controle")
        bucket = self.address.registrations
        if bucket is not None and not bucket.take():
            raise ProtocolError(ErrorCode.LIMITE,
                                "registros demais deste endereço; tente de novo em instantes")
        key = protocolo.nick_key(request.nick)
        if request.password is None:
            return self._register_without_account(request, key)
        return self._register_with_account(request, key)

    def _register_without_account(self, request: protocolo.Register, key: str) -> bytes:
        accounts_before = self.server.accounts_created
        if self._has_account(key):
            raise self._reserved(request.nick)
        relay = not request.directory_only
        ip = self.ip if relay else request.ip
        port = self.port if relay else request.port
        self._enter_registry(key, Entry(request.nick, ip, port, self, relay))
        # An account for this nickname may have been created (and its owner
        # gone) between the look-up and our entry: look again only if any was.
        if self.server.accounts_created != accounts_before and self._has_account(key):
            self._unregister()
            raise self._reserved(request.nick)
        self.live = True
        return protocolo.OK_LINE

    def _register_with_account(self, request: protocolo.Register, key: str) -> bytes:
        store = self.server.store
        if not store.accounts_enabled:
            raise ProtocolError(ErrorCode.SEM_CONTA,
                                "este servidor não guarda contas (modo efêmero); "
                                "registre-se sem senha")
        self._check_failed_passwords()
        try:
            record = store.password_record(key)
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu consultar as contas ({exc})") from None
        entry = Entry(request.nick, self.ip, self.port, self, True, account=True)
        if record is not None:
            if not self._verified(request.password, record):
                self.address.failed_passwords.append(time.monotonic())
                log.warning("%s errou a senha de %s", self.name, request.nick)
                raise ProtocolError(ErrorCode.SENHA_INCORRETA, "senha incorreta")
            self.server.account_keys.add(key)  # e.g. made by another process sharing the file
            self._enter_registry(key, entry)
        else:
            self._create_account(request, key, entry)
        self.account = True
        self._after_reply = self._catch_up
        return protocolo.OK_LINE

    def _create_account(self, request: protocolo.Register, key: str, entry: Entry) -> None:
        now = time.monotonic()
        limit = self.config.accounts_per_hour
        if limit and _recent(self.address.accounts_created, 3600.0, now) >= limit:
            raise ProtocolError(ErrorCode.LIMITE,
                                f"este endereço já criou {limit} contas na última hora")
        record = self._outside_turn(self.server.passwords.hash, request.password)
        self._enter_registry(key, entry)  # reserves the nickname before the account exists
        try:
            created = self.server.store.create_account(key, request.nick, record)
        except armazem.StoreError as exc:
            self._unregister()
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu criar a conta ({exc})") from None
        if not created:  # the store has it (made by another process sharing the file?)
            self.server.account_keys.add(key)
            self.server.accounts_created += 1
            self._unregister()
            raise self._reserved(request.nick)
        self.address.accounts_created.append(now)
        self.server.account_keys.add(key)
        self.server.accounts_created += 1  # before this registration can end
        log.info("%s criou a conta %s", self.name, request.nick)

    def _check_failed_passwords(self) -> None:
        limit = self.config.failed_passwords
        window = protocolo.FAILED_PASSWORDS_WINDOW_S
        failures = self.address.failed_passwords
        # Blocked until `window` after the limit-th failure of a run within `window`
        # (no failure is recorded while blocked, so the newest `limit` are that run).
        if limit and len(failures) >= limit and failures[-1] - failures[-limit] <= window \
                and time.monotonic() - failures[-1] < window:
            raise ProtocolError(ErrorCode.LIMITE,
                                "senhas erradas demais deste endereço; espere um minuto")

    def _verified(self, password: str, record: str) -> bool:
        return self._outside_turn(self.server.passwords.verify, password, record)

    def _outside_turn(self, work: Callable[..., object], *args: object) -> object:
        """Run slow work that needs no Python (a hash, a disk read) without holding the turn."""
        turn = self._turn
        self._release_turn()
        try:
            return work(*args)
        finally:
            if turn:
                self._take_turn()

    def _has_account(self, key: str) -> bool:
        try:
            return self._outside_turn(self.server.account, key) is not None
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu consultar as contas ({exc})") from None

    @staticmethod
    def _reserved(nick: str) -> ProtocolError:
        return ProtocolError(ErrorCode.APELIDO_RESERVADO,
                             f"{nick} tem conta: registre-se com REGISTRAR {nick} <senha>")

    def _enter_registry(self, key: str, entry: Entry) -> None:
        subscribers = self.server.registry.add(key, entry)
        if subscribers is None:
            raise ProtocolError(ErrorCode.APELIDO_EM_USO, f"{entry.nick} já está em uso")
        self.nick, self.key, self.relay = entry.nick, key, entry.relay
        self.nick_bytes = entry.nick.encode()
        self._arm_register_timer()
        for subscriber in subscribers:
            self._touched[id(subscriber)] = subscriber
        log.info("%s registrou-se como %s%s", self.name, entry.nick,
                 "" if entry.relay else " (só diretório)")

    def _catch_up(self) -> None:
        """Push what waited for this account, oldest first, then go live.

        Runs right after the registration's OK. Pages come from the store
        while this connection's outbox drains; the last page is read under
        the message log's delivery lock, which is also when the connection
        goes live -- so no message is missed, and none overtakes another.
        """
        store, log_ = self.server.store, self.server.messages
        last = 0
        try:
            while not self.stopping.is_set():
                page = self._outside_turn(store.pending_messages, self.key, last, CATCH_UP_PAGE)
                if len(page) < CATCH_UP_PAGE:
                    with log_.deliver_lock:
                        for message in store.pending_messages(self.key, last, 10 * CATCH_UP_PAGE):
                            self._push_stored(message)
                        self.live = True
                    break
                for message in page:
                    self._push_stored(message)
                last = page[-1].id
                self._flush_touched()
                self._outside_turn(self.outbox.wait_below, OWN_OUTPUT_LOW_WATER,
                                   self.config.send_timeout, self.stopping)
            if self.version >= 2:
                self._push_receipts_due()
        except armazem.StoreError as exc:
            log.error("%s: falha ao ler mensagens pendentes de %s: %s", self.name, self.nick, exc)
            self.live = True  # what waits stays stored, for the next registration
        if self.version == 1:
            self.server.watch_cursor(self)

    def _push_stored(self, message: armazem.StoredMessage) -> None:
        if self.version >= 2:
            line = protocolo.format_msg_v2(message.id, message.time_ms, message.sender,
                                           message.target, message.text)
            self.push(line)
        else:
            self.push(protocolo.format_msg(message.sender, message.target, message.text),
                      message.id)

    def _push_receipts_due(self) -> None:
        store = self.server.store
        while not self.stopping.is_set():
            receipts = self._outside_turn(store.receipts_due, self.key, CATCH_UP_PAGE)
            for receipt in receipts:
                self.push(protocolo.format_delivered(receipt.message_id, receipt.recipient))
            if receipts:
                store.mark_receipts_sent([receipt.message_id for receipt in receipts])
            if len(receipts) < CATCH_UP_PAGE:
                return

    # -- requests --

    def _handle_list(self, request: protocolo.ListUsers) -> bytes:
        return self.server.registry.listing_reply()

    def _handle_lookup(self, request: protocolo.Lookup) -> bytes:
        entry = self.server.registry.get(protocolo.nick_key(request.nick))
        if entry is None:
            return protocolo.NOT_FOUND_LINE
        return protocolo.format_found(entry.ip, entry.port)

    def _handle_unregister(self, request: protocolo.Unregister) -> bytes:
        self._require_registration()
        if request.nick is not None and protocolo.nick_key(request.nick) != self.key:
            raise ProtocolError(ErrorCode.PROIBIDO,
                                "só é possível cancelar o próprio registro")
        self._unregister()
        self._arm_register_timer()
        return protocolo.OK_LINE

    def _handle_subscribe(self, request: protocolo.Subscribe) -> bytes:
        self._require_registration()
        self.server.registry.subscribe(self.key, self)
        return protocolo.OK_LINE

    def _handle_ping(self, request: protocolo.Ping) -> bytes:
        return protocolo.format_pong(request.token)

    def _handle_quit(self, request: protocolo.Quit) -> bytes:
        self._unregister()
        self._quitting = True
        return protocolo.OK_LINE

    def _handle_join(self, request: protocolo.Join) -> bytes:
        self._require_relay()
        name = request.room
        if not protocolo.valid_room(name):
            raise ProtocolError(ErrorCode.SALA_INVALIDA, f"nome de sala inválido: {name[:40]}")
        key = protocolo.room_key(name)
        if key in self.rooms:
            return protocolo.OK_LINE
        if len(self.rooms) >= protocolo.MAX_ROOMS_PER_CONNECTION:
            raise ProtocolError(ErrorCode.LIMITE, f"no máximo {protocolo.MAX_ROOMS_PER_CONNECTION}"
                                " salas por conexão")
        room = self.server.rooms.join(key, name, self)
        self.rooms[key] = room
        self._touch_members(room)
        return protocolo.OK_LINE

    def _handle_leave(self, request: protocolo.Leave) -> bytes:
        self._require_relay()
        if not protocolo.valid_room(request.room):
            raise ProtocolError(ErrorCode.SALA_INVALIDA,
                                f"nome de sala inválido: {request.room[:40]}")
        room = self.rooms.pop(protocolo.room_key(request.room), None)
        if room is None:
            raise ProtocolError(ErrorCode.NAO_MEMBRO, f"você não está em {request.room}")
        self.server.rooms.leave(room, self)
        self._touch_members(room)
        return protocolo.OK_LINE

    def _touch_members(self, room: Room) -> None:
        for member in room.members:
            self._touched[id(member)] = member

    def _handle_members(self, request: protocolo.Members) -> bytes:
        if not protocolo.valid_room(request.room):
            raise ProtocolError(ErrorCode.SALA_INVALIDA,
                                f"nome de sala inválido: {request.room[:40]}")
        room = self.server.rooms.get(protocolo.room_key(request.room))
        members = sorted(room.members if room else (), key=lambda m: m.key or "")
        return protocolo.format_users([(m.nick, m.ip, m.port) for m in members if m.nick])

    def _handle_rooms(self, request: protocolo.ListRooms) -> bytes:
        return protocolo.format_rooms(self.server.rooms.listing())

    def _handle_received(self, request: protocolo.Received) -> bytes:
        self._require_registration()
        if not self.account:
            raise ProtocolError(ErrorCode.SEM_CONTA, "RECEBIDO vale só para contas (com senha)")
        self.server.mark_received(self.key, request.message_id)
        return protocolo.OK_LINE

    def _handle_history(self, request: protocolo.History) -> bytes:
        self._require_registration()
        store = self.server.store
        limit = min(request.limit or protocolo.HISTORY_DEFAULT_LIMIT, protocolo.HISTORY_MAX_LIMIT)
        target = request.target
        if protocolo.is_room(target):
            if not protocolo.valid_room(target):
                raise ProtocolError(ErrorCode.SALA_INVALIDA,
                                    f"nome de sala inválido: {target[:40]}")
            read: Callable[[], list[armazem.StoredMessage]] = functools.partial(
                store.history_room, protocolo.room_key(target), request.before_id, limit)
        else:
            if not self.account:
                raise ProtocolError(ErrorCode.SEM_CONTA,
                                    "o histórico de conversas é só para contas (com senha)")
            if not protocolo.valid_nick(target):
                raise ProtocolError(ErrorCode.APELIDO_INVALIDO, f"apelido inválido: {target[:40]}")
            read = functools.partial(store.history_pair, self.key, protocolo.nick_key(target),
                                     request.before_id, limit)
        try:
            items = self._outside_turn(read)
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu ler o histórico ({exc})") from None
        return _history_reply(items)

    def _handle_change_password(self, request: protocolo.ChangePassword) -> bytes:
        self._require_registration()
        if not self.account:
            raise ProtocolError(ErrorCode.SEM_CONTA, "esta conexão não está registrada com conta")
        if not protocolo.valid_password(request.new):
            raise ProtocolError(ErrorCode.SENHA_INVALIDA,
                                f"a senha deve ter de {protocolo.MIN_PASSWORD_CHARS} a "
                                f"{protocolo.MAX_PASSWORD_CHARS} caracteres, sem caracteres "
                                "de controle")
        self._check_failed_passwords()
        store = self.server.store
        try:
            record = store.password_record(self.key)
            if record is None or not self._verified(request.current, record):
                self.address.failed_passwords.append(time.monotonic())
                raise ProtocolError(ErrorCode.SENHA_INCORRETA, "senha atual incorreta")
            new_record = self._outside_turn(self.server.passwords.hash, request.new)
            store.set_password_record(self.key, new_record)
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu trocar a senha ({exc})") from None
        log.info("%s trocou a senha de %s", self.name, self.nick)
        return protocolo.OK_LINE

    _HANDLERS: ClassVar[dict[type, Callable[..., bytes]]] = {
        protocolo.Hello: _handle_hello,
        protocolo.Register: _handle_register,
        protocolo.ListUsers: _handle_list,
        protocolo.Lookup: _handle_lookup,
        protocolo.Unregister: _handle_unregister,
        protocolo.Subscribe: _handle_subscribe,
        protocolo.Ping: _handle_ping,
        protocolo.Quit: _handle_quit,
        protocolo.Join: _handle_join,
        protocolo.Leave: _handle_leave,
        protocolo.Members: _handle_members,
        protocolo.ListRooms: _handle_rooms,
        protocolo.Received: _handle_received,
        protocolo.History: _handle_history,
        protocolo.ChangePassword: _handle_change_password,
    }

    # -- leaving --

    def _fail_unsent(self) -> None:
        """ENVIARs read but never stored when the connection ends: nothing to answer."""
        self._sends.clear()

    def _unregister(self) -> None:
        """Leave every room, drop the registration and tell who must know."""
        if self.key is None:
            return
        nick, key = self.nick, self.key
        touched: list[ClientConnection] = []
        try:
            if self.account and self.version == 1:
                self.server.save_cursor(self)
        finally:
            rooms, self.rooms = list(self.rooms.values()), {}
            for room in rooms:
                self.server.rooms.leave(room, self)
                touched.extend(room.members)
            touched.extend(self.server.registry.remove(key, self))
            self.nick = self.key = None
            self.relay = self.account = self.live = False
            self.received_id = 0  # the cursor is the account's, not the connection's
            self.server.unwatch_cursor(self)
            log.info("%s: registro de %s removido", self.name, nick)
            for other in touched:
                if other is not self:
                    other.outbox.flush()


def _history_reply(items: list[armazem.StoredMessage]) -> bytes:
    """HISTORICO's reply with the newest items that fit in ``HISTORY_REPLY_MAX_BYTES``."""
    rows = [(m.id, m.time_ms, m.sender, m.target, m.text) for m in items]
    reply = protocolo.format_history(rows)
    while len(reply) > HISTORY_REPLY_MAX_BYTES and rows:
        rows = rows[max(1, len(rows) // 8):]
        reply = protocolo.format_history(rows)
    return reply


# --------------------------------------------------------------------------
# The server


class Servidor:
    """The chat server: listening sockets, an accept thread, the connections.

    Life cycle, as in ``socketserver``: construct, ``start()`` (binds and
    serves in background threads; ``address`` then holds the real port),
    ``stop()`` from any thread (idempotent, bounded). Also a context manager.
    The store in ``config.store`` belongs to the caller, who closes it.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.store = self.config.store or armazem.MemoryStore()
        self.registry = Registry()
        self.rooms = Rooms()
        self.turn = FairTurn()
        self.addresses = limites.AddressBook(self.config.address_limits())
        self.messages = MessageLog(self.store, self._deliver, self.turn)
        self.passwords = Passwords(self.config.hashing_threads)
        self.accounts_created = 0
        """Accounts this server created: a registration without one looks again if it grew."""
        self.account_keys: set[str] = {account.key for account in self.store.list_accounts()}
        """The nicknames that have (or had) an account. Accounts are created through this
        server, so a nickname outside this set has none, and most look-ups never reach
        the store; a hit is confirmed with the store (the administrator may have removed
        it). One made by another server on the same file joins at its first login here."""
        self.blocking_reads = rede.reads_may_block()
        """Connection sockets stay blocking for their readers (see ``ClientConnection._read``)."""
        self.discovery: descoberta.DiscoveryResponder | None = None
        self._listeners: list[socket.socket] = []
        self._connections: set[ClientConnection] = set()
        self._cursor_watch: set[ClientConnection] = set()
        self._lock = threading.Lock()  # guards _connections and _cursor_watch
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._maintenance_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = False

    # -- life cycle --

    def __enter__(self) -> Servidor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listening socket."""
        host, port = self._listeners[0].getsockname()[:2]
        return host, port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def connections(self) -> list[ClientConnection]:
        """A snapshot of the open connections (for tests and diagnostics)."""
        with self._lock:
            return list(self._connections)

    def start(self) -> None:
        """Bind the listening socket(s) and serve in background threads."""
        self._listeners = self._bind()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        for listener in self._listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ)
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="aceitador")
        self._accept_thread.start()
        self._maintenance_thread = threading.Thread(target=self._maintenance_loop, daemon=True,
                                                    name="manutencao")
        self._maintenance_thread.start()
        self.messages.start()
        port = self.address[1]
        if self.config.discovery:
            self._start_discovery(port)
        # Last: the line that says the server is up comes when every thread is.
        for listener in self._listeners:
            host = listener.getsockname()[0]
            where = {"::": "todas as interfaces (IPv4 e IPv6)",
                     "0.0.0.0": "todas as interfaces (IPv4)"}.get(host, host)
            log.info("servidor escutando em %s porta %d%s", where, port,
                     " (TLS)" if self.config.tls_context else "")

    def _start_discovery(self, port: int) -> None:
        """Answer DESCOBRIR on the same port, on every IPv4 interface (as the contract says).

        Always every interface: a socket bound to one unicast address never
        hears broadcasts, so ``--host`` does not narrow this down.
        """
        self.discovery = descoberta.DiscoveryResponder(
            port, self.config.tls_context is not None,
            self.config.name or socket.gethostname())
        try:
            self.discovery.start()
        except OSError as exc:
            log.warning("descoberta na rede local desligada: porta UDP %d indisponível (%s)",
                        port, exc.strerror or exc)
            self.discovery = None

    def stop(self) -> None:
        """Stop accepting, flush queued output (bounded), close everything; within ~3 s."""
        if self._stopped or self._accept_thread is None:
            return
        self._stopped = True
        deadline = time.monotonic() + self.config.shutdown_flush
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self.discovery is not None:
            self.discovery.stop()
        self._accept_thread.join(1.0)
        for listener in self._listeners:
            listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        connections = self.connections()
        for connection in connections:
            connection.stopping.set()  # no more reading: a flood ends here
        for connection in connections:
            connection.outbox.close(flush=True)
        for connection in connections:
            connection.outbox.join(deadline - time.monotonic())
        for connection in connections:
            connection.abort("servidor encerrando")
        self.passwords.stop()  # wakes connections waiting for a queued hash
        end = deadline + 1.0
        for connection in connections:
            connection.thread.join(max(0.0, end - time.monotonic()))
        self._maintenance_thread.join(max(0.0, end - time.monotonic()))
        self.messages.stop(max(0.1, end - time.monotonic()))
        log.info("servidor encerrado")

    def _bind(self) -> list[socket.socket]:
        host, port = self.config.host, self.config.port
        backlog = 1024
        if host in ("", "::") and socket.has_dualstack_ipv6():
            return [socket.create_server(("::", port), family=socket.AF_INET6,
                                         backlog=backlog, reuse_port=False,
                                         dualstack_ipv6=True)]
        if host == "":
            host = "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family == socket.AF_INET and not host.replace(".", "").isdigit():
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return [socket.create_server((host, port), family=family, backlog=backlog)]

    # -- accepting --

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self._selector.select()
            except (OSError, ValueError):  # closed by stop()
                return
            for key, _ in events:
                if key.fileobj is self._wake_r:
                    return
                self._accept_from(key.fileobj)

    def _accept_from(self, listener: socket.socket) -> None:
        """Accept every pending connection on ``listener`` (bounded per round)."""
        for _ in range(256):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: out of file descriptors
                log.error("falha ao aceitar conexão: %s", exc)
                self._stopping.wait(0.05)
                return
            ip, port = _plain_ip(addr[0]), addr[1]
            state, refusal = self.addresses.admit(ip, len(self._connections))
            if state is None:
                log.warning("conexão de %s recusada: %s", ip, refusal)
                self._refuse(sock, refusal)
                continue
            self._serve_connection(sock, ip, port, state)

    def _serve_connection(self, sock: socket.socket, ip: str, port: int,
                          state: limites.AddressState) -> None:
        try:
            sock.setblocking(self.blocking_reads)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
            idle = self.config.keepalive_idle
            rede.enable_keepalive(sock, idle, max(1.0, idle / 6), protocolo.KEEPALIVE_PROBES)
            connection = ClientConnection(self, sock, ip, port, state)
        except OSError as exc:  # the peer reset before we got to it
            log.warning("conexão de %s perdida ao configurar: %s", ip, exc)
            sock.close()
            self.addresses.release(state)
            return
        with self._lock:
            self._connections.add(connection)
        log.info("conexão de %s", connection.name)
        try:
            connection.thread.start()
        except RuntimeError as exc:  # out of threads: drop this one, keep accepting
            log.error("conexão de %s recusada: %s", connection.name, exc)
            sock.close()
            self.forget(connection)

    def _refuse(self, sock: socket.socket, why: str) -> None:
        """Tell a refused client why (plain TCP only), without ever blocking."""
        try:
            sock.setblocking(False)
            if self.config.tls_context is None:
                sock.send(protocolo.format_error(ErrorCode.LOTADO, why))
                # Closing with unread input sends a TCP reset, and some systems
                # then discard the line above before the client reads it; so
                # take what the client already sent (its REGISTRAR, typically).
                sock.recv(65536)
        except OSError:
            pass
        finally:
            sock.close()

    def forget(self, connection: ClientConnection) -> None:
        """Called once by each connection as its thread ends: frees its slot and count."""
        with self._lock:
            self._connections.discard(connection)
            self._cursor_watch.discard(connection)
        self.addresses.release(connection.address)

    # -- delivery (called by the message log, under its delivery lock) --

    def _deliver(self, item: Outgoing, deliveries: Deliveries, ticket: Ticket) -> None:
        """Queue a stored message for its recipients (the message log holds its lock)."""
        if item.chat_room is None:
            entry = self.registry.get(item.target_key)
            if entry is None or not entry.relay:
                return  # offline: an account finds it in the store when it comes back
            recipient = entry.connection
            if not recipient.live and entry.account:
                return  # catching up: it reads this one from the store
            if recipient.version >= 2:
                deliveries.add(recipient, protocolo.format_msg_v2(
                    item.message_id, item.time_ms, item.sender, entry.nick, item.text), ticket)
            else:
                line = protocolo.format_msg_bytes(item.sender_bytes, recipient.nick_bytes,
                                                  item.raw_text)
                deliveries.add(recipient, line, ticket,
                               item.message_id if recipient.account else 0)
            return
        sender = item.connection
        v1_line = v2_line = None
        for member in item.chat_room.members:
            if member is sender:
                continue
            if member.version >= 2:
                if v2_line is None:
                    v2_line = protocolo.format_msg_v2(item.message_id, item.time_ms,
                                                      item.sender, item.target, item.text)
                deliveries.add(member, v2_line, ticket)
            else:
                if v1_line is None:
                    v1_line = protocolo.format_msg_bytes(
                        item.sender_bytes, item.target.encode(), item.raw_text)
                deliveries.add(member, v1_line, ticket)

    # -- accounts --

    def account(self, key: str) -> armazem.Account | None:
        """The account of a nickname key, or None; raises ``armazem.StoreError``."""
        if key not in self.account_keys:
            return None
        # A key stays in the set even when the store says the administrator removed
        # its account: discarding it could race with a connection creating the
        # account again (its add, then our discard) and leave a live account
        # unreserved. A removed nickname just keeps costing a look-up.
        return self.store.get_account(key)

    # -- cursors and receipts --

    def mark_received(self, key: str, message_id: int) -> None:
        """Store an account's cursor and push the receipts it made due."""
        try:
            receipts = self.store.mark_received(key, message_id)
        except armazem.StoreError as exc:
            raise ProtocolError(ErrorCode.ARMAZENAMENTO,
                                f"o servidor não conseguiu guardar o recebimento ({exc})") from None
        sent: list[int] = []
        for receipt in receipts:
            entry = self.registry.get(receipt.sender_key)
            if entry is None or not entry.account or not entry.connection.live \
                    or entry.connection.version < 2:
                continue  # pushed at its next version-2 registration
            entry.connection.push(protocolo.format_delivered(receipt.message_id,
                                                             receipt.recipient))
            entry.connection.outbox.flush()
            sent.append(receipt.message_id)
        if sent:
            self.store.mark_receipts_sent(sent)

    def watch_cursor(self, connection: ClientConnection) -> None:
        """A version-1 account: its cursor follows what the kernel took (saved periodically)."""
        with self._lock:
            self._cursor_watch.add(connection)

    def unwatch_cursor(self, connection: ClientConnection) -> None:
        with self._lock:
            self._cursor_watch.discard(connection)

    def save_cursor(self, connection: ClientConnection) -> None:
        written, key = connection.outbox.written_id, connection.key
        if key is not None and written > connection.received_id:
            connection.received_id = written
            try:
                self.mark_received(key, written)
            except ProtocolError as exc:
                log.error("cursor de %s não foi guardado: %s", connection.nick, exc.text)

    # -- maintenance --

    def _maintenance_loop(self) -> None:
        """Every half second: cursors, stalled peers, the total output bound, old addresses."""
        last_prune = 0.0
        while not self._stopping.wait(MAINTENANCE_INTERVAL):
            try:
                with self._lock:
                    watched = list(self._cursor_watch)
                for connection in watched:
                    self.save_cursor(connection)
                self._drop_stalled()
                self.addresses.forget_idle()
                now = time.monotonic()
                if now - last_prune > 3600.0:
                    last_prune = now
                    self.store.prune()
            except Exception:
                log.exception("erro na manutenção periódica")

    def _drop_stalled(self) -> None:
        """Drop peers that take nothing, and the worst ones when all output is too much."""
        now = time.monotonic()
        config = self.config
        total = 0
        heavy: list[tuple[int, ClientConnection]] = []
        for connection in self.connections():
            outbox = connection.outbox
            pending = outbox.pending
            total += pending
            stalled = outbox.stalled_for(now)
            if config.send_timeout and stalled > config.send_timeout:
                connection.abort("cliente parou de ler")
            elif outbox.congested and config.stall_timeout and stalled > config.stall_timeout:
                connection.drop_as_slow()
            elif config.max_pending and pending > 4 * config.max_pending:
                connection.abort("saída pendente cheia")
            elif pending > config.max_pending:
                heavy.append((pending, connection))
        if config.max_total_pending and total > config.max_total_pending:
            heavy.sort(key=lambda item: item[0], reverse=True)
            for pending, connection in heavy:
                connection.abort("memória do servidor cheia: saída pendente grande demais")
                total -= pending
                if total <= config.max_total_pending:
                    break


# --------------------------------------------------------------------------
# Command line


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server-side TLS context from a certificate chain and its private key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _number(kind: type, minimum: float = 0, maximum: float | None = None
            ) -> Callable[[str], int | float]:
    """An argparse ``type``: ``kind`` (int or float), finite, within the bounds.

    A negative limit would not mean "no limit" but refuse or cut everybody,
    so the command line rejects it rather than starting a useless server.
    """
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"valor inválido: {text}") from None
        if not math.isfinite(value) or value < minimum or (maximum is not None
                                                           and value > maximum):
            bounds = f"de {minimum:g} a {maximum:g}" if maximum is not None \
                else f"maior ou igual a {minimum:g}"
            raise argparse.ArgumentTypeError(f"valor inválido: {text} (use um número {bounds})")
        return value
    convert.__name__ = {"int": "inteiro", "float": "número"}.get(kind.__name__, kind.__name__)
    return convert


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    parser = argumentos.PortugueseArgumentParser(
        prog="servidor.py",
        description="Servidor do chat (protocolo de linhas sobre TCP). Para administrar as "
                    "contas: servidor.py contas --help",
        epilog="Exemplo: python3 servidor.py --nome 'Lab 3' --retencao 180")
    add = parser.add_argument
    off = "; 0 = sem limite"
    add("--host", default="", metavar="ENDEREÇO",
        help="endereço de escuta (padrão: todas as interfaces, IPv4 e IPv6)")
    add("--port", type=_number(int, 0, 65535), default=protocolo.DEFAULT_PORT, metavar="PORTA",
        help=f"porta TCP, e UDP para a descoberta (padrão: {protocolo.DEFAULT_PORT})")
    add("--nome", default="", metavar="TEXTO",
        help="nome anunciado às buscas na rede local (padrão: o nome desta máquina)")
    add("--sem-descoberta", action="store_true",
        help="não responder às buscas de servidor na rede local (UDP)")
    add("--dados", metavar="CAMINHO",
        help=f"arquivo de dados, mensagens e contas (padrão: {armazem.default_data_path()})")
    add("--efemero", action="store_true",
        help="não guardar nada em disco: sem contas, e nada sobrevive a um reinício")
    add("--retencao", type=_number(float), default=0, metavar="DIAS",
        help="apagar mensagens com mais de DIAS dias (padrão: 0, guardar tudo)")
    add("--fsync", action="store_true",
        help="gravar cada lote de mensagens no disco antes do OK: resiste a queda de energia, "
             "mais lento")
    add("--max-pendentes", type=_number(int), default=d.max_pending_per_account, metavar="N",
        help=f"mensagens que podem esperar por uma conta desconectada{off} "
             f"(padrão: {d.max_pending_per_account})")
    add("--max-clientes", type=_number(int), default=d.max_clients, metavar="N",
        help=f"máximo de conexões simultâneas{off} (padrão: {d.max_clients})")
    add("--max-por-ip", type=_number(int), default=d.max_per_ip, metavar="N",
        help=f"máximo de conexões por endereço IP{off} (padrão: {d.max_per_ip})")
    add("--max-linha", type=_number(int, 2), default=d.max_line, metavar="BYTES",
        help=f"bytes por linha de comando (padrão: {d.max_line})")
    add("--max-fila", type=_number(int), default=d.max_pending, metavar="BYTES",
        help="saída pendente de uma conexão a partir da qual quem lhe envia espera "
             f"(padrão: {d.max_pending})")
    add("--taxa", type=_number(float), default=d.rate, metavar="N",
        help=f"comandos por segundo por conexão{off} (padrão: {d.rate:g})")
    add("--rajada", type=_number(int, 1), default=d.burst, metavar="N",
        help=f"rajada de comandos permitida por conexão (padrão: {d.burst})")
    add("--taxa-ip", type=_number(float), default=d.address_lines, metavar="N",
        help=f"linhas por segundo por endereço IP, somando as conexões{off} "
             f"(padrão: {d.address_lines:g}, rajada de {d.address_lines_burst})")
    add("--banda-ip", type=_number(float), default=d.address_bytes, metavar="BYTES",
        help=f"bytes por segundo por endereço IP, lidos e de respostas{off} "
             f"(padrão: {d.address_bytes:.0f})")
    add("--registros-ip", type=_number(float), default=d.registrations, metavar="N",
        help=f"registros por segundo por endereço IP{off} "
             f"(padrão: {d.registrations:g}, rajada de {d.registrations_burst})")
    add("--max-falhas-senha", type=_number(int), default=d.failed_passwords, metavar="N",
        help="senhas erradas por endereço em 60 s antes de bloquear por um minuto"
             f"{off} (padrão: {d.failed_passwords})")
    add("--max-contas-hora", type=_number(int), default=d.accounts_per_hour, metavar="N",
        help=f"contas criadas por endereço por hora{off} (padrão: {d.accounts_per_hour})")
    add("--tempo-registro", type=_number(float), default=d.register_timeout, metavar="S",
        help="segundos que uma conexão sem registro pode ficar sem mandar um comando"
             f"{off} (padrão: {d.register_timeout:g})")
    add("--keepalive", type=_number(float, 1), default=d.keepalive_idle, metavar="S",
        help="segundos de silêncio antes de sondar um cliente (TCP keepalive); quem sumiu da "
             f"rede sai em S + {protocolo.KEEPALIVE_PROBES} × S/6 s, com pelo menos 1 s entre "
             f"sondas (padrão: {d.keepalive_idle:g}, ou seja, "
             f"{rede.keepalive_bound(d.keepalive_idle, d.keepalive_idle / 6)} s)")
    add("--tls-cert", metavar="ARQUIVO", help="certificado (PEM) para servir só TLS")
    add("--tls-key", metavar="ARQUIVO", help="chave privada (PEM) do certificado")
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        metavar="NÍVEL", help="nível de log: DEBUG, INFO, WARNING ou ERROR (padrão: INFO)")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The configuration the options describe (without the store: see ``open_store``)."""
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("erro: --tls-cert e --tls-key devem ser usados juntos")
        tls = make_tls_context(args.tls_cert, args.tls_key)
    return ServerConfig(
        host=args.host, port=args.port, max_clients=args.max_clientes,
        max_per_ip=args.max_por_ip, max_line=args.max_linha, max_pending=args.max_fila,
        rate=args.taxa, burst=args.rajada, address_lines=args.taxa_ip,
        address_bytes=args.banda_ip, registrations=args.registros_ip,
        failed_passwords=args.max_falhas_senha, accounts_per_hour=args.max_contas_hora,
        max_pending_per_account=args.max_pendentes, register_timeout=args.tempo_registro,
        keepalive_idle=args.keepalive, tls_context=tls, discovery=not args.sem_descoberta,
        name=args.nome)


def open_store(args: argparse.Namespace) -> armazem.Store | armazem.MemoryStore:
    """The message store the options ask for; raises ``armazem.StoreError``."""
    if args.efemero:
        return armazem.MemoryStore()
    path = args.dados or armazem.default_data_path()
    return armazem.Store.open(path, fsync=args.fsync, retention_days=args.retencao)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 servidor.py`` and of the ``chat-servidor`` script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["contas"]:
        return armazem.run_accounts_command(argv[1:])
    args = build_parser().parse_args(argv)
    with diario.configure(args.log_level):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (OSError, ssl.SSLError) as exc:
        log.error("não foi possível carregar o certificado TLS: %s", exc)
        return 2
    try:
        config.store = open_store(args)
    except armazem.StoreError as exc:
        log.error("não foi possível abrir os dados: %s", exc)
        return 2
    if config.store.durable:
        log.info("dados (mensagens e contas) em %s", config.store.path)
    else:
        log.info("modo efêmero: nada é guardado em disco e não há contas")
    threading.stack_size(CONNECTION_STACK_SIZE)
    # Handlers first: a signal that arrives as soon as the server is
    # listening must still mean a clean stop and exit status 0.
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):  # SIGBREAK: Ctrl+Break on Windows
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, request_stop)
    server = Servidor(config)
    try:
        server.start()
    except OSError as exc:
        log.error("não foi possível escutar na porta %d: %s", config.port, exc.strerror or exc)
        config.store.close()
        return 1
    _announce_addresses(server.address[1], config)
    while not stop_requested.wait(0.5):
        pass
    log.info("encerrando (sinal recebido)")
    server.stop()
    config.store.close()
    return 0


def _announce_addresses(port: int, config: ServerConfig) -> None:
    """Tell the teacher which addresses the other machines can use."""
    if config.host not in ("", "::", "0.0.0.0"):
        return
    addresses = rede.lan_addresses()
    for ip in addresses:
        log.info("outras máquinas podem conectar em %s", rede.format_host_port(ip, port))
    if not addresses:
        log.warning("nenhum endereço de rede local encontrado: esta máquina está na rede?")


if __name__ == "__main__":
    sys.exit(main())
