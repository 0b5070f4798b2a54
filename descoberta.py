"""Finding chat servers on the LAN without typing an address (PROTOCOL-v2, UDP).

Clients probe, servers answer by unicast:

* ``DiscoveryResponder`` is the server's side: a UDP socket on the server's
  port, served by one thread, answering each ``DESCOBRIR 1`` with
  ``SERVIDOR <porta> <tls> <nome>`` to the sender -- within rate limits, so a
  flood (or a spoofed source aiming our answers at a victim) gets little.
* ``discover`` is the client's side: it sends the probe to the broadcast
  addresses and to the hosts the user named, resends once, collects answers
  until its timeout and returns each server once.
* ``discover_in_background`` runs ``discover`` in a daemon thread for a GUI
  that must not block.

The datagrams themselves are parsed and formatted only in ``protocolo``.
No Tk here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import math
import queue
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import argumentos
import limites
import protocolo
import rede

log = logging.getLogger("descoberta")

PER_SOURCE_ANSWERS_PER_S = 5.0
TOTAL_ANSWERS_PER_S = 200.0
MAX_TRACKED_SOURCES = 1024
"""Bound on the per-source table: past it, the least recently seen source is forgotten."""
SUMMARY_INTERVAL_S = 60.0
"""The responder logs at most one summary line per this many seconds."""
WAIT_TICK_S = 0.25
"""Longest the responder's thread waits before looking at its stop flag again."""
STOP_TIMEOUT_S = 2.0
DATAGRAMS_PER_WAKE = 64
"""Datagrams read in a row before the responder looks at its clocks again."""
MAX_NAMED_HOSTS = 32
"""Hosts ``discover`` probes by name at most (the rest are ignored)."""

ALLOWED = "permitido"
SOURCE_LIMITED = "limite por origem"
TOTAL_LIMITED = "limite total"


# --------------------------------------------------------------------------
# Rate limits


class AnswerLimiter:
    """Decides which probes get an answer: per source address, and in total.

    Each budget is a token bucket whose burst is one second's worth, so in
    any interval of t seconds a source gets at most ``per_source_per_s *
    (1 + t)`` answers, and everybody together ``total_per_s * (1 + t)``.
    A rate of 0 turns that limit off. The per-source table never holds more
    than ``max_sources`` entries: a flood from many (spoofed) sources evicts
    the least recently seen, and ``forget_idle`` drops the sources whose
    bucket has refilled.
    """

    def __init__(self, per_source_per_s: float = PER_SOURCE_ANSWERS_PER_S,
                 total_per_s: float = TOTAL_ANSWERS_PER_S,
                 max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self._per_source = per_source_per_s
        self._max_sources = max(1, max_sources)
        self._sources: collections.OrderedDict[str, limites.TokenBucket] = collections.OrderedDict()
        self._total = (limites.TokenBucket(total_per_s, max(1, math.ceil(total_per_s)))
                       if total_per_s > 0 else None)

    @property
    def tracked_sources(self) -> int:
        return len(self._sources)

    def allow(self, source: str, now: float) -> str:
        """``ALLOWED``, ``SOURCE_LIMITED`` or ``TOTAL_LIMITED`` for a probe from ``source``."""
        if self._per_source > 0 and not self._source_bucket(source, now).take(1.0, now):
            return SOURCE_LIMITED
        if self._total is not None and not self._total.take(1.0, now):
            return TOTAL_LIMITED
        return ALLOWED

    def _source_bucket(self, source: str, now: float) -> limites.TokenBucket:
        bucket = self._sources.get(source)
        if bucket is not None:
            self._sources.move_to_end(source)
            return bucket
        if len(self._sources) >= self._max_sources:
            self._sources.popitem(last=False)
        bucket = limites.TokenBucket(self._per_source, max(1, math.ceil(self._per_source)), now)
        self._sources[source] = bucket
        return bucket

    def forget_idle(self, now: float) -> None:
        """Drop the sources whose bucket is full again (they would start over the same)."""
        for source in [s for s, bucket in self._sources.items() if bucket.full(now)]:
            del self._sources[source]


# --------------------------------------------------------------------------
# The server's side


@dataclass
class ResponderStats:
    """What the responder did with the datagrams it received."""

    answered: int = 0
    ignored: int = 0
    """Datagrams that are not a probe (junk, oversized, another protocol)."""
    source_limited: int = 0
    total_limited: int = 0
    send_errors: int = 0
    receive_errors: int = 0

    @property
    def limited(self) -> int:
        return self.source_limited + self.total_limited


class DiscoveryResponder:
    """Answers LAN discovery probes for one server, in a thread of its own.

    ``port`` is the UDP port to listen on and the TCP port announced (the
    server's; 0 picks a free UDP port and announces it, for tests). ``host``
    "" listens on every IPv4 interface -- needed to hear broadcasts, which a
    socket bound to one unicast address never receives. ``name`` "" means
    the host name. Life cycle: construct, ``start()``, ``stop()`` (also a
    context manager); ``stop`` is idempotent and bounded.
    """

    def __init__(self, port: int, tls: bool, name: str = "", host: str = "",
                 per_source_per_s: float = PER_SOURCE_ANSWERS_PER_S,
                 total_per_s: float = TOTAL_ANSWERS_PER_S) -> None:
        self._port = port
        self._tls = tls
        self.name = protocolo.clean_server_name(name or socket.gethostname())
        self._host = host
        self._limiter = AnswerLimiter(per_source_per_s, total_per_s)
        self._stats = ResponderStats()
        self._reported = ResponderStats()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._answer = b""
        self._stopping = threading.Event()
        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        """The (address, port) the UDP socket is bound to; valid after ``start``."""
        if self._sock is None:
            raise RuntimeError("o respondedor de descoberta não foi iniciado")
        return self._sock.getsockname()[:2]

    @property
    def stats(self) -> ResponderStats:
        """A copy of the counters (they are only written by the serving thread)."""
        return dataclasses.replace(self._stats)

    @property
    def tracked_sources(self) -> int:
        return self._limiter.tracked_sources

    def start(self) -> None:
        """Bind the socket and start serving; raises ``OSError`` if the port is taken.

        Done under the state lock (binding and starting a thread never
        block), so a ``stop`` from another thread sees either nothing
        started or everything it has to stop.
        """
        with self._state_lock:
            if self._started or self._stopped:
                raise RuntimeError("um respondedor de descoberta só pode ser iniciado uma vez")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self._host or "0.0.0.0", self._port))
                sock.setblocking(False)
                announced = self._port or sock.getsockname()[1]
                self._answer = protocolo.format_discovery_answer(announced, self._tls, self.name)
                self._sock = sock
                self._thread = threading.Thread(target=self._serve, name="descoberta",
                                                daemon=True)
                self._thread.start()
            except BaseException:
                self._sock = self._thread = None
                sock.close()
                raise
            self._started = True
        log.info("descoberta na rede local ativa: UDP porta %d em %s (nome anunciado: %s)",
                 sock.getsockname()[1], self._host or "todas as interfaces IPv4", self.name)

    def stop(self) -> None:
        """Stop serving and close the socket (waits at most ``STOP_TIMEOUT_S``)."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            sock, thread = self._sock, self._thread
        self._stopping.set()
        if sock is None:
            return
        try:
            if thread is not None:
                self._wake()
                thread.join(STOP_TIMEOUT_S)
                if thread.is_alive():
                    log.warning("a thread de descoberta não terminou em %g s", STOP_TIMEOUT_S)
        finally:
            sock.close()
        self._log_summary(final=True)

    def __enter__(self) -> DiscoveryResponder:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wake(self) -> None:
        """Send the thread an empty datagram so it sees the stop flag now, not at its next tick."""
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", ("127.0.0.1" if host == "0.0.0.0" else host, port))

    def _serve(self) -> None:
        next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        while not self._stopping.is_set():
            ready = rede.wait_readable(self._sock, WAIT_TICK_S)
            now = time.monotonic()
            if ready and not self._drain(now):
                return
            if now >= next_summary:
                self._log_summary()
                self._limiter.forget_idle(now)
                next_summary = now + SUMMARY_INTERVAL_S

    def _drain(self, now: float) -> bool:
        """Handle the datagrams waiting (a bounded number); False if the socket is gone."""
        assert self._sock is not None
        for _ in range(DATAGRAMS_PER_WAKE):
            if self._stopping.is_set():
                return True
            try:
                # One byte more than the limit, so an oversized datagram shows.
                data, source = self._sock.recvfrom(protocolo.MAX_DISCOVERY_DATAGRAM + 1)
            except BlockingIOError:
                return True
            except OSError as exc:
                # Windows reports an ICMP "port unreachable" here; an
                # oversized datagram is an error there too.
                if exc.errno in (errno.EBADF, errno.ENOTSOCK) or self._sock.fileno() < 0:
                    return False
                self._stats.receive_errors += 1
                continue
            self._handle(data, source, now)
        return True

    def _handle(self, data: bytes, source: tuple, now: float) -> None:
        if not protocolo.parse_discovery_probe(data):
            self._stats.ignored += 1
            return
        verdict = self._limiter.allow(source[0], now)
        if verdict == SOURCE_LIMITED:
            self._stats.source_limited += 1
            return
        if verdict == TOTAL_LIMITED:
            self._stats.total_limited += 1
            return
        assert self._sock is not None
        try:
            self._sock.sendto(self._answer, source)
        except OSError:  # EPERM for a broadcast source, a full buffer, ICMP errors...
            self._stats.send_errors += 1
        else:
            self._stats.answered += 1

    def _log_summary(self, final: bool = False) -> None:
        """One line for everything since the last summary, if anything happened."""
        now, before = self.stats, self._reported
        self._reported = now
        answered = now.answered - before.answered
        limited = now.limited - before.limited
        ignored = now.ignored - before.ignored
        errors = (now.send_errors - before.send_errors
                  + now.receive_errors - before.receive_errors)
        if not (answered or limited or ignored or errors):
            return
        level = logging.INFO if (limited or ignored or errors) and not final else logging.DEBUG
        log.log(level, "descoberta %s: %d respostas, %d pedidos acima do limite, "
                "%d datagramas ignorados, %d erros de rede",
                "(total final)" if final else "no último minuto",
                answered, limited, ignored, errors)


# --------------------------------------------------------------------------
# The client's side


@dataclass(frozen=True)
class FoundServer:
    """A server that answered: where to connect (``host``, TCP ``port``), TLS, its name."""

    host: str
    port: int
    tls: bool
    name: str

    @property
    def label(self) -> str:
        """How a list shows it: ``nome — 10.0.0.5:1998 (TLS)``."""
        text = f"{self.name} — {rede.format_host_port(self.host, self.port)}"
        return f"{text} (TLS)" if self.tls else text


def _address_order(host: str) -> tuple:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return (9, 0, host)
    return (address.version, int(address), host)


def _server_order(server: FoundServer) -> tuple:
    return (server.name.casefold(), _address_order(server.host), server.port)


def _numeric_targets(host: str, port: int) -> list[tuple] | None:
    """The socket addresses of an address literal; None if ``host`` is a name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return [sockaddr for family, _, _, _, sockaddr in infos
            if family in (socket.AF_INET, socket.AF_INET6)]


def _resolve_names(names: list[tuple[str, int]], results: queue.Queue) -> None:
    """Resolve host names (DNS may be slow) and queue each one's addresses; None when done."""
    try:
        for host, port in names:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except (OSError, UnicodeError, ValueError):
                continue
            results.put([sockaddr for family, _, _, _, sockaddr in infos
                         if family in (socket.AF_INET, socket.AF_INET6)])
    finally:
        results.put(None)


class _Prober:
    """The sockets and targets of one ``discover`` call."""

    def __init__(self, port: int, hosts: Sequence[str], broadcast: bool) -> None:
        self.targets: list[tuple] = []
        self.awaiting: set[str] = set()
        """Unicast target addresses that have not answered yet."""
        self._sockets: dict[int, socket.socket] = {}
        self._resolved: queue.Queue = queue.Queue()
        self.resolving = False
        if broadcast:
            self._add([(address, port) for address in
                       ["255.255.255.255", *rede.broadcast_addresses()]], unicast=False)
        names = []
        for text in list(hosts)[:MAX_NAMED_HOSTS]:
            try:
                host, host_port = rede.parse_host_port(text, port)
            except ValueError:
                continue
            literal = _numeric_targets(host, host_port)
            if literal is None:
                names.append((host, host_port))
            else:
                self._add(literal, unicast=True)
        if names:
            self.resolving = True
            threading.Thread(target=_resolve_names, args=(names, self._resolved),
                             name="descoberta-nomes", daemon=True).start()

    def _socket_for(self, family: int) -> socket.socket | None:
        sock = self._sockets.get(family)
        if sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError:
                return None
            try:
                sock.setblocking(False)
                if family == socket.AF_INET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
            except OSError:
                sock.close()
                return None
            self._sockets[family] = sock
        return sock

    def _add(self, sockaddrs: list[tuple], unicast: bool) -> None:
        """Remember new targets and probe them at once."""
        for sockaddr in sockaddrs:
            if sockaddr in self.targets:
                continue
            self.targets.append(sockaddr)
            if unicast:
                self.awaiting.add(sockaddr[0])
            self._send(sockaddr)

    def _send(self, sockaddr: tuple) -> None:
        sock = self._socket_for(socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET)
        if sock is not None:
            with contextlib.suppress(OSError):  # no route, no permission: try the others
                sock.sendto(protocolo.DISCOVERY_PROBE, sockaddr)

    def send_all(self) -> None:
        for sockaddr in self.targets:
            self._send(sockaddr)

    def take_resolved(self) -> None:
        """Probe the hosts whose names were resolved since the last call."""
        while self.resolving:
            try:
                sockaddrs = self._resolved.get_nowait()
            except queue.Empty:
                return
            if sockaddrs is None:
                self.resolving = False
            else:
                self._add(sockaddrs, unicast=True)

    def receive(self, timeout: float) -> list[tuple[bytes, tuple]]:
        """Datagrams that arrive within ``timeout`` s (a bounded batch per socket)."""
        sockets = list(self._sockets.values())
        if not sockets:
            time.sleep(timeout)  # nothing to listen on; still honour the caller's pacing
            return []
        received = []
        for sock in rede.readable_sockets(sockets, timeout):
            for _ in range(DATAGRAMS_PER_WAKE):
                try:
                    received.append(sock.recvfrom(protocolo.MAX_DISCOVERY_DATAGRAM + 1))
                except BlockingIOError:
                    break
                except OSError:  # e.g. Windows' report of an ICMP port unreachable
                    continue
        return received

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()


RESOLVE_TICK_S = 0.05
"""How often ``discover`` looks for names resolved in the background."""


def discover(port: int = protocolo.DEFAULT_PORT, hosts: Sequence[str] = (), *,
             broadcast: bool = True, timeout: float = 1.0,
             max_results: int = 64) -> list[FoundServer]:
    """Servers that answer a probe within ``timeout`` seconds, each once, sorted by name.

    Probes go to 255.255.255.255 and to each interface's broadcast address
    (unless ``broadcast`` is False) and to each of ``hosts`` (``host``,
    ``host:porta`` or ``[ipv6]:porta``; unresolvable ones are skipped), on
    ``port``; they are sent again halfway through, as UDP may drop them.
    A server is identified by the address its answer came from and the port
    it announces. Every answer is hostile input: anything that is not a
    well-formed ``SERVIDOR`` datagram is ignored, and at most
    ``max_results`` servers are returned. Returns early when only named
    hosts were probed and all of them answered. Never waits past ``timeout``.
    """
    start = time.monotonic()
    deadline = start + max(0.0, timeout)
    resend_at: float | None = start + max(0.0, timeout) / 2
    found: dict[tuple[str, int], FoundServer] = {}
    prober = _Prober(port, hosts, broadcast)
    try:
        while len(found) < max_results:
            prober.take_resolved()
            now = time.monotonic()
            if now >= deadline:
                break
            if not broadcast and not prober.resolving and not prober.awaiting:
                break  # every named host answered (or none could be probed)
            if resend_at is not None and now >= resend_at:
                prober.send_all()
                resend_at = None
            wake_at = min(deadline, resend_at or deadline)
            if prober.resolving:
                wake_at = min(wake_at, now + RESOLVE_TICK_S)
            for data, source in prober.receive(max(0.0, wake_at - now)):
                announcement = protocolo.parse_discovery_answer(data)
                if announcement is None:
                    continue
                prober.awaiting.discard(source[0])
                key = (source[0], announcement.port)
                if key not in found and len(found) < max_results:
                    found[key] = FoundServer(source[0], announcement.port, announcement.tls,
                                             announcement.name)
    finally:
        prober.close()
    return sorted(found.values(), key=_server_order)


class DiscoveryInBackground:
    """``discover`` running in a daemon thread; a GUI polls ``done()`` and reads ``result()``.

    The thread needs no stopping: ``discover`` ends by itself within its
    timeout (a slow DNS lookup is abandoned, not waited for).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._finished = threading.Event()
        self._servers: list[FoundServer] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs,
                                        name="descoberta-cliente", daemon=True)
        self._thread.start()

    def _run(self, *args: object, **kwargs: object) -> None:
        try:
            self._servers = discover(*args, **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to whoever reads the result
            self._error = exc
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = 0) -> list[FoundServer]:
        """The servers found; raises ``TimeoutError`` if not done within ``timeout`` s."""
        if not self._finished.wait(timeout):
            raise TimeoutError("a descoberta ainda não terminou")
        if self._error is not None:
            raise self._error
        return list(self._servers)


def discover_in_background(port: int = protocolo.DEFAULT_PORT, hosts: Sequence[str] = (), *,
                           broadcast: bool = True, timeout: float = 1.0,
                           max_results: int = 64) -> DiscoveryInBackground:
    """Start ``discover`` with these arguments without blocking; see ``DiscoveryInBackground``."""
    return DiscoveryInBackground(port, tuple(hosts), broadcast=broadcast, timeout=timeout,
                                 max_results=max_results)


# --------------------------------------------------------------------------
# Command line: ``python3 descoberta.py`` (or ``python3 chat.pyz descobrir``)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the servers found on the LAN; exit 1 when none answered.

    ``nc -u -b`` cannot show the answers (it only reads datagrams from the
    address it sent to, and servers answer from their own), so this is the
    way to try discovery by hand, and to name a server to probe directly.
    """


    parser = argumentos.PortugueseArgumentParser(
        prog="descoberta.py",
        description="Procura servidores do chat na rede local (UDP, porta do chat).")
    parser.add_argument("enderecos", nargs="*", metavar="ENDEREÇO",
                        help="também perguntar diretamente a estes endereços (host ou "
                             "host:porta), além do broadcast")
    parser.add_argument("--port", type=int, default=protocolo.DEFAULT_PORT, metavar="PORTA",
                        help=f"porta dos servidores (padrão: {protocolo.DEFAULT_PORT})")
    parser.add_argument("--tempo", type=float, default=1.0, metavar="S",
                        help="segundos esperando respostas (padrão: 1)")
    args = parser.parse_args(argv)
    servers = discover(args.port, args.enderecos, timeout=max(0.1, min(args.tempo, 30.0)))
    if not servers:
        print("nenhum servidor respondeu. Confira se está na mesma rede e se o firewall da "
              f"máquina do servidor libera a porta {args.port} (TCP e UDP).")
        return 1
    for server in servers:
        print(server.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
