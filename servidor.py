"""Chat server: one thread per connection, a shared registry, relayed messages.

How a line travels, so a reader can follow it:

1. ``Servidor`` accepts a socket and starts a ``ClientConnection`` thread.
2. The connection thread reads big chunks, cuts them into lines with
   ``protocolo.LineSplitter``, parses each with ``protocolo.parse_request``
   and answers it (``_handle_*`` methods). Busy connections take turns at
   this, first come first served (``FairTurn``), because CPython's own
   hand-over of the GIL would let a few of them starve the rest.
3. Nothing is written straight to a socket by request handlers: replies and
   pushes are appended to the target connection's ``Outbox``. After a whole
   chunk of lines is handled, every outbox touched is flushed once, with a
   non-blocking ``send``. So 32 pipelined messages cost one ``send`` to the
   recipient and one to the sender, and a recipient that stops reading can
   never block its senders: what the kernel will not take stays queued, and
   that connection's own writer thread (started only when needed) waits for
   it. Past ``max_pending`` queued bytes the recipient is disconnected.
4. The ``Registry`` maps casefolded nicknames to entries. Its lock guards
   only dictionary updates; no socket I/O ever happens while it is held.

Run ``python3 servidor.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import logging
import math
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import protocolo
from protocolo import ErrorCode, ProtocolError

log = logging.getLogger("servidor")

EARLY_FLUSH_BYTES = 64 * 1024
"""Replies queued past this within one batch are flushed before the batch ends."""
RECV_CHUNK = 256 * 1024
"""Bytes asked of a ``recv`` on a busy connection: large, so one call brings many lines."""
IDLE_RECV_CHUNK = 4096
"""Bytes asked of a ``recv`` on a quiet connection.

A thread blocked in ``recv`` holds a buffer of the size asked for, and with
thousands of idle clients those buffers are most of the server's memory. So a
connection reads small until a read comes back full, then large while that
lasts.
"""
CONNECTION_STACK_SIZE = 256 * 1024
"""Thread stack for connection threads (set by ``main``); the code is shallow."""
TURN_PATIENCE = 1.0
"""Seconds a connection thread waits for its turn (``FairTurn``) before going ahead anyway."""


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
    rate: float = 20.0
    """Requests per second per connection (token bucket refill)."""
    burst: int = 100
    """Token bucket size: requests a connection may send at once."""
    register_timeout: float = 60.0
    """Seconds an unregistered connection may go without a complete line."""
    send_timeout: float = 30.0
    """Seconds a blocked ``send`` may make no progress before the peer is dropped."""
    shutdown_flush: float = 1.5
    """Seconds ``stop`` waits for queued output to reach the clients."""
    tls_context: ssl.SSLContext | None = None


# --------------------------------------------------------------------------
# Socket helpers


def _set_kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """Bound blocking ``send``/``recv`` in the kernel (SO_SNDTIMEO/SO_RCVTIMEO).

    Python's own ``settimeout`` would turn every call into poll + call and
    would make ``MSG_DONTWAIT`` sends wait; a kernel timeout keeps the socket
    in plain blocking mode. A blocked call that times out raises
    ``BlockingIOError``. ``seconds == 0`` means no bound.
    """
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    if seconds > 0 and whole == 0 and micros == 0:
        micros = 1
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, micros))


def _plain_ip(ip: str) -> str:
    """Show an IPv4 client of a dual-stack socket as IPv4 (``::ffff:1.2.3.4``)."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[len("::ffff:"):]
    return ip


def lan_addresses() -> list[str]:
    """Addresses other machines may use to reach this one (best effort, no traffic)."""
    found: list[str] = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        infos = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        is_loopback = ip.startswith(("127.", "::1"))
        if family in (socket.AF_INET, socket.AF_INET6) and not is_loopback and ip not in found:
            found.append(ip)
    return found


# --------------------------------------------------------------------------
# Transports: what turns queued text into bytes on the wire


class PlainTransport:
    """A TCP connection without encryption."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._chunk = IDLE_RECV_CHUNK

    def handshake(self, deadline: float = 0.0) -> None:
        """Nothing to negotiate."""

    def recv(self) -> bytes:
        """Application bytes from the peer; ``b""`` at EOF."""
        data = self.sock.recv(self._chunk)
        self._chunk = RECV_CHUNK if len(data) == self._chunk else IDLE_RECV_CHUNK
        return data

    def encode(self, data: bytes) -> bytes:
        """Wire bytes for ``data``; called in send order."""
        return data


class TlsTransport:
    """TLS over a plain blocking socket, through ``ssl.MemoryBIO``.

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
        """Complete the TLS handshake; raises ``ssl.SSLError`` or ``OSError``.

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
                self.sock.sendall(out)
            if done:
                # The client's first records may have come in the same read
                # as its Finished; the next ``recv`` must look at them first.
                self._records_waiting = True
                return
            if deadline:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("handshake TLS não terminou a tempo")
                _set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, remaining)
            data = self.sock.recv(RECV_CHUNK)
            if not data:
                raise ConnectionError("EOF durante o handshake TLS")
            self._incoming.write(data)

    def recv(self) -> bytes:
        """Application bytes from the peer; ``b""`` at EOF.

        Reads the socket at most once. If what came holds no whole record
        yet, raises ``BlockingIOError`` -- as a receive timeout does -- so
        the caller checks its clocks before reading again: a peer dribbling
        one record byte by byte cannot dodge the TEMPO bound.
        """
        data = b""
        if self._records_waiting:
            self._records_waiting = False
        else:
            data = self.sock.recv(RECV_CHUNK)
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
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                pass
            reply = self._outgoing.read()  # e.g. TLS 1.3 key updates
        if reply:
            self.sock.sendall(reply)
        if not plain:
            raise BlockingIOError(errno.EAGAIN, "registro TLS incompleto")
        return b"".join(plain)

    def encode(self, data: bytes) -> bytes:
        with self._lock:
            self._tls.write(data)
            return self._outgoing.read()


# --------------------------------------------------------------------------
# Outbound queue


class Outbox:
    """A connection's queued output, bounded, with an on-demand writer thread.

    ``put`` only appends (cheap, any thread). ``flush`` tries one
    non-blocking ``send`` of everything queued; what the kernel does not take
    is handed to the writer thread, which blocks on the socket so nobody else
    has to. While the writer holds data, ``flush`` leaves the queue alone, so
    bytes always leave in the order they were queued.
    """

    def __init__(self, transport: PlainTransport | TlsTransport, max_pending: int,
                 name: str, on_broken: Callable[[str], None]) -> None:
        self._transport = transport
        self._sock = transport.sock
        self._max_pending = max_pending
        self._name = name
        self._on_broken = on_broken
        # A plain lock for ``put`` and ``flush``: ``with`` on it costs no
        # Python-level call, and most connections never need the condition
        # (about 1 KiB each), which is made with the writer thread.
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._queued: list[bytes] = []
        self._unsent = b""  # wire bytes the kernel refused, for the writer
        self._pending = 0  # bytes queued, unsent, or being sent by the writer
        self._writer: threading.Thread | None = None
        self._writer_busy = False
        self._closed = False
        self._flush_on_close = False

    @property
    def pending(self) -> int:
        return self._pending

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False if that takes the queue past its bound.

        Data for a closed outbox is silently dropped: its peer is gone.
        """
        with self._lock:
            if self._closed:
                return True
            self._queued.append(data)
            self._pending += len(data)
            return not self._max_pending or self._pending <= self._max_pending

    def flush(self) -> None:
        """Send what is queued without blocking; leave the rest to the writer."""
        with self._lock:
            if self._writer_busy or not self._queued or (self._closed and not self._flush_on_close):
                return
            wire = self._take_wire()
            try:
                sent = self._sock.send(wire, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._queued.clear()
                self._pending = 0
                broken = f"erro ao enviar: {exc.strerror or exc}"
            else:
                broken = ""
                self._pending -= sent
                if sent < len(wire):
                    self._unsent = wire[sent:]
                    self._writer_busy = True
                    self._wake_writer()
        if broken:
            self._on_broken(broken)

    def close(self, flush: bool) -> None:
        """Stop taking data; with ``flush``, let what is queued still go out."""
        with self._lock:
            self._closed = True
            self._flush_on_close = flush
            if not flush:
                self._queued.clear()
                self._unsent = b""
                self._pending = 0
            if self._cond is not None:
                self._cond.notify()
        if flush:
            self.flush()

    def join(self, timeout: float) -> bool:
        """Wait for the writer to finish; True if it did (or never existed)."""
        writer = self._writer
        if writer is None:
            return True
        writer.join(timeout)
        return not writer.is_alive()

    @property
    def closed(self) -> bool:
        """True once the connection is going away: new data would be dropped."""
        return self._closed

    @property
    def drained(self) -> bool:
        return self._pending == 0

    # -- internals (called with self._lock held) --

    def _take_wire(self) -> bytes:
        data = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued.clear()
        wire = self._transport.encode(data)
        self._pending += len(wire) - len(data)
        return wire

    def _wake_writer(self) -> None:
        if self._writer is None:
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            self._writer = threading.Thread(target=self._run_writer, daemon=True,
                                            name=f"escritor-{self._name}")
            self._writer.start()
        else:
            self._cond.notify()

    def _run_writer(self) -> None:
        """Writer thread: send, blocking, whatever ``flush`` could not."""
        while True:
            with self._lock:
                while not (self._unsent or self._queued) and not self._closed:
                    self._writer_busy = False
                    self._cond.wait()
                    self._writer_busy = bool(self._unsent or self._queued)
                if ((self._closed and not self._flush_on_close)
                        or not (self._unsent or self._queued)):
                    # Closed (and drained, if flushing). Saying so under the
                    # lock lets a last ``flush`` start a new writer if needed.
                    self._writer = None
                    self._writer_busy = False
                    return
                wire = self._unsent
                self._unsent = b""
                if self._queued:
                    wire += self._take_wire()
            try:
                self._sock.sendall(wire)
            except OSError as exc:
                reason = "cliente parou de ler" if isinstance(exc, BlockingIOError) \
                    else f"erro ao enviar: {exc.strerror or exc}"
                with self._lock:
                    self._closed = True
                    self._queued.clear()
                    self._pending = 0
                    self._writer = None
                self._on_broken(reason)
                return
            with self._lock:
                # max(): close(flush=False) may have zeroed the count meanwhile.
                self._pending = max(0, self._pending - len(wire))


# --------------------------------------------------------------------------
# Registry


@dataclass
class Entry:
    """One registered user."""

    nick: str
    """The spelling given at registration, shown to everybody."""
    ip: str
    port: int
    connection: ClientConnection
    relay: bool
    """False for the directory-only form: no pushes, ENVIAR to it is SO_DIRETO."""


class Registry:
    """Nickname -> ``Entry``, keyed case-insensitively, plus presence subscribers.

    Writers take ``_lock``; the lock is held only to change or copy the
    dictionaries, never while a socket is touched. Readers on the message
    path (``get``) skip the lock: a single ``dict.get`` is atomic in Python,
    and what they find is at worst a user who leaves a moment later.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._subscribers: dict[str, ClientConnection] = {}

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def add(self, key: str, entry: Entry) -> list[ClientConnection] | None:
        """Register ``entry``; None if the key is taken, else who to tell."""
        with self._lock:
            if key in self._entries:
                return None
            self._entries[key] = entry
            return list(self._subscribers.values())

    def remove(self, key: str, connection: ClientConnection) -> list[ClientConnection]:
        """Drop ``connection``'s registration; returns the subscribers to tell."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.connection is not connection:
                return []
            del self._entries[key]
            self._subscribers.pop(key, None)
            return list(self._subscribers.values())

    def subscribe(self, key: str, connection: ClientConnection) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.connection is connection and entry.relay:
                self._subscribers[key] = connection

    def listing(self) -> list[tuple[str, str, int]]:
        """(nick, ip, port) of everybody, sorted case-insensitively."""
        with self._lock:
            entries = list(self._entries.items())
        entries.sort()
        return [(e.nick, e.ip, e.port) for _, e in entries]

    def nicks(self) -> list[str]:
        return [nick for nick, _, _ in self.listing()]

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------
# One client


class TokenBucket:
    """Allow ``rate`` requests per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FairTurn:
    """Connection threads take turns, in arrival order, at handling what they read.

    Only one thread runs Python code at a time anyway (the GIL), but CPython
    hands the GIL over unfairly: a thread coming back from a short system
    call (a non-blocking ``send``, a ``recv`` that finds data waiting) takes
    it again before the thread that was woken for it gets to run, and that
    one goes back to waiting. Under load a few busy connections then handle
    batch after batch while others wait tens of milliseconds: with 100 busy
    pairs the p99 latency was five times the median or more. Handing the turn
    over first come, first served gives every busy connection one batch per
    round.

    The turn guards no data (the registry and every outbox have their own
    locks), so correctness never depends on it: a thread that waits longer
    than ``patience`` seconds -- say the holder is stuck writing a log line
    to a stopped terminal -- simply goes ahead without it. It is held for
    CPU work and non-blocking sends only, never while waiting for a peer.
    """

    def __init__(self, patience: float = TURN_PATIENCE) -> None:
        self.patience = patience
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._taken = False

    def acquire(self) -> bool:
        """Wait for the turn; True once it is ours, False if we gave up waiting."""
        with self._lock:
            if not self._taken:
                self._taken = True
                return True
            baton = threading.Lock()
            baton.acquire()
            self._waiting.append(baton)
        if baton.acquire(timeout=self.patience):
            return True  # released by ``release``: the turn was handed to us
        with self._lock:
            try:
                self._waiting.remove(baton)
            except ValueError:
                return True  # handed to us just as the wait ran out
            return False

    def release(self, held: bool) -> None:
        """Pass the turn to the longest waiting thread (only if ``acquire`` gave it)."""
        if not held:
            return
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._taken = False


class ClientConnection:
    """One client's socket, served by its own thread from accept to close."""

    def __init__(self, server: Servidor, sock: socket.socket, ip: str, port: int) -> None:
        self.server = server
        self.config = server.config
        self.sock = sock
        self.ip = ip
        self.port = port
        self.name = f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}"
        if self.config.tls_context is not None:
            self.transport: PlainTransport | TlsTransport = TlsTransport(
                sock, self.config.tls_context)
        else:
            self.transport = PlainTransport(sock)
        self.outbox = Outbox(self.transport, self.config.max_pending, self.name, self.abort)
        self.nick: str | None = None
        self.key: str | None = None
        self.relay = False
        self.bucket = TokenBucket(self.config.rate, self.config.burst) if self.config.rate else None
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"conexao-{self.name}")
        self._close_lock = threading.Lock()
        self._closed = False
        self._quitting = False
        self._close_reason = ""
        self._touched: dict[int, ClientConnection] = {}
        self._deadline = 0.0

    # -- life cycle --

    def run(self) -> None:
        """Thread body: serve requests until EOF, error, SAIR or abort."""
        reason = "cliente desconectou"
        try:
            self._arm_register_timer()
            self.transport.handshake(self._deadline)  # TEMPO bounds the TLS handshake too
            reason = self._serve()
        except (ssl.SSLError, ConnectionError) as exc:
            reason = f"falha de rede: {exc}"
        except OSError as exc:
            reason = f"falha de rede: {exc.strerror or exc}"
        except Exception:
            log.exception("erro inesperado na conexão %s", self.name)
            reason = "erro interno"
        finally:
            self._cleanup(self._close_reason or reason)

    def abort(self, reason: str) -> None:
        """Disconnect from any thread: wakes this connection's thread, which cleans up."""
        with self._close_lock:
            if self._closed:
                return
            if not self._close_reason:
                self._close_reason = reason
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.outbox.close(flush=False)

    def _cleanup(self, reason: str) -> None:
        """The one exit path: unregister once, flush, close, forget."""
        self._unregister()
        self.outbox.close(flush=True)
        if not self.outbox.join(self.config.shutdown_flush):
            self.abort(reason)
            self.outbox.join(self.config.shutdown_flush)
        with self._close_lock:
            self._closed = True
            self.sock.close()
        self.server._forget(self)
        log.info("%s desconectado (%s)", self.name, reason)

    # -- reading --

    def _arm_register_timer(self) -> None:
        """Start (or, once registered, stop) the TEMPO clock of an unregistered connection."""
        limit = self.config.register_timeout
        if limit and self.key is None:
            self._deadline = time.monotonic() + limit
        else:
            self._deadline = 0.0
            _set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, 0)

    def _serve(self) -> str:
        """Read and answer lines; returns why the connection ended."""
        splitter = protocolo.LineSplitter(self.config.max_line)
        while not self._quitting:
            if self._deadline and not self._bound_next_recv():
                self._send_now(protocolo.format_error(
                    ErrorCode.TEMPO, "nenhum comando completo a tempo; conexão encerrada"))
                return "tempo esgotado sem registro"
            try:
                data = self.transport.recv()
            except BlockingIOError:
                # The receive timeout (armed only while unregistered), or a TLS
                # record still incomplete: check the TEMPO clock, read again.
                continue
            if not data:
                return "cliente desconectou"
            held = self.server.turn.acquire()
            try:
                lines = splitter.feed(data)
                if lines:
                    self._handle_lines(lines)
            finally:
                self.server.turn.release(held)
        return "SAIR"

    def _bound_next_recv(self) -> bool:
        """Make the next ``recv`` wait no longer than the TEMPO deadline; False if it passed."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return False
        _set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, remaining)
        return True

    def _handle_lines(self, lines: list[bytes | protocolo.LineTooLong]) -> None:
        """Answer a batch of lines, then flush every outbox they touched once.

        The recipients' outboxes go first: their messages are what people
        wait for, while this connection's own replies (the OKs) only let its
        sender send more.
        """
        touched = self._touched
        was_registered = self.key is not None
        for raw in lines:
            if self._quitting:
                break
            reply = self._answer(raw)
            if reply is not None:
                if not self.outbox.put(reply):
                    self.abort("saída pendente cheia")
                    break  # still flush the messages already queued for others
                if self.outbox.pending > EARLY_FLUSH_BYTES:
                    self.outbox.flush()  # e.g. pipelined LISTARs: don't pile them all up
        if touched:
            for other in touched.values():
                other.outbox.flush()
            touched.clear()
        self.outbox.flush()
        if was_registered != (self.key is not None):
            self._arm_register_timer()
        elif self._deadline:
            self._deadline = time.monotonic() + self.config.register_timeout

    def _answer(self, raw: bytes | protocolo.LineTooLong) -> bytes | None:
        """The reply to one line (None for a blank line)."""
        if raw is not protocolo.LINE_TOO_LONG and not raw.strip(b" "):
            return None  # blank lines get no reply, so they cannot be rate-limited either
        if self.bucket is not None and not self.bucket.take():
            return protocolo.format_error(
                ErrorCode.LIMITE, "muitos comandos por segundo; comando ignorado")
        if raw is protocolo.LINE_TOO_LONG:
            return protocolo.format_error(
                ErrorCode.LINHA_LONGA, f"linha maior que {self.config.max_line} bytes")
        try:
            request = protocolo.parse_request(protocolo.decode_line(raw))
            if request is None:
                return None
            if isinstance(request, protocolo.Send):  # the hot path first
                return self._handle_send(request)
            return self._HANDLERS[type(request)](self, request)
        except ProtocolError as exc:
            return exc.to_line()

    def _send_now(self, line: bytes) -> None:
        """Queue ``line`` and push it out at once (used right before closing)."""
        self.outbox.put(line)
        self.outbox.flush()

    # -- requests --

    def _require_registration(self) -> None:
        if self.key is None:
            raise ProtocolError(ErrorCode.NAO_REGISTRADO,
                                "registre-se primeiro com REGISTRAR <apelido>")

    def _handle_send(self, request: protocolo.Send) -> bytes:
        self._require_registration()
        entry = self.server.registry.get(protocolo.nick_key(request.target))
        if entry is None:
            raise ProtocolError(ErrorCode.NAO_ENCONTRADO,
                                f"{request.target} não está conectada")
        if not entry.relay:
            raise ProtocolError(ErrorCode.SO_DIRETO,
                                f"{entry.nick} está só no diretório e não recebe mensagens")
        recipient = entry.connection
        if recipient.outbox.closed:  # dropped a moment ago; its thread is cleaning up
            raise ProtocolError(ErrorCode.NAO_ENCONTRADO, f"{request.target} não está conectada")
        if not recipient.outbox.put(protocolo.format_msg(self.nick, entry.nick, request.text)):
            recipient.abort("destinatário lento: saída pendente cheia")
            raise ProtocolError(ErrorCode.DESTINATARIO_LENTO,
                                f"{entry.nick} não está lendo as mensagens e foi desconectada")
        if recipient is not self:
            self._touched[id(recipient)] = recipient
        return protocolo.OK_LINE

    def _handle_register(self, request: protocolo.Register) -> bytes:
        if self.key is not None:
            raise ProtocolError(ErrorCode.JA_REGISTRADO,
                                f"esta conexão já está registrada como {self.nick}")
        if not protocolo.valid_nick(request.nick):
            raise ProtocolError(ErrorCode.APELIDO_INVALIDO,
                                "use de 1 a 32 letras, dígitos, _, - ou .")
        key = protocolo.nick_key(request.nick)
        relay = not request.directory_only
        ip = self.ip if relay else request.ip
        port = self.port if relay else request.port
        entry = Entry(request.nick, ip, port, self, relay)
        subscribers = self.server.registry.add(key, entry)
        if subscribers is None:
            raise ProtocolError(ErrorCode.APELIDO_EM_USO, f"{request.nick} já está em uso")
        self.nick, self.key, self.relay = request.nick, key, relay
        log.info("%s registrou-se como %s%s", self.name, request.nick,
                 "" if relay else " (só diretório)")
        self._notify(subscribers, protocolo.format_joined(request.nick))
        return protocolo.OK_LINE

    def _handle_list(self, request: protocolo.ListUsers) -> bytes:
        return protocolo.format_users(self.server.registry.listing())

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

    _HANDLERS: ClassVar[dict[type, Callable[..., bytes]]] = {
        protocolo.Register: _handle_register,
        protocolo.ListUsers: _handle_list,
        protocolo.Lookup: _handle_lookup,
        protocolo.Unregister: _handle_unregister,
        protocolo.Subscribe: _handle_subscribe,
        protocolo.Ping: _handle_ping,
        protocolo.Quit: _handle_quit,
    }

    # -- presence --

    def _unregister(self) -> None:
        """Remove this connection's registration, if any, and tell subscribers."""
        if self.key is None:
            return
        nick, key = self.nick, self.key
        self.nick = self.key = None
        self.relay = False
        subscribers = self.server.registry.remove(key, self)
        log.info("%s: registro de %s removido", self.name, nick)
        self._notify(subscribers, protocolo.format_left(nick))

    def _notify(self, subscribers: list[ClientConnection], line: bytes) -> None:
        for subscriber in subscribers:
            if subscriber is self:
                continue
            if subscriber.outbox.put(line):
                subscriber.outbox.flush()
            else:
                subscriber.abort("saída pendente cheia")


# --------------------------------------------------------------------------
# The server


class Servidor:
    """The chat server: listening sockets, an accept thread, the connections.

    Life cycle, as in ``socketserver``: construct, ``start()`` (binds and
    serves in background threads; ``address`` then holds the real port),
    ``stop()`` from any thread (idempotent, bounded). Also a context manager.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.registry = Registry()
        self.turn = FairTurn()
        self._listeners: list[socket.socket] = []
        self._connections: set[ClientConnection] = set()
        self._per_ip: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _connections and _per_ip
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
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
        """Bind the listening socket(s) and serve in a background thread."""
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
        for listener in self._listeners:
            host, port = listener.getsockname()[:2]
            where = {"::": "todas as interfaces (IPv4 e IPv6)",
                     "0.0.0.0": "todas as interfaces (IPv4)"}.get(host, host)
            log.info("servidor escutando em %s porta %d%s", where, port,
                     " (TLS)" if self.config.tls_context else "")

    def stop(self) -> None:
        """Stop accepting, flush queued output (bounded), close everything."""
        if self._stopped or self._accept_thread is None:
            return
        self._stopped = True
        self._stopping.set()
        self._wake_w.send(b"x")
        self._accept_thread.join(5.0)
        for listener in self._listeners:
            listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

        with self._lock:
            connections = list(self._connections)
        deadline = time.monotonic() + self.config.shutdown_flush
        for connection in connections:
            connection.outbox.close(flush=True)
        for connection in connections:
            connection.outbox.join(max(0.0, deadline - time.monotonic()))
        for connection in connections:
            connection.abort("servidor encerrando")
        for connection in connections:
            connection.thread.join(max(0.5, deadline + 1.0 - time.monotonic()))
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
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    return
                self._accept_from(key.fileobj)

    def _accept_from(self, listener: socket.socket) -> None:
        """Accept every pending connection on ``listener``."""
        for _ in range(256):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: out of file descriptors
                log.error("falha ao aceitar conexão: %s", exc)
                time.sleep(0.05)
                return
            ip, port = _plain_ip(addr[0]), addr[1]
            refusal = self._admit(ip)
            if refusal:
                log.warning("conexão de %s:%d recusada: %s", ip, port, refusal)
                self._refuse(sock, refusal)
                continue
            try:
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                protocolo.enable_keepalive(sock)
                _set_kernel_timeout(sock, socket.SO_SNDTIMEO, self.config.send_timeout)
                connection = ClientConnection(self, sock, ip, port)
            except OSError as exc:  # the peer reset before we got to it
                log.warning("conexão de %s:%d perdida ao configurar: %s", ip, port, exc)
                sock.close()
                self._release_ip(ip)
                continue
            with self._lock:
                self._connections.add(connection)
            log.info("conexão de %s", connection.name)
            try:
                connection.thread.start()
            except RuntimeError as exc:  # out of threads: drop this one, keep accepting
                log.error("conexão de %s recusada: %s", connection.name, exc)
                sock.close()
                self._forget(connection)

    def _admit(self, ip: str) -> str:
        """Count a new connection from ``ip``; '' if admitted, else why not."""
        with self._lock:
            if self.config.max_clients and len(self._connections) >= self.config.max_clients:
                return f"servidor lotado ({self.config.max_clients} conexões)"
            count = self._per_ip.get(ip, 0)
            if self.config.max_per_ip and count >= self.config.max_per_ip:
                return f"limite de {self.config.max_per_ip} conexões por endereço atingido"
            self._per_ip[ip] = count + 1
            return ""

    def _refuse(self, sock: socket.socket, why: str) -> None:
        """Tell a refused client why (plain TCP only), without ever blocking."""
        try:
            if self.config.tls_context is None:
                sock.send(protocolo.format_error(ErrorCode.LOTADO, why), socket.MSG_DONTWAIT)
                # Closing with unread input sends a TCP reset, and some systems
                # then discard the line above before the client reads it; so
                # take what the client already sent (its REGISTRAR, typically).
                sock.recv(65536, socket.MSG_DONTWAIT)
        except OSError:
            pass
        finally:
            sock.close()

    def _forget(self, connection: ClientConnection) -> None:
        """Called once by each connection as its thread ends."""
        with self._lock:
            self._connections.discard(connection)
        self._release_ip(connection.ip)

    def _release_ip(self, ip: str) -> None:
        """Undo ``_admit``'s count for one connection from ``ip``."""
        with self._lock:
            count = self._per_ip.get(ip, 1) - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                self._per_ip.pop(ip, None)


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
        value = kind(text)
        if not math.isfinite(value) or value < minimum or (maximum is not None
                                                           and value > maximum):
            bounds = f"de {minimum:g} a {maximum:g}" if maximum is not None \
                else f"maior ou igual a {minimum:g}"
            raise argparse.ArgumentTypeError(f"valor inválido: {text} (use um número {bounds})")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="servidor.py",
        description="Servidor do chat (protocolo de linhas sobre TCP).")
    parser.add_argument("--host", default="",
                        help="endereço de escuta (padrão: todas as interfaces, IPv4 e IPv6)")
    parser.add_argument("--port", type=_number(int, 0, 65535), default=protocolo.DEFAULT_PORT,
                        help=f"porta TCP (padrão: {protocolo.DEFAULT_PORT})")
    parser.add_argument("--max-clientes", type=_number(int), default=defaults.max_clients,
                        help="máximo de conexões simultâneas; 0 = sem limite "
                             f"(padrão: {defaults.max_clients})")
    parser.add_argument("--max-por-ip", type=_number(int), default=defaults.max_per_ip,
                        help="máximo de conexões por endereço IP; 0 = sem limite "
                             f"(padrão: {defaults.max_per_ip})")
    parser.add_argument("--max-linha", type=_number(int, 2), default=defaults.max_line,
                        help=f"bytes por linha de comando (padrão: {defaults.max_line})")
    parser.add_argument("--max-fila", type=_number(int), default=defaults.max_pending,
                        help="bytes de saída pendente por conexão antes de desconectá-la "
                             f"(padrão: {defaults.max_pending})")
    parser.add_argument("--taxa", type=_number(float), default=defaults.rate,
                        help="comandos por segundo por conexão; 0 = sem limite "
                             f"(padrão: {defaults.rate:g})")
    parser.add_argument("--rajada", type=_number(int, 1), default=defaults.burst,
                        help=f"rajada de comandos permitida (padrão: {defaults.burst})")
    parser.add_argument("--tempo-registro", type=_number(float), default=defaults.register_timeout,
                        help="segundos que uma conexão sem registro pode ficar sem "
                             "mandar uma linha completa; 0 = sem limite "
                             f"(padrão: {defaults.register_timeout:g})")
    parser.add_argument("--tls-cert", help="certificado (PEM) para servir só TLS")
    parser.add_argument("--tls-key", help="chave privada (PEM) do certificado")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="nível de log (padrão: INFO)")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("erro: --tls-cert e --tls-key devem ser usados juntos")
        tls = make_tls_context(args.tls_cert, args.tls_key)
    return ServerConfig(host=args.host, port=args.port, max_clients=args.max_clientes,
                        max_per_ip=args.max_por_ip, max_line=args.max_linha,
                        max_pending=args.max_fila, rate=args.taxa, burst=args.rajada,
                        register_timeout=args.tempo_registro, tls_context=tls)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except (OSError, ssl.SSLError) as exc:
        log.error("não foi possível carregar o certificado TLS: %s", exc)
        return 2
    threading.stack_size(CONNECTION_STACK_SIZE)
    # Handlers first: a SIGTERM that arrives as soon as the server is
    # listening must still mean a clean stop and exit status 0.
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = Servidor(config)
    try:
        server.start()
    except OSError as exc:
        log.error("não foi possível escutar na porta %d: %s", config.port, exc.strerror or exc)
        return 1
    port = server.address[1]
    for ip in lan_addresses():
        log.info("outras máquinas podem conectar em %s porta %d", ip, port)

    while not stop_requested.wait(0.5):
        pass
    log.info("encerrando (sinal recebido)")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
