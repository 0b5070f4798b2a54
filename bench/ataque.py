"""Attack benchmark: what one hostile address does to honest users, before and after hardening.

Each attack comes from one address (127.0.0.2), in its own process (so it
never shares a GIL with the measurement), and is bounded in time; honest
users come from other loopback addresses (127.0.0.3, 127.0.0.4). The server
runs with its **default limits** (the store on disk, as by default), except
where an attack says otherwise. Every attack runs against this version of
the server ("depois") and against version 1 ("antes", commit ``e05a9ef``,
taken from git into a temporary directory), in the same run:

1. **Floods of lines** (blank lines, or junk commands) from 8 connections:
   an honest pair's ENVIAR->MSG latency (one message every 60 ms, within
   the per-connection rate) without attack, during the flood, and in the
   2 s after it stops.
2. **Reconnecting in a loop**: 16 connections at a time, each sending 150
   ``PING`` and closing: ``PING`` commands executed per second.
3. **Bursts at a reader**: 64 connections, each within the per-connection
   rate (a burst of 100, then 19/s), send 3.9 KB messages to one reader that
   reads at 12.5 MB/s (a 100 Mbit LAN): is the reader ever dropped? (Here
   the per-address registration limit is off, so 64 senders can register at
   once; every other limit stays at its default.)
4. **SIGTERM under a flood** of blank lines from 64 connections (after the
   flood has run for the attack's duration): how long the server takes to
   exit, and its exit status.
5. **TLS ClientHello flood**: an honest TLS connection (connect, handshake,
   ``PING``) without and during a replay of ClientHellos from 8 threads, each
   waiting for the server's answer (so the server does the handshake's
   costly part) before closing (needs ``openssl`` for a throwaway
   certificate; skipped with a message otherwise).

    python3 bench/ataque.py                     # every attack, before and after
    python3 bench/ataque.py --ataques inundacao,tls --sem-antes
    python3 bench/ataque.py --rapido            # a few seconds, for CI (after only)

Prints one line per measurement (stderr), a table and one JSON line. Exit
status 1 if a measurement could not run, or if, on this version, an honest
message was lost or the reader was dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import comum

ATTACKER = "127.0.0.2"
HONEST_A, HONEST_B = "127.0.0.3", "127.0.0.4"
VERSION_ONE = "e05a9ef"
"""The last commit of version 1 (before the hardening and the store)."""
LINGER_RST = struct.pack("ii", 1, 0)
TIMEOUT = 10.0
PROBE_EVERY = 0.06
"""Seconds between the honest pair's messages: ~17/s, under the default 20/s per connection."""
SENDER_RATE = 19.0
"""Messages per second each of the 64 senders keeps up after its burst: under the default 20/s."""
READER_RATE = 12.5e6
"""Bytes per second the honest reader reads: a 100 Mbit/s LAN."""
PAYLOADS = {"linhas em branco": b"\n" * 4096, "lixo": b"XYZZY 1\n" * 512}
ATTACKS = ("inundacao", "reconexao", "leitora", "sigterm", "tls")


# --------------------------------------------------------------------------
# The attacker's process


def _attacker_socket(address: tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((ATTACKER, 0))
        sock.settimeout(timeout)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def _close_rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.close()


def flood(address: tuple[str, int], connections: int, payload: bytes,
          ready: Callable[[], None], stop: Callable[[], bool]) -> dict:
    """``connections`` sockets sending ``payload`` whenever they can, replies drained."""
    socks = [_attacker_socket(address) for _ in range(connections)]
    for sock in socks:
        sock.setblocking(False)
    ready()
    sent = closed = 0
    try:
        while socks and not stop():
            _, writable, _ = select.select([], socks, [], 0.05)
            for sock in writable:
                try:
                    sent += sock.send(payload)
                    sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    socks.remove(sock)
                    sock.close()
                    closed += 1
    finally:
        for sock in socks:
            _close_rst(sock)
    return {"bytes_enviados": sent, "conexoes_fechadas_pelo_servidor": closed}


def reconnect_loop(address: tuple[str, int], workers: int, per_connection: int,
                   ready: Callable[[], None], stop: Callable[[], bool]) -> dict:
    """Threads that connect, send ``per_connection`` PINGs, count the PONGs and close."""
    counts = {"pongs": 0, "conexoes": 0, "recusadas": 0}
    lock = threading.Lock()
    request = b"PING x\n" * per_connection

    def worker() -> None:
        while not stop():
            try:
                sock = _attacker_socket(address, 1.0)
            except OSError:
                with lock:
                    counts["recusadas"] += 1
                time.sleep(0.01)
                continue
            data = b""
            try:
                sock.sendall(request)
                sock.settimeout(0.3)
                while data.count(b"\n") < per_connection:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            finally:
                _close_rst(sock)
            with lock:
                counts["pongs"] += data.count(b"PONG x\n")
                counts["conexoes"] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    ready()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts | {"segundos": round(time.monotonic() - started, 3)}


def hello_flood(address: tuple[str, int], threads_count: int, ready: Callable[[], None],
                stop: Callable[[], bool]) -> dict:
    """Threads replaying one TLS ClientHello on new connections, as fast as they can.

    Each one waits (briefly) for the server's first answer before closing:
    that answer is the ServerHello, so the server did the handshake's costly
    part (its key share, its signature). A connection the server closes
    without answering counts as refused.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    counts = {"hellos": 0, "respondidos": 0, "falhas": 0}
    lock = threading.Lock()

    def worker() -> None:
        while not stop():
            try:
                sock = _attacker_socket(address, 1.0)
            except OSError:
                with lock:
                    counts["falhas"] += 1
                time.sleep(0.005)
                continue
            answered = False
            with contextlib.suppress(OSError):
                sock.sendall(hello)
                sock.settimeout(0.5)
                answered = bool(sock.recv(4096))
            _close_rst(sock)
            with lock:
                counts["hellos"] += 1
                counts["respondidos"] += answered

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_count)]
    ready()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    return counts | {"por_s": round(counts["hellos"] / seconds, 1),
                     "respondidos_por_s": round(counts["respondidos"] / seconds, 1)}


def burst_senders(address: tuple[str, int], senders: int, victim: str, size: int, burst: int,
                  rate: float, ready: Callable[[], None], stop: Callable[[], bool]) -> dict:
    """``senders`` registered connections: ``burst`` messages at once, then ``rate`` per second."""
    socks = []
    for n in range(senders):
        sock = _attacker_socket(address)
        socks.append(sock)
        sock.sendall(f"REGISTRAR rajada{n}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("o servidor fechou um remetente no registro")
            reply += chunk
        if reply != b"OK\n":
            raise ConnectionError(f"registro recusado: {reply[:80]!r}")
        sock.setblocking(False)
    line = f"ENVIAR {victim} {'y' * size}\n".encode()
    pending = {sock: bytearray(line * burst) for sock in socks}
    queued = senders * burst
    replies = {sock: b"" for sock in socks}
    counts: dict = {"ok": 0, "erros": 0, "erros_por_codigo": {}}
    ready()
    started = time.monotonic()
    next_tick = started + 1 / rate
    try:
        while not stop():
            now = time.monotonic()
            if now >= next_tick:
                for sock in socks:
                    pending[sock] += line
                queued += senders
                next_tick += 1 / rate
            wanting = [s for s in socks if pending[s]]
            readable, writable, _ = select.select(socks, wanting, [], 0.02)
            for sock in writable:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    done = sock.send(pending[sock])
                    del pending[sock][:done]
            for sock in readable:
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    replies[sock] += sock.recv(65536)
                    lines = replies[sock].split(b"\n")
                    replies[sock] = lines.pop()
                    for reply in lines:
                        if reply == b"OK":
                            counts["ok"] += 1
                        else:
                            code = reply.split(b" ")[1 if reply.startswith(b"ERRO ") else 0]
                            by_code = counts["erros_por_codigo"]
                            by_code[code.decode(errors="replace")] = by_code.get(
                                code.decode(errors="replace"), 0) + 1
                            counts["erros"] += 1
    finally:
        for sock in socks:
            _close_rst(sock)
    unsent = sum(len(p) for p in pending.values()) // len(line)
    return counts | {"enfileiradas": queued, "nao_enviadas": unsent}


def attacker_main(kind: str, arguments: tuple, limit: float, conn) -> None:
    """The attacker process: set up, wait for the start, attack until told or ``limit`` s.

    Every attack calls ``ready()`` once it is set up (connections open,
    senders registered): the parent hears "pronto", and the attack starts
    when the parent says "inicio". ``stop()`` turns true when the parent says
    "fim" or ``limit`` seconds after the start.
    """
    deadline = time.monotonic() + 120  # set-up bound; the attack's own from the start
    stopped = threading.Event()

    def ready() -> None:
        nonlocal deadline
        conn.send(("pronto", None))
        if not conn.poll(60) or conn.recv()[0] != "inicio":
            raise ConnectionAbortedError("o início não veio")
        deadline = time.monotonic() + limit

    def stop() -> bool:
        if not stopped.is_set() and (time.monotonic() > deadline or conn.poll(0)):
            stopped.set()
        return stopped.is_set()

    attack = {"inundacao": flood, "reconexao": reconnect_loop, "tls": hello_flood,
              "rajada": burst_senders}[kind]
    try:
        conn.send(("resultado", attack(*arguments, ready, stop)))
    except OSError as exc:
        with contextlib.suppress(OSError):
            conn.send(("falha", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class Attacker:
    """An attack in its own process: ``start()`` and ``stop()`` (which returns its figures)."""

    def __init__(self, kind: str, arguments: tuple, limit: float) -> None:
        context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=attacker_main,
                                       args=(kind, arguments, limit, child), daemon=True)
        self.process.start()
        child.close()
        self.result: dict | None = None

    def __enter__(self) -> Attacker:
        if not self.conn.poll(60):
            self.close()
            raise RuntimeError("o atacante não ficou pronto em 60 s")
        status, detail = self.conn.recv()
        if status != "pronto":
            self.close()
            raise RuntimeError(f"o atacante não conseguiu se preparar: {detail}")
        return self

    def start(self) -> None:
        self.conn.send(("inicio", None))

    def stop(self) -> dict:
        if self.result is None:
            with contextlib.suppress(OSError):
                self.conn.send(("fim", None))
            if not self.conn.poll(30):
                raise RuntimeError("o atacante não parou em 30 s")
            status, detail = self.conn.recv()
            if status != "resultado":
                raise RuntimeError(f"o ataque falhou: {detail}")
            self.result = detail
        return self.result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Honest users, in this process


def _honest_socket(address: tuple[str, int], source: str,
                   tls: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
    except OSError:
        sock.close()
        raise
    return sock


def _request(sock: socket.socket, line: bytes, expected: bytes) -> None:
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("o servidor fechou a conexão")
        reply += chunk
    if reply != expected:
        raise ConnectionError(f"{line.strip()!r}: resposta {reply[:80]!r}")


class HonestPair:
    """ana (127.0.0.3) sends bia (127.0.0.4) one message every 60 ms; each one's latency.

    Messages are paced, not one at a time: a slow delivery does not delay
    the next send, so a stall shows in every message it holds up.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.ana = _honest_socket(address, HONEST_A)
        self.bia = _honest_socket(address, HONEST_B)
        _request(self.ana, b"REGISTRAR ana\n", b"OK\n")
        _request(self.bia, b"REGISTRAR bia\n", b"OK\n")

    def close(self) -> None:
        self.ana.close()
        self.bia.close()

    def measure(self, phases: list[tuple[str, float, Callable[[], None] | None]],
                drain: float = 15.0) -> dict:
        """Send through every phase (calling its action first); latencies by sending phase."""
        sent_at: dict[int, tuple[float, str]] = {}
        latencies: dict[str, list[float]] = {name: [] for name, _, _ in phases}
        refused = 0
        partial = {self.ana: b"", self.bia: b""}
        for sock in (self.ana, self.bia):
            sock.setblocking(False)
        seq = 0
        for name, seconds, action in phases:
            if action is not None:
                action()
            phase_end = time.monotonic() + seconds
            next_send = time.monotonic()
            while time.monotonic() < phase_end:
                now = time.monotonic()
                if now >= next_send:
                    with contextlib.suppress(BlockingIOError):
                        self.ana.send(f"ENVIAR bia sonda{seq}\n".encode())
                        sent_at[seq] = (time.perf_counter(), name)
                        seq += 1
                    next_send += PROBE_EVERY
                wait = max(0.0, min(next_send, phase_end) - time.monotonic())
                refused += self._read(partial, sent_at, latencies, wait)
        deadline = time.monotonic() + drain
        while sent_at and time.monotonic() < deadline:
            refused += self._read(partial, sent_at, latencies, 0.05)
        lost: dict[str, int] = {}
        for _, name in sent_at.values():
            lost[name] = lost.get(name, 0) + 1
        return {name: _latency_figures(values) | {"perdidas": lost.get(name, 0)}
                for name, values in latencies.items()} | {"recusadas": refused}

    def _read(self, partial: dict, sent_at: dict, latencies: dict, wait: float) -> int:
        refused = 0
        readable, _, _ = select.select([self.ana, self.bia], [], [], wait)
        now = time.perf_counter()
        for sock in readable:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("o servidor fechou a conexão de um usuário honesto")
            lines = (partial[sock] + data).split(b"\n")
            partial[sock] = lines.pop()
            for line in lines:
                if sock is self.ana:
                    refused += line != b"OK"
                elif line.startswith(b"MSG ana bia sonda"):
                    sent = sent_at.pop(int(line[17:]), None)
                    if sent is not None:
                        latencies[sent[1]].append((now - sent[0]) * 1000)
        return refused


def _latency_figures(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50_ms": round(comum.percentile(ordered, 0.5), 2),
            "p99_ms": round(comum.percentile(ordered, 0.99), 2),
            "max_ms": round(ordered[-1], 2)}


def read_paced(sock: socket.socket, rate: float, seconds: float) -> dict:
    """Read at most ``rate`` bytes/s for ``seconds``; then whether a PING still gets its PONG."""
    sock.setblocking(False)
    started = time.monotonic()
    received = 0
    eof = False
    data_tail = b""
    while time.monotonic() - started < seconds and not eof:
        allowance = rate * (time.monotonic() - started) - received
        if allowance < 4096:
            time.sleep((4096 - allowance) / rate)
            continue
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        try:
            chunk = sock.recv(int(min(allowance, 1 << 20)))
        except BlockingIOError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            eof = True
            break
        received += len(chunk)
        data_tail = (data_tail + chunk)[-256:]
    alive = not eof and _still_answers(sock)
    return {"derrubada": not alive,
            "derrubada_apos_s": round(time.monotonic() - started, 2) if eof else None,
            "mb_lidos": round(received / 1e6, 1),
            "mb_por_s": round(received / 1e6 / max(time.monotonic() - started, 1e-9), 2)}


def _still_answers(sock: socket.socket) -> bool:
    """Whether a PING gets its PONG (after whatever messages are still queued) within 20 s."""
    try:
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(b"PING fim\n")
        tail = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return False
            tail = (tail + chunk)[-64:]
            if b"PONG fim\n" in tail:
                return True
    except OSError:
        return False
    return False


def tls_connect_times(address: tuple[str, int], context: ssl.SSLContext, count: int,
                      every: float) -> list[float]:
    """Milliseconds for ``count`` honest connections: connect, TLS handshake, PING -> PONG."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            sock = _honest_socket(address, HONEST_A, context)
            with sock:
                _request(sock, b"PING ola\n", b"PONG ola\n")
            times.append((time.perf_counter() - started) * 1000)
        except OSError:
            times.append(float("inf"))
        time.sleep(max(0.0, every - (time.perf_counter() - started)))
    return times


# --------------------------------------------------------------------------
# The servers: this version and version 1


class Versions:
    """Where each server version's ``servidor.py`` is, and how to start it with its defaults."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.current = Path(args.servidor)
        self.v1: Path | None = None
        if not args.sem_antes:
            self.v1 = self._extract(args.antes, directory)

    @staticmethod
    def _extract(commit: str, directory: Path) -> Path | None:
        target = directory / "v1"
        target.mkdir()
        for name in ("servidor.py", "protocolo.py"):
            try:
                text = subprocess.run(["git", "-C", str(comum.REPO), "show", f"{commit}:{name}"],
                                      capture_output=True, check=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"aviso: não consegui tirar {name} do commit {commit} ({exc}): "
                      f"medindo só esta versão", file=sys.stderr)
                return None
            (target / name).write_bytes(text)
        return target / "servidor.py"

    def names(self) -> list[str]:
        return (["antes"] if self.v1 else []) + ["depois"]

    @contextlib.contextmanager
    def server(self, name: str, options: list[str] | None = None,
               v2_options: list[str] | None = None) -> Iterator[comum.ServerUnderTest]:
        """A server with its default limits (INFO log, drained); version 1 has no store."""
        if name == "antes":
            server = comum.ServerUnderTest(None, self.v1, options=list(options or []),
                                           watch_log=True, store=None)
        else:
            server = comum.ServerUnderTest(None, self.current,
                                           options=[*(options or []), *(v2_options or [])],
                                           watch_log=True, store="disco")
        with server:
            yield server


# --------------------------------------------------------------------------
# The attacks, each measured against one server version


def attack_flood(versions: Versions, name: str, args: argparse.Namespace, kind: str) -> dict:
    with versions.server(name) as server:
        address = (server.host, server.port)
        pair = HonestPair(address)
        try:
            with Attacker("inundacao", (address, 8, PAYLOADS[kind]), args.ataque) as attacker:
                phases = [("sem ataque", args.calmo, None),
                          ("durante", args.ataque, attacker.start),
                          ("até 2 s depois", args.depois, attacker.stop)]
                figures = pair.measure(phases)
                return figures | {"atacante": attacker.stop()}
        finally:
            pair.close()


def attack_reconnect(versions: Versions, name: str, args: argparse.Namespace) -> dict:
    with versions.server(name) as server, \
            Attacker("reconexao", ((server.host, server.port), 16, 150), args.ataque) as attacker:
        attacker.start()
        time.sleep(args.ataque)
        counts = attacker.stop()
    seconds = max(counts["segundos"], 1e-9)
    return counts | {"comandos_por_s": round(counts["pongs"] / seconds, 1),
                     "conexoes_por_s": round(counts["conexoes"] / seconds, 1)}


def attack_reader(versions: Versions, name: str, args: argparse.Namespace) -> dict:
    with versions.server(name, v2_options=["--registros-ip", "0"]) as server:
        address = (server.host, server.port)
        victim = _honest_socket(address, HONEST_A)
        try:
            _request(victim, b"REGISTRAR leitora\n", b"OK\n")
            with Attacker("rajada", (address, 64, "leitora", 3900, 100, SENDER_RATE),
                          args.ataque) as attacker:
                attacker.start()
                reading = read_paced(victim, READER_RATE,
                                     args.ataque + (0.5 if args.rapido else 2.0))
                senders = attacker.stop()
        finally:
            victim.close()
    return reading | {"remetentes": senders}


def attack_sigterm(versions: Versions, name: str, args: argparse.Namespace) -> dict:
    with versions.server(name) as server, \
            Attacker("inundacao", ((server.host, server.port), 64, PAYLOADS["linhas em branco"]),
                     args.ataque + 60) as attacker:
        attacker.start()
        time.sleep(args.ataque)
        code, seconds = server.terminate(timeout=30.0)
        attacker.stop()
    return {"codigo": code, "saida_s": round(seconds, 2), "saiu": code is not None}


def attack_tls(versions: Versions, name: str, args: argparse.Namespace,
               certificate: tuple[str, str]) -> dict:
    cert, key = certificate
    context = ssl.create_default_context(cafile=cert)
    samples = 4 if args.rapido else 20
    with versions.server(name, ["--tls-cert", cert, "--tls-key", key]) as server:
        address = (server.host, server.port)
        quiet = tls_connect_times(address, context, samples // 2, 0.2)
        with Attacker("tls", (address, 8), args.ataque + samples * 0.2) as attacker:
            attacker.start()
            time.sleep(0.3)
            during = tls_connect_times(address, context, samples, 0.2)
            hellos = attacker.stop()
    return {"sem_ataque": _latency_figures(quiet), "durante": _latency_figures(during),
            "falhas_honestas": sum(t == float("inf") for t in quiet + during),
            "atacante": hellos}


def make_certificate(directory: Path) -> tuple[str, str] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=30, check=False)
    return (str(cert), str(key)) if result.returncode == 0 else None


# --------------------------------------------------------------------------
# Running, reporting


def run_all(args: argparse.Namespace, versions: Versions, directory: Path) -> dict:
    results: dict = {}
    chosen = [a for a in ATTACKS if a in args.ataques]
    certificate = make_certificate(directory) if "tls" in chosen else None
    if "tls" in chosen and certificate is None:
        print("aviso: sem openssl (ou ele não gerou o certificado): o ataque de TLS fica de "
              "fora", file=sys.stderr)
    jobs: list[tuple[str, Callable[[str], dict]]] = []
    if "inundacao" in chosen:
        for kind in PAYLOADS:
            jobs.append((f"inundacao/{kind}",
                         lambda name, kind=kind: attack_flood(versions, name, args, kind)))
    if "reconexao" in chosen:
        jobs.append(("reconexao", lambda name: attack_reconnect(versions, name, args)))
    if "leitora" in chosen:
        jobs.append(("leitora", lambda name: attack_reader(versions, name, args)))
    if "sigterm" in chosen:
        jobs.append(("sigterm", lambda name: attack_sigterm(versions, name, args)))
    if "tls" in chosen and certificate:
        jobs.append(("tls", lambda name: attack_tls(versions, name, args, certificate)))
    for job, measure in jobs:
        for name in versions.names():
            load = comum.load_average()
            try:
                figures = measure(name)
            except (RuntimeError, OSError) as exc:
                figures = {"falha": f"{type(exc).__name__}: {exc}"}
            figures["carga_1min"] = load
            results.setdefault(job, {})[name] = figures
            print(f"  {job:<28} {name:<6} {_brief(job, figures)}", file=sys.stderr)
    return results


def _brief(job: str, f: dict) -> str:
    if "falha" in f:
        return f"FALHOU: {f['falha']}"
    if job.startswith("inundacao"):
        return "; ".join(f"{phase} p50 {f[phase].get('p50_ms')} p99 {f[phase].get('p99_ms')} "
                         f"máx {f[phase].get('max_ms')} ms (perdidas {f[phase]['perdidas']})"
                         for phase in ("sem ataque", "durante", "até 2 s depois"))
    if job == "reconexao":
        return f"{f['comandos_por_s']:.0f} comandos/s, {f['conexoes_por_s']:.0f} conexões/s"
    if job == "leitora":
        dropped = (f"derrubada após {f['derrubada_apos_s']} s" if f["derrubada"]
                   else "nunca derrubada")
        return (f"{dropped}; leu {f['mb_lidos']} MB ({f['mb_por_s']} MB/s); remetentes: "
                f"{f['remetentes']['ok']} OK, erros {f['remetentes']['erros_por_codigo']}")
    if job == "sigterm":
        return (f"saiu em {f['saida_s']} s, código {f['codigo']}" if f["saiu"]
                else f"não saiu em {f['saida_s']} s")
    if job == "tls":
        return (f"sem ataque p50 {f['sem_ataque'].get('p50_ms')} ms; durante p50 "
                f"{f['durante'].get('p50_ms')} p99 {f['durante'].get('p99_ms')} ms; "
                f"{f['atacante']['por_s']} ClientHellos/s, "
                f"{f['atacante']['respondidos_por_s']} respondidos/s")
    return str(f)


def print_table(results: dict, names: list[str]) -> None:
    width = 26
    comum.print_table_header(
        "Ataques de um endereço, limites padrão ('antes' = versão 1, commit "
        f"{VERSION_ONE}; 'depois' = esta versão)",
        f"{'medida':<58} " + " ".join(f"{n:>{width}}" for n in names) + "  meta")

    def row(label: str, cell: Callable[[dict], str], goal: str = "",
            job: str | None = None) -> None:
        if job not in results:
            return
        cells = []
        for name in names:
            figures = results[job].get(name, {})
            cells.append("falhou" if "falha" in figures else cell(figures))
        print(f"{label:<58} " + " ".join(f"{c:>{width}}" for c in cells) + f"  {goal}")

    def lat(phase: str) -> Callable[[dict], str]:
        return lambda f: (f"{f[phase].get('p50_ms', '-')} / {f[phase].get('p99_ms', '-')} / "
                          f"{f[phase].get('max_ms', '-')}")

    for kind in PAYLOADS:
        job = f"inundacao/{kind}"
        row(f"par honesto sem ataque, p50/p99/máx ms ({kind})", lat("sem ataque"), job=job)
        row(f"  durante {kind} de 8 conexões", lat("durante"), "p99 ≤ 50 ms", job)
        row("  até 2 s depois que para", lat("até 2 s depois"), "p99 ≤ 10 ms", job)
    row("comandos executados/s por um endereço que reconecta",
        lambda f: f"{f['comandos_por_s']:.0f}", "limitado", "reconexao")
    row("leitora a 12,5 MB/s, 64 conexões com rajadas de 3,9 KB",
        lambda f: (f"derrubada em {f['derrubada_apos_s']} s" if f["derrubada"]
                   else f"nunca ({f['mb_por_s']} MB/s)"), "nunca derrubada", "leitora")
    row("SIGTERM sob 64 conexões de linhas em branco",
        lambda f: (f"{f['saida_s']} s, código {f['codigo']}" if f["saiu"]
                   else f"> {f['saida_s']} s"), "≤ 3 s, código 0", "sigterm")
    row("conexão TLS honesta sem ataque, p50/p99 ms",
        lambda f: f"{f['sem_ataque'].get('p50_ms')} / {f['sem_ataque'].get('p99_ms')}",
        job="tls")
    row("  durante ClientHellos de um endereço, p50/p99 ms",
        lambda f: f"{f['durante'].get('p50_ms')} / {f['durante'].get('p99_ms')}",
        "limitado", "tls")
    row("  ClientHellos/s do atacante / respondidos pelo servidor",
        lambda f: f"{f['atacante']['por_s']:.0f} / {f['atacante']['respondidos_por_s']:.0f}",
        job="tls")


def broken(results: dict) -> bool:
    """A measurement that could not run, or an honest loss on this version."""
    for job, by_name in results.items():
        for name, figures in by_name.items():
            if "falha" in figures:
                return True
            if name != "depois":
                continue
            if job.startswith("inundacao") and any(
                    figures[p]["perdidas"] for p in ("sem ataque", "durante", "até 2 s depois")):
                return True
            if job == "leitora" and figures["derrubada"]:
                return True
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/ataque.py",
        description="Mede o que um endereço hostil consegue fazer aos usuários honestos, com "
                    "os limites padrão, nesta versão do servidor e na versão 1.")
    parser.add_argument("--ataques", default=",".join(ATTACKS),
                        help=f"quais ataques, separados por vírgulas (padrão: todos: "
                             f"{','.join(ATTACKS)})")
    parser.add_argument("--ataque", type=float, default=5.0,
                        help="segundos de cada ataque (padrão: 5)")
    parser.add_argument("--calmo", type=float, default=2.0,
                        help="segundos medidos antes de cada inundação (padrão: 2)")
    parser.add_argument("--depois", type=float, default=2.0,
                        help="segundos medidos depois que a inundação para (padrão: 2)")
    parser.add_argument("--antes", default=VERSION_ONE,
                        help=f"commit da versão 'antes' (padrão: {VERSION_ONE}, a versão 1)")
    parser.add_argument("--sem-antes", action="store_true",
                        help="medir só esta versão")
    comum.add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.ataque, args.calmo, args.depois, args.sem_antes = 0.5, 0.3, 0.3, True
    args.ataques = [a.strip() for a in args.ataques.split(",") if a.strip()]
    if args.attach:
        print("erro: ataque.py inicia os seus próprios servidores (duas versões); --attach "
              "não se aplica", file=sys.stderr)
        return 2
    unknown = set(args.ataques) - set(ATTACKS)
    if (unknown or not args.ataques or not 0.5 <= args.ataque <= 60
            or not 0 < args.calmo <= 60 or not 0 < args.depois <= 60):
        detail = f" (ataques desconhecidos: {', '.join(sorted(unknown))})" if unknown else ""
        print(f"erro: parâmetros fora dos limites{detail}", file=sys.stderr)
        return 2
    if not _has_loopback_aliases():
        print("erro: este sistema não deixa usar 127.0.0.2-127.0.0.4 como origem (macOS: "
              "sudo ifconfig lo0 alias 127.0.0.2 etc.)", file=sys.stderr)
        return 2
    comum.raise_fd_limit(4096)
    with tempfile.TemporaryDirectory(prefix="bench-ataque-") as temporary:
        versions = Versions(args, Path(temporary))
        print(f"bench/ataque.py: {', '.join(args.ataques)}; {args.ataque:g} s por ataque; "
              f"versões: {', '.join(versions.names())}", file=sys.stderr)
        results = run_all(args, versions, Path(temporary))
    names = versions.names()
    print_table(results, names)
    comum.print_json_line(
        "ataque",
        {"ataques": args.ataques, "ataque_s": args.ataque, "calmo_s": args.calmo,
         "depois_s": args.depois, "antes": None if args.sem_antes else args.antes,
         "sonda_a_cada_s": PROBE_EVERY, "leitora_bytes_s": READER_RATE},
        results, [])
    return 1 if broken(results) else 0


def _has_loopback_aliases() -> bool:
    for source in (ATTACKER, HONEST_A, HONEST_B):
        with socket.socket() as sock:
            try:
                sock.bind((source, 0))
            except OSError:
                return False
    return True


if __name__ == "__main__":
    sys.exit(main())
