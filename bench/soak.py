"""Soak test: hundreds of simulated clients behaving randomly, then the invariants.

For a fixed time, N clients (one event loop, non-blocking sockets) do what
people and programs do to a chat server: chat, stay silent, read slowly,
send garbage, vanish (close or TCP reset), quit, cancel and re-register,
reconnect, flood past the rate limit, or trickle bytes without a line feed.
Then every client stops, and the run checks:

* **no loss, no reordering**: for every (sender, recipient) pair whose two
  connections stayed open to the end, the sequence of messages received
  equals the sequence answered ``OK`` -- same texts, same order. If only the
  sender went away, every ``OK``'d message still arrived, in order (the ones
  whose reply it never saw may or may not). No message refused with
  ``ERRO`` (LIMITE, NAO_ENCONTRADO, ...) ever arrives, for any pair, and no
  ``MSG`` reaches a connection that never held its recipient's nickname;
* **registry**: ``LISTAR`` lists exactly the clients this program believes
  registered, and every subscriber's view built from ``ENTROU``/``SAIU``
  matches it;
* **one reply per request**: garbage gets exactly one ``ERRO`` per non-blank
  line; a client that trickles bytes gets ``ERRO TEMPO`` within the bound;
  no well-behaved client is ever disconnected;
* **resources**: the server's thread count returns to its baseline and its
  RSS to near it (``/proc/<pid>/status``); a PING round trip is still fast;
  the server logged no ERROR; a started server exits 0 on SIGTERM.

Nicknames are never reused (each registration gets a fresh one), so a
nickname names exactly one registration of one connection.

    python3 bench/soak.py                              # 300 clients, 30 s
    python3 bench/soak.py --clientes 500 --duracao 120 --semente 7
    python3 bench/soak.py --attach 127.0.0.1:1998 --pid-servidor 12345

Only the standard library; talks only to 127.0.0.0/8. Without ``--attach``
it starts ``servidor.py`` from this checkout on a free port of 127.0.0.1
(default limits, ``--tempo-registro`` from this script) and stops it at the
end. With ``--attach``, use a server nobody else is on (the registry check
expects only this program's clients). Prints a table and, last, one JSON
line with the figures. Exit status 1 if any invariant was broken.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import random
import selectors
import socket
import statistics
import struct
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import comum

# What the simulated clients do, with how many of every 100 do it.
CHATTY, SILENT, SLOW_READER, GARBAGE, FLAPPER, FLOODER, LURKER = (
    "falante", "calado", "leitor_lento", "lixo", "instavel", "inundador", "enrolador")
MIX = {CHATTY: 30, SILENT: 15, SLOW_READER: 10, GARBAGE: 10, FLAPPER: 20, FLOODER: 5,
       LURKER: 10}
WELL_BEHAVED = {CHATTY, SILENT, FLAPPER, FLOODER, GARBAGE}
"""Clients that read everything promptly: the server must never drop them."""

WINDOW = 8
"""Requests a chatty client keeps in flight at most."""
FLOOD_BURST = 150
"""ENVIAR lines a flooder pipelines at once: past the default burst of 100."""
PING_SAMPLES = 50
CLIENTS_PER_SOURCE = 32
"""Clients per source address (127.0.0.x): half the server's default --max-por-ip."""
LURKER_SLACK = 5.0
"""Seconds past the server's TEMPO bound by which a trickling client must be cut."""
SETTLE_TIMEOUT = 15.0
"""Bound on each final phase (draining replies, barriers, registry convergence)."""
THREADS_TIMEOUT = 10.0

# Garbage that must draw exactly one ERRO per line (blank lines draw none).
GARBAGE_LINES = [
    b"\xff\xfe lixo bin\xe1rio", b"XYZZY 42", b"ENVIAR", b"LISTAR agora", b"SAIR ja",
    b"A" * 5000, b"\xff" * 4200, b"ENVIAR ana oi\x01tchau", b"CANCELAR_REGISTRO",
    b"ASSINAR", b"REGISTRAR a b", b"REGISTRAR ana 1.2.3.4 0", b"\x00\x01\x02",
    b"RETORNAR", b"PINGUE",
]
BLANK_LINES = [b"", b"   ", b"\r", b" \r"]


def message_text(seq: int) -> str:
    """The text of a sender's message number ``seq``: checkable, of varied length."""
    return f"{seq} " + "çx" * ((seq * 37) % 120)


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on the IPv4 loopback network (127.0.0.0/8) only.

    ``comum.loopback_target`` does the parsing; IPv6 is refused on top, because
    the simulated clients bind source addresses 127.0.0.N.
    """
    try:
        host, port = comum.loopback_target(text)
    except ValueError:
        host = ""
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError(f"use 127.x.y.z:PORTA, não {text!r}")
    return host, port


# --------------------------------------------------------------------------
# The control connection


class ControlClient:
    """A plain blocking connection for the checks: LISTAR and PING round trips.

    It stays unregistered (so it is in no listing): keep it busy or short-lived,
    or the server's TEMPO bound closes it.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def line(self) -> str:
        while b"\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("o servidor fechou a conexão de controle")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def users(self) -> set[str]:
        self.sock.sendall(b"LISTAR\n")
        header = self.line()
        while header.startswith("ERRO LIMITE "):  # the server's rate limit applies here too
            time.sleep(0.1)
            self.sock.sendall(b"LISTAR\n")
            header = self.line()
        if not header.startswith("USUARIOS "):
            raise ConnectionError(f"resposta inesperada ao LISTAR: {header!r}")
        names = {self.line().split(" ")[1] for _ in range(int(header.split(" ")[1]))}
        if self.line() != "END":
            raise ConnectionError("LISTAR sem END")
        return names

    def ping_times(self, count: int) -> list[float]:
        """Milliseconds per PING round trip, ``count`` times in a row."""
        times: list[float] = []
        while len(times) < count:
            started = time.perf_counter()
            self.sock.sendall(b"PING %d\n" % len(times))
            reply = self.line()
            if reply.startswith("ERRO LIMITE "):  # not a sample: wait for a token
                time.sleep(0.1)
                continue
            if reply != f"PONG {len(times)}":
                raise ConnectionError(f"resposta inesperada ao PING: {reply!r}")
            times.append((time.perf_counter() - started) * 1000)
        return times

    def close(self) -> None:
        self.sock.close()


def latency(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3)}


# --------------------------------------------------------------------------
# Simulated clients


class LiveSet:
    """The nicknames registered now, with O(1) random choice."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, nick: str) -> None:
        self._index[nick] = len(self._items)
        self._items.append(nick)

    def discard(self, nick: str) -> None:
        position = self._index.pop(nick, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def choice(self, rng: random.Random) -> str | None:
        return rng.choice(self._items) if self._items else None

    def nicks(self) -> set[str]:
        return set(self._index)


@dataclass(eq=False)
class Session:
    """One connection of a simulated client, from connect to close."""

    sim: Sim
    sock: socket.socket
    opened: float
    nick: str = ""
    """The nickname registered (or being registered) now; '' if none."""
    nicks: set[str] = field(default_factory=set)
    """Every nickname this connection has held: MSG lines must name one of them."""
    registered: bool = False
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    pending: deque = field(default_factory=deque)
    """What each request still waiting for its reply was, in order."""
    listing: list[str] | None = None
    """The names of a LISTAR reply being read; None outside one."""
    reading: bool = True
    events: int = 0
    """The selector events this socket is registered for (0: not registered)."""
    alive: bool = True
    quitting: bool = False
    timed_out: bool = False
    garbage_expected: int = 0
    garbage_answered: int = 0
    last_line: str = ""
    """The last line the server sent on it: why it was closed, when it says."""
    presence: set[str] | None = None
    """Who is online as this subscriber sees it; None until its snapshot, or if untracked."""
    presence_early: list[str] | None = None
    presence_valid: bool = False
    barrier_done: bool = False


@dataclass(eq=False)
class Sim:
    """One simulated client: a behaviour, and the connections it makes over time."""

    number: int
    behavior: str
    source: str
    subscriber: bool
    session: Session | None = None
    sessions: int = 0
    nick_serial: int = 0

    def fresh_nick(self) -> str:
        self.nick_serial += 1
        return f"{self.behavior[:3]}{self.number}n{self.nick_serial}"


@dataclass
class Registration:
    """The life of one nickname (the soak never reuses one)."""

    session: Session
    registered_at: float
    ended_at: float | None = None


class Soak:
    """Runs the simulated clients against one server and checks the invariants."""

    def __init__(self, address: tuple[str, int], clients: int, duration: float, seed: int,
                 register_timeout: float, sources: int, server_pid: int | None,
                 limits_known: bool) -> None:
        self.address = address
        self.duration = duration
        self.rng = random.Random(seed)
        self.register_timeout = register_timeout
        self.server_pid = server_pid
        self.limits_known = limits_known
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self.live = LiveSet()
        self.registrations: dict[str, Registration] = {}
        self.sessions: list[Session] = []
        self.violations: list[str] = []
        self.counts: Counter[str] = Counter()
        # Per (sender nick, recipient nick): sequence numbers.
        self.sent: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.accepted: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.refused: dict[tuple[str, str], set[int]] = defaultdict(set)
        self.received: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.next_seq: Counter[str] = Counter()
        self.not_found: set[str] = set()
        self.acting = True
        self.peak_threads = 0
        behaviors = [b for b, weight in MIX.items() for _ in range(weight)]
        if not register_timeout:
            behaviors = [b for b in behaviors if b != LURKER]
        self.sims = [Sim(i, behaviors[(i * 37) % len(behaviors)],
                         f"127.0.0.{1 + i % max(1, sources)}", self.rng.random() < 0.3)
                     for i in range(clients)]

    # -- bookkeeping --

    def violation(self, text: str) -> None:
        self.counts["violacoes"] += 1
        if len(self.violations) < 50:
            self.violations.append(text)

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._timer_ids), action))

    # -- connections --

    def connect(self, sim: Sim) -> None:
        if not self.acting:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((sim.source, 0))
            sock.settimeout(5.0)
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            self.violation(f"{sim.behavior} {sim.number}: conexão falhou: {exc}")
            self.at(1.0, lambda: self.connect(sim))
            return
        sock.setblocking(False)
        session = Session(sim, sock, time.monotonic())
        sim.session, sim.sessions = session, sim.sessions + 1
        self.sessions.append(session)
        self.counts["conexoes"] += 1
        self.update_interest(session)
        self.start_behavior(session)

    def update_interest(self, session: Session) -> None:
        if not session.alive:
            return
        events = (selectors.EVENT_READ if session.reading else 0) | (
            selectors.EVENT_WRITE if session.outbuf else 0)
        if events == session.events:
            return
        if not session.events:
            self.selector.register(session.sock, events, session)
        elif not events:
            self.selector.unregister(session.sock)
        else:
            self.selector.modify(session.sock, events, session)
        session.events = events

    def write(self, session: Session, data: bytes) -> None:
        if not session.alive:
            return
        session.outbuf += data
        self.flush(session)

    def flush(self, session: Session) -> None:
        try:
            sent = session.sock.send(session.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The server closed first: what it said before closing (an ERRO
            # TEMPO, say) is still waiting to be read, and explains why.
            self.read_what_is_left(session)
            self.ended(session, "erro ao enviar")
            return
        del session.outbuf[:sent]
        self.update_interest(session)

    def read_what_is_left(self, session: Session) -> None:
        """Read everything already received, without waiting (may end the session)."""
        session.sock.setblocking(False)
        while session.alive:
            try:
                data = session.sock.recv(262144, socket.MSG_PEEK)
            except OSError:
                return
            if not data:
                self.ended(session, "EOF")
                return
            self.on_readable(session)

    def request(self, session: Session, line: str, kind: tuple) -> None:
        session.pending.append(kind)
        self.write(session, line.encode("utf-8") + b"\n")

    def close(self, session: Session, reset: bool) -> None:
        """Leave without a word: FIN, or RST with ``reset`` (SO_LINGER 0)."""
        if reset:
            with contextlib.suppress(OSError):
                session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
        self.forget_registration(session)
        self.finish(session)
        self.counts["fechamentos_abruptos"] += 1

    def finish(self, session: Session) -> None:
        session.alive = False
        if session.events:
            self.selector.unregister(session.sock)
            session.events = 0
        session.sock.close()

    def forget_registration(self, session: Session) -> None:
        """From now on this program does not count ``session`` as registered."""
        if session.nick:
            self.live.discard(session.nick)
            registration = self.registrations.get(session.nick)
            if registration and registration.ended_at is None:
                registration.ended_at = time.monotonic()
        session.registered = False
        session.presence_valid = False

    def ended(self, session: Session, why: str) -> None:
        """The server closed (or reset) ``session``."""
        if not session.alive:
            return
        sim = session.sim
        if not (session.quitting or session.timed_out):
            if sim.behavior == SLOW_READER:
                self.counts["leitores_lentos_derrubados"] += 1
            elif sim.behavior in WELL_BEHAVED or self.limits_known:
                self.violation(f"{sim.behavior} {session.nick or sim.number}: o servidor "
                               f"fechou a conexão ({why}); pendentes: {len(session.pending)}; "
                               f"última linha: {session.last_line[:80]!r}")
        self.forget_registration(session)
        self.finish(session)
        if sim.behavior in (FLAPPER, LURKER, SLOW_READER, GARBAGE):
            self.at(self.rng.uniform(0.0, 1.0), lambda: self.connect(sim))

    # -- behaviours --

    def start_behavior(self, session: Session) -> None:
        behavior = session.sim.behavior
        if behavior == GARBAGE:
            self.at(self.rng.uniform(0.0, 0.5), lambda: self.send_garbage(session))
        elif behavior == LURKER:
            self.at(self.rng.uniform(0.0, 0.3), lambda: self.trickle(session))
            self.at(self.register_timeout + LURKER_SLACK,
                    lambda: self.check_lurker_cut(session))
        else:
            self.register(session)
            if behavior == SLOW_READER:
                self.at(self.rng.uniform(0.2, 2.0), lambda: self.toggle_reading(session))
            if behavior == FLAPPER:
                self.at(self.rng.uniform(0.5, 4.0), lambda: self.flap(session))
            if behavior in (CHATTY, FLAPPER):
                self.at(self.rng.uniform(0.0, 0.5), lambda: self.chat(session))
            if behavior == FLOODER:
                self.at(self.rng.uniform(0.5, 2.0), lambda: self.flood(session))

    def register(self, session: Session) -> None:
        session.nick = session.sim.fresh_nick()
        session.nicks.add(session.nick)
        self.request(session, f"REGISTRAR {session.nick}", ("REGISTRAR", session.nick))
        if session.sim.subscriber:
            self.request(session, "ASSINAR", ("ASSINAR",))
            self.request(session, "LISTAR", ("LISTAR",))

    def chat(self, session: Session) -> None:
        if not (self.acting and session.alive):
            return
        if session.registered and len(session.pending) < WINDOW:
            roll = self.rng.random()
            if roll < 0.85:
                peer = self.live.choice(self.rng)
                if peer is not None:
                    self.send_message(session, peer)
            elif roll < 0.90:
                self.request(session, "LISTAR", ("LISTAR",))
            elif roll < 0.95:
                peer = self.live.choice(self.rng) or "ninguem"
                self.request(session, f"RETORNAR {peer}", ("RETORNAR",))
            else:
                self.request(session, "PING soak", ("PING", "soak"))
        self.at(self.rng.uniform(0.05, 0.5), lambda: self.chat(session))

    def send_message(self, session: Session, recipient: str) -> None:
        sender = session.nick
        self.next_seq[sender] += 1
        seq = self.next_seq[sender]
        self.sent[(sender, recipient)].append(seq)
        self.counts["enviar"] += 1
        self.request(session, f"ENVIAR {recipient} {message_text(seq)}",
                     ("ENVIAR", sender, recipient, seq))

    def flood(self, session: Session) -> None:
        if not (self.acting and session.alive):
            return
        peer = self.live.choice(self.rng)
        if session.registered and peer is not None:
            for _ in range(FLOOD_BURST):
                self.send_message(session, peer)
        self.at(self.rng.uniform(2.0, 5.0), lambda: self.flood(session))

    def quit(self, session: Session) -> None:
        if session.alive:
            self.request(session, "SAIR", ("SAIR",))

    def cancel(self, session: Session) -> None:
        if session.alive:
            self.request(session, "CANCELAR_REGISTRO", ("CANCELAR",))

    def flap(self, session: Session) -> None:
        """End this registration one way or another."""
        if not (self.acting and session.alive):
            return
        roll = self.rng.random()
        if roll < 0.35:
            self.close(session, reset=False)
            self.at(self.rng.uniform(0.0, 1.0), lambda: self.connect(session.sim))
        elif roll < 0.60:
            self.close(session, reset=True)
            self.at(self.rng.uniform(0.0, 1.0), lambda: self.connect(session.sim))
        elif roll < 0.85:
            self.forget_registration(session)
            session.quitting = True
            self.request(session, "SAIR", ("SAIR",))
        elif session.registered:
            self.forget_registration(session)
            self.cancel(session)  # registers again once the OK comes back
            self.at(self.rng.uniform(0.5, 4.0), lambda: self.flap(session))
        else:
            self.at(0.5, lambda: self.flap(session))

    def toggle_reading(self, session: Session) -> None:
        if not session.alive:
            return
        session.reading = not session.reading or not self.acting
        self.update_interest(session)
        if self.acting:
            self.at(self.rng.uniform(0.5, 3.0), lambda: self.toggle_reading(session))

    def send_garbage(self, session: Session) -> None:
        if not (self.acting and session.alive):
            return
        lines = [self.rng.choice(GARBAGE_LINES) if self.rng.random() < 0.8
                 else self.rng.choice(BLANK_LINES) for _ in range(self.rng.randint(1, 4))]
        session.garbage_expected += sum(1 for line in lines if line.strip(b" \r"))
        data = b"".join(line + b"\n" for line in lines)
        # Cut it at random places: lines may arrive in pieces.
        cuts = sorted(self.rng.sample(range(1, len(data)), min(2, len(data) - 1)))
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            self.write(session, data[start:end])
        self.at(self.rng.uniform(0.1, 0.8), lambda: self.send_garbage(session))

    def trickle(self, session: Session) -> None:
        """A slow-loris: a byte now and then, never a whole line."""
        if not (self.acting and session.alive):
            return
        self.write(session, b"R")
        self.at(min(0.5, self.register_timeout / 3), lambda: self.trickle(session))

    def check_lurker_cut(self, session: Session) -> None:
        if session.alive:
            self.read_what_is_left(session)  # this loop may be behind, not the server
        if session.alive and self.acting:
            self.violation(f"enrolador {session.sim.number}: não recebeu ERRO TEMPO em "
                           f"{self.register_timeout + LURKER_SLACK:g} s")

    # -- what comes back --

    def on_readable(self, session: Session) -> None:
        try:
            data = session.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.ended(session, f"erro ao ler: {exc}")
            return
        if not data:
            self.ended(session, "EOF")
            return
        session.inbuf += data
        start = 0
        while session.alive:
            end = session.inbuf.find(b"\n", start)
            if end < 0:
                break
            self.on_line(session, session.inbuf[start:end].decode("utf-8", "replace"))
            start = end + 1
        del session.inbuf[:start]

    def on_line(self, session: Session, line: str) -> None:
        session.last_line = line
        behavior = session.sim.behavior
        if behavior == GARBAGE:
            if line.startswith("ERRO TEMPO "):
                self.on_garbage_timeout(session)
                return
            session.garbage_answered += 1
            if not line.startswith("ERRO "):
                self.violation(f"lixo {session.sim.number}: resposta que não é ERRO: {line[:60]!r}")
            return
        if behavior == LURKER:
            self.on_lurker_line(session, line)
            return
        if line.startswith("MSG "):
            self.on_message(session, line)
        elif line.startswith(("ENTROU ", "SAIU ")):
            self.on_presence(session, line)
        elif session.listing is not None:
            self.on_listing_line(session, line)
        elif line.startswith("ERRO TEMPO ") and not session.registered and not session.pending:
            # Its REGISTRAR was refused (the address's budget) while it was not
            # reading, so it never retried: an idle unregistered connection.
            session.timed_out = True
            self.counts["tempo_esgotado"] += 1
        elif not session.pending:
            self.violation(f"{session.nick}: linha sem pedido: {line[:60]!r}")
        else:
            self.on_reply(session, session.pending.popleft(), line)

    def on_garbage_timeout(self, session: Session) -> None:
        """A garbage client never registers, so TEMPO may rightly end it.

        Its lines restart the clock only when the server reads them: blank
        lines do not count, and an address over its budget (a flooder's
        neighbour) is not read for a while. What always holds is that the
        clock starts at the connection: being cut sooner is the server's fault.
        """
        session.timed_out = True
        self.counts["tempo_esgotado"] += 1
        lived = time.monotonic() - session.opened
        if self.limits_known and lived < self.register_timeout * 0.9:
            self.violation(f"lixo {session.sim.number}: ERRO TEMPO cedo ({lived:.2f} s)")

    def on_lurker_line(self, session: Session, line: str) -> None:
        lived = time.monotonic() - session.opened
        if line.startswith("ERRO TEMPO "):
            session.timed_out = True
            self.counts["tempo_esgotado"] += 1
            if self.limits_known and lived < self.register_timeout * 0.9:
                self.violation(f"enrolador {session.sim.number}: ERRO TEMPO cedo ({lived:.2f} s)")
        else:
            self.violation(f"enrolador {session.sim.number}: linha inesperada {line[:60]!r}")

    def on_message(self, session: Session, line: str) -> None:
        _, sender, recipient, text = line.split(" ", 3)
        self.counts["msg_recebidas"] += 1
        if recipient not in session.nicks:
            self.violation(f"MSG para {recipient} chegou à conexão de {session.nick}")
            return
        seq = int(text.split(" ", 1)[0])
        if text != message_text(seq):
            self.violation(f"texto corrompido de {sender} para {recipient}: {text[:40]!r}")
        self.received[(sender, recipient)].append(seq)

    def on_presence(self, session: Session, line: str) -> None:
        if session.presence is not None:
            apply_presence(session.presence, line)
        elif session.presence_early is not None:
            session.presence_early.append(line)

    def on_listing_line(self, session: Session, line: str) -> None:
        if line == "END":
            names, session.listing = session.listing, None
            if session.presence_early is not None and session.presence_valid:
                session.presence = set(names)
                for event in session.presence_early:
                    apply_presence(session.presence, event)
                session.presence_early = None
        elif line.startswith("USUARIO "):
            session.listing.append(line.split(" ")[1])
        else:
            self.violation(f"{session.nick}: linha inesperada no LISTAR: {line[:60]!r}")

    def on_reply(self, session: Session, kind: tuple, line: str) -> None:
        what = kind[0]
        limited = line.startswith("ERRO LIMITE ")
        if limited:
            self.counts["limite"] += 1
        if what == "ENVIAR":
            self.on_send_reply(session, kind, line)
        elif what == "REGISTRAR":
            if line == "OK" and session.alive and session.nick == kind[1]:
                session.registered = True
                self.live.add(session.nick)
                self.registrations[session.nick] = Registration(session, time.monotonic())
            elif limited:
                self.at(0.2, lambda: self.register(session))
            elif line != "OK":
                self.violation(f"REGISTRAR {kind[1]}: {line[:60]!r}")
        elif what == "ASSINAR":
            if line == "OK":
                # A fresh view: a snapshot (the LISTAR queued right behind)
                # plus the events that come with and after it.
                session.presence_valid = session.registered
                session.presence, session.presence_early = None, []
            elif line.startswith("ERRO NAO_REGISTRADO ") and not session.registered:
                pass  # pipelined behind a REGISTRAR the address's budget refused
            elif not limited:
                self.violation(f"ASSINAR de {session.nick}: {line[:60]!r}")
        elif what == "LISTAR":
            if line.startswith("USUARIOS "):
                session.listing = []
            elif limited:
                session.presence_valid = False
            else:
                self.violation(f"LISTAR de {session.nick}: {line[:60]!r}")
        elif what == "PING":
            if line == f"PONG {kind[1]}":
                if kind[1] == "fim":
                    session.barrier_done = True
            elif limited and kind[1] == "fim":
                self.at(0.1, lambda: self.request(session, "PING fim", ("PING", "fim")))
            elif not limited:
                self.violation(f"PING de {session.nick}: {line[:60]!r}")
        elif what in ("SAIR", "CANCELAR"):
            if limited:  # the rate limit applies to leaving too: try again shortly
                retry = self.quit if what == "SAIR" else self.cancel
                self.at(0.2, lambda: retry(session))
            elif line != "OK":
                self.violation(f"{what} de {session.nick}: {line[:60]!r}")
            elif what == "CANCELAR" and session.alive:
                self.register(session)
        elif what == "RETORNAR" and not (line.startswith("ENCONTRADO ")
                                         or line == "NAO ENCONTRADO" or limited):
            self.violation(f"RETORNAR de {session.nick}: {line[:60]!r}")

    def on_send_reply(self, session: Session, kind: tuple, line: str) -> None:
        _, sender, recipient, seq = kind
        pair = (sender, recipient)
        if line == "OK":
            self.accepted[pair].append(seq)
            self.counts["enviar_ok"] += 1
            return
        self.refused[pair].add(seq)
        code = line.split(" ")[1] if line.startswith("ERRO ") else line
        self.counts[f"recusadas_{code}"] += 1
        if code == "NAO_ENCONTRADO":
            # Judged at the end: the recipient may have been dropped by the
            # server a moment ago, and its EOF not read yet.
            self.not_found.add(recipient)
        elif code not in ("LIMITE", "DESTINATARIO_LENTO"):
            self.violation(f"ENVIAR {sender}->{recipient}: {line[:60]!r}")

    # -- the event loop --

    def run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Serve sockets and timers until ``done()`` or ``deadline``; True if done."""
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            while self.timers and self.timers[0][0] <= now:
                _, _, action = heapq.heappop(self.timers)
                action()
            wait = min(deadline, self.timers[0][0] if self.timers else deadline) - now
            if not self.selector.get_map():
                time.sleep(max(0.0, min(wait, 0.05)))
                continue
            for key, events in self.selector.select(max(0.0, min(wait, 0.05))):
                session = key.data
                if events & selectors.EVENT_WRITE and session.alive:
                    self.flush(session)
                if events & selectors.EVENT_READ and session.alive:
                    self.on_readable(session)
        return True

    def sample_server(self) -> None:
        threads = comum.process_status(self.server_pid).get("Threads", 0)
        self.peak_threads = max(self.peak_threads, threads)
        if self.acting:
            self.at(0.25, self.sample_server)

    # -- phases --

    def load(self) -> None:
        """The random part: every client starts within the first second."""
        for sim in self.sims:
            self.at(self.rng.uniform(0.0, 1.0), lambda sim=sim: self.connect(sim))
        self.sample_server()
        self.run_until(lambda: False, time.monotonic() + self.duration)
        self.acting = False

    def live_sessions(self) -> list[Session]:
        return [sim.session for sim in self.sims
                if sim.session is not None and sim.session.alive]

    def settle(self) -> None:
        """Stop acting; wait for every reply; PING-barrier every talking client."""
        self.timers.clear()
        for session in self.live_sessions():
            if session.sim.behavior == LURKER:
                self.close(session, reset=False)
            elif not session.reading:
                session.reading = True
                self.update_interest(session)
        sessions = [s for s in self.live_sessions() if s.sim.behavior != LURKER]
        ok = self.run_until(
            lambda: all(not s.alive or (not s.pending and s.listing is None
                                        and s.garbage_answered >= s.garbage_expected)
                        for s in sessions),
            time.monotonic() + SETTLE_TIMEOUT)
        if not ok:
            waiting = [s.nick or s.sim.number for s in sessions
                       if s.alive and (s.pending or s.garbage_answered < s.garbage_expected)]
            self.violation(f"respostas que não chegaram em {SETTLE_TIMEOUT:g} s: {waiting[:5]}")
        for session in sessions:
            if session.alive and session.garbage_answered != session.garbage_expected:
                self.violation(f"lixo {session.sim.number}: {session.garbage_answered} "
                               f"respostas para {session.garbage_expected} linhas")
            if session.alive and session.sim.behavior == GARBAGE:
                self.close(session, reset=False)
        self.barrier()

    def barrier(self) -> None:
        sessions = [s for s in self.live_sessions() if s.sim.behavior != GARBAGE]
        for session in sessions:
            session.barrier_done = False
            self.request(session, "PING fim", ("PING", "fim"))
        if not self.run_until(lambda: all(s.barrier_done or not s.alive for s in sessions),
                              time.monotonic() + SETTLE_TIMEOUT):
            self.violation(f"PING final sem resposta em {SETTLE_TIMEOUT:g} s")

    def check_messages(self) -> dict[str, int]:
        """Compare what was sent, accepted and received, pair by pair."""
        alive = {s for s in self.live_sessions()}
        owner = {nick: session for session in self.sessions for nick in session.nicks}
        lost = reordered = refused_delivered = phantom = strict_pairs = 0
        pairs = set(self.sent) | set(self.received)
        for pair in pairs:
            sender, recipient = pair
            received, accepted = self.received.get(pair, []), self.accepted.get(pair, [])
            if any(a >= b for a, b in itertools.pairwise(received)):
                reordered += 1
                self.violation(f"{sender}->{recipient}: fora de ordem ou duplicada")
            refused_here = self.refused.get(pair, set()) & set(received)
            if refused_here:
                refused_delivered += len(refused_here)
                self.violation(f"{sender}->{recipient}: {len(refused_here)} recusada(s) "
                               f"entregue(s)")
            if set(received) - set(self.sent.get(pair, [])):
                phantom += 1
                self.violation(f"{sender}->{recipient}: mensagem que ninguém enviou")
            if owner.get(recipient) not in alive:
                continue  # the recipient left: what it got before is all we can know
            missing = set(accepted) - set(received)
            lost += len(missing)
            if missing:
                self.violation(f"{sender}->{recipient}: {len(missing)} aceita(s) com OK "
                               f"perdida(s)")
            if owner.get(sender) in alive:
                strict_pairs += 1
                if received != accepted:
                    self.violation(f"{sender}->{recipient}: recebidas != aceitas")
        for recipient in self.not_found:
            registration = self.registrations.get(recipient)
            if registration is not None and registration.ended_at is None:
                self.violation(f"ENVIAR para {recipient}: NAO_ENCONTRADO, mas continua "
                               f"registrado")
        return {"pares": len(pairs), "pares_estritos": strict_pairs, "perdidas": lost,
                "fora_de_ordem": reordered, "recusadas_entregues": refused_delivered,
                "fantasmas": phantom}

    def check_registry(self, control: ControlClient) -> int:
        """LISTAR must converge to the registrations this program believes alive."""
        believed = self.live.nicks()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        listed = control.users()
        while listed != believed and time.monotonic() < deadline:
            time.sleep(0.05)  # closes this program made are still being noticed
            listed = control.users()
        if listed != believed:
            self.violation(f"LISTAR difere: a mais {sorted(listed - believed)[:5]}, "
                           f"a menos {sorted(believed - listed)[:5]}")
        # Every subscriber's view, once the last SAIU has had time to arrive.
        views = [s for s in self.live_sessions() if s.presence is not None and s.presence_valid]
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            wrong = [s for s in views if s.presence != listed]
            if not wrong or time.monotonic() >= deadline:
                break
            self.barrier()
        for session in wrong[:5]:
            self.violation(f"visão de {session.nick} (ENTROU/SAIU) difere do LISTAR: "
                           f"a mais {sorted(session.presence - listed)[:3]}, "
                           f"a menos {sorted(listed - session.presence)[:3]}")
        return len(views)

    def disconnect_all(self) -> None:
        """Half leave with SAIR, half vanish; wait for the SAIR replies."""
        quitters = []
        for i, session in enumerate(self.live_sessions()):
            if i % 2:
                self.close(session, reset=i % 4 == 1)
            else:
                session.quitting = True
                self.forget_registration(session)
                self.request(session, "SAIR", ("SAIR",))
                quitters.append(session)
        self.run_until(lambda: all(not s.alive for s in quitters),
                       time.monotonic() + SETTLE_TIMEOUT)
        for session in quitters:
            if session.alive:
                self.finish(session)
        self.selector.close()


def apply_presence(view: set[str], line: str) -> None:
    word, _, nick = line.partition(" ")
    if word == "ENTROU":
        view.add(nick)
    else:
        view.discard(nick)


# --------------------------------------------------------------------------
# A whole run


@dataclass
class Result:
    figures: dict
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


def wait_for_threads(pid: int | None, baseline: int) -> int:
    """Poll /proc until the server is back to ``baseline`` threads (bounded)."""
    deadline = time.monotonic() + THREADS_TIMEOUT
    threads = comum.process_status(pid).get("Threads", 0)
    while pid and threads > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
        threads = comum.process_status(pid).get("Threads", 0)
    return threads


def run_soak(clients: int = 300, duration: float = 30.0, seed: int | None = None,
             attach: tuple[str, int] | None = None, server_pid: int | None = None,
             register_timeout: float = 3.0, sources: int | None = None) -> Result:
    """Run one soak and return its figures and the invariants it found broken.

    RSS is allowed to stay above its baseline by a margin: the allocator keeps
    some of what hundreds of threads used (over ten soaks in a row against one
    server, the growth flattens out after the first), which is not a leak.
    """
    rss_margin_kib = max(32 * 1024, 128 * clients)
    if sources is None:
        # At most ~32 clients per address: half the server's default per-address
        # limit, leaving room for reconnections the server has not yet seen close.
        sources = max(1, -(-clients // CLIENTS_PER_SOURCE))
    seed = random.randrange(1 << 30) if seed is None else seed
    server = None if attach else comum.ServerUnderTest(
        options=["--tempo-registro", f"{register_timeout:g}"], watch_log=True).start()
    try:
        address = attach or (server.host, server.port)
        pid = server.pid if server else server_pid
        before = comum.process_status(pid)
        control = ControlClient(address)
        ping_before = latency(control.ping_times(PING_SAMPLES))
        control.close()  # an idle unregistered connection would get ERRO TEMPO
        soak = Soak(address, clients, duration, seed, register_timeout, sources, pid,
                    limits_known=server is not None)
        started = time.monotonic()
        soak.load()
        soak.settle()
        messages = soak.check_messages()
        control = ControlClient(address)
        subscribers = soak.check_registry(control)
        ping_after = latency(control.ping_times(PING_SAMPLES))
        soak.disconnect_all()
        control.close()
        elapsed = time.monotonic() - started
        threads_after = wait_for_threads(pid, before.get("Threads", 0))
        after = comum.process_status(pid)
        violations = list(soak.violations)
        if pid and before:
            if threads_after > before["Threads"]:
                violations.append(f"threads do servidor: {before['Threads']} antes, "
                                  f"{threads_after} depois")
            if after.get("VmRSS", 0) > before["VmRSS"] + rss_margin_kib:
                violations.append(f"RSS do servidor: {before['VmRSS']} KiB antes, "
                                  f"{after.get('VmRSS')} KiB depois")
        if ping_after["p50_ms"] > max(20.0, 10 * ping_before["p50_ms"]):
            violations.append(f"PING lento depois do soak: {ping_after}")
        exit_code = exit_seconds = None
        if server is not None:
            violations.extend(f"log do servidor: {line}" for line in server.errors[:5])
            exit_code, exit_seconds = server.terminate()
            if exit_code != 0 or exit_seconds > 3.0:
                violations.append(f"SIGTERM: código {exit_code} em {exit_seconds:.2f} s")
        counts = soak.counts
        figures = {
            "clientes": clients, "duracao_s": round(elapsed, 1), "semente": seed,
            "comportamentos": dict(Counter(sim.behavior for sim in soak.sims)),
            "conexoes": counts["conexoes"], "fechamentos_abruptos": counts["fechamentos_abruptos"],
            "enviar": counts["enviar"], "enviar_ok": counts["enviar_ok"],
            "msg_recebidas": counts["msg_recebidas"],
            "recusadas": {k.removeprefix("recusadas_"): v for k, v in counts.items()
                          if k.startswith("recusadas_")},
            **messages,
            "leitores_lentos_derrubados": counts["leitores_lentos_derrubados"],
            "tempo_esgotado": counts["tempo_esgotado"],
            "assinantes_conferidos": subscribers,
            "threads": {"antes": before.get("Threads"), "pico": soak.peak_threads or None,
                        "depois": threads_after if pid else None},
            "rss_kib": {"antes": before.get("VmRSS"), "pico": after.get("VmHWM"),
                        "depois": after.get("VmRSS")},
            "ping_antes": ping_before, "ping_depois": ping_after,
            "saida_sigterm": {"codigo": exit_code, "segundos": exit_seconds and
                              round(exit_seconds, 2)},
            # The list keeps the first 50 of the soak's own; the count keeps them all.
            "violacoes": soak.counts["violacoes"] + len(violations) - len(soak.violations),
        }
        return Result(figures, violations)
    finally:
        if server is not None:
            server.stop()


def print_report(result: Result, out=sys.stdout) -> None:
    f = result.figures
    rows = [
        ("clientes simulados", f"{f['clientes']} ({f['conexoes']} conexões, "
                               f"{f['fechamentos_abruptos']} fechadas sem aviso)"),
        ("duração", f"{f['duracao_s']} s (semente {f['semente']})"),
        ("ENVIAR: enviados / OK", f"{f['enviar']} / {f['enviar_ok']}"),
        ("MSG recebidas", f"{f['msg_recebidas']}"),
        ("recusadas", ", ".join(f"{k} {v}" for k, v in sorted(f["recusadas"].items())) or "0"),
        ("perdidas / fora de ordem", f"{f['perdidas']} / {f['fora_de_ordem']} "
                                     f"({f['pares']} pares, {f['pares_estritos']} estritos)"),
        ("ERRO TEMPO (enrolador)", f"{f['tempo_esgotado']}"),
        ("threads antes/pico/depois", "/".join(str(f["threads"][k])
                                              for k in ("antes", "pico", "depois"))),
        ("RSS KiB antes/pico/depois", "/".join(str(f["rss_kib"][k])
                                              for k in ("antes", "pico", "depois"))),
        ("PING p50/p99 ms antes", f"{f['ping_antes']['p50_ms']} / {f['ping_antes']['p99_ms']}"),
        ("PING p50/p99 ms depois", f"{f['ping_depois']['p50_ms']} / "
                                   f"{f['ping_depois']['p99_ms']}"),
        ("violações", f"{f['violacoes']}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)
    for text in result.violations:
        print(f"  VIOLAÇÃO: {text}", file=out)
    print(json.dumps(f, ensure_ascii=False), file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py", description="Teste de resistência: centenas de clientes aleatórios "
                                    "e, no fim, a conferência das invariantes.")
    parser.add_argument("--clientes", type=int, default=300,
                        help="clientes simulados ao mesmo tempo (padrão: 300)")
    parser.add_argument("--duracao", type=float, default=30.0,
                        help="segundos de carga aleatória (padrão: 30)")
    parser.add_argument("--semente", type=int, help="semente do gerador aleatório")
    parser.add_argument("--attach", type=parse_target, metavar="HOST:PORTA",
                        help="usar um servidor já rodando (só 127.x.y.z)")
    parser.add_argument("--pid-servidor", type=int,
                        help="PID do servidor do --attach, para threads e memória")
    parser.add_argument("--tempo-registro", type=float,
                        help="--tempo-registro do servidor iniciado aqui (padrão: 3); com "
                             "--attach, o que o servidor usa (padrão: 0 = desconhecido, "
                             "sem clientes enroladores)")
    parser.add_argument("--origens", type=int,
                        help="endereços de origem 127.0.0.1..N, para não esbarrar no "
                             "limite por endereço (padrão: um para cada "
                             f"{CLIENTS_PER_SOURCE} clientes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    register_timeout = args.tempo_registro
    if register_timeout is None:
        register_timeout = 0.0 if args.attach else 3.0
    result = run_soak(args.clientes, args.duracao, args.semente, args.attach,
                      args.pid_servidor, register_timeout, args.origens)
    print_report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
