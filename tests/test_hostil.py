"""What one hostile student with scripts on the same LAN can do to the server.

Each test reproduces, on a small scale, an attack that worked against the
server before version 2 (see the hardening issue): the server must stay
fair, bounded and alive. Every attacker uses one address (127.0.0.2), within
the default limits unless a test says otherwise; honest users come from
other loopback addresses, so they have their own budgets. Timing assertions
are generous (this machine is shared): the exact figures come from
``bench/ataque.py``. What a test counts on the server side (lines read,
handshakes refused) is exact.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from wire import (
    HOST,
    REPO,
    TIMEOUT,
    UNLIMITED,
    ServerProcess,
    WireClient,
    free_port,
    make_certificate,
    running_server,
    wait_until,
)

import armazem
import servidor

ATTACKER = "127.0.0.2"
HONEST_A, HONEST_B = "127.0.0.3", "127.0.0.4"


# --------------------------------------------------------------------------
# Helpers


class Flood:
    """``connections`` sockets from one address sending ``payload`` as fast as they can.

    One thread, non-blocking sockets: when the server stops reading (as it
    should, once the address is over budget) the sends simply stop making
    progress. Stopped by ``stop`` (or the context manager); bounded in time.
    """

    def __init__(self, address: tuple[str, int], connections: int, payload: bytes,
                 source: str = ATTACKER, limit: float = 30.0) -> None:
        self.socks = []
        for _ in range(connections):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(TIMEOUT)
            sock.connect(address)
            sock.setblocking(False)
            self.socks.append(sock)
        self.payload = payload
        self.sent = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._thread = threading.Thread(target=self._run, daemon=True, name="flood")

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            _, writable, _ = select.select([], self.socks, [], 0.05)
            for sock in writable:
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    self.sent += sock.send(self.payload)
                with contextlib.suppress(OSError):
                    sock.recv(65536)  # drain replies, if any (the socket is non-blocking)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)

    def close(self) -> None:
        self.stop()
        for sock in self.socks:
            sock.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def round_trips(sender: WireClient, receiver: WireClient, count: int,
                pause: float = 0.005) -> list[float]:
    """Seconds from each ENVIAR to its MSG at the receiver, one message at a time."""
    receiver_nick = "bia"
    times = []
    for n in range(count):
        started = time.perf_counter()
        sender.send_line(f"ENVIAR {receiver_nick} sonda {n}")
        line = receiver.read_line()
        times.append(time.perf_counter() - started)
        assert line.endswith(f"sonda {n}"), line
        assert sender.read_line() == "OK"
        time.sleep(pause)
    return times


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else samples[0]


@contextlib.contextmanager
def honest_pair(server: servidor.Servidor) -> Iterator[tuple[WireClient, WireClient]]:
    with WireClient(server.address, source_ip=HONEST_A) as ana, \
            WireClient(server.address, source_ip=HONEST_B) as bia:
        ana.register("ana")
        bia.register("bia")
        yield ana, bia


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------
# 1. A broken TLS peer never leaks a slot, a count, a socket or a thread


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def corrupt_tls(client: WireClient) -> None:
    """Send a TLS record with a bad MAC straight on the client's socket."""
    raw = socket.socket(fileno=os.dup(client.sock.fileno()))
    try:
        raw.sendall(b"\x17\x03\x03\x00\x30" + os.urandom(48))
    finally:
        raw.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="conta descritores por /proc")
def test_a_broken_tls_peer_releases_everything_and_hurts_nobody(certificate):
    context = ssl.create_default_context(cafile=certificate[0])
    config = dict(UNLIMITED, tls_context=servidor.make_tls_context(*certificate))
    with running_server(**config) as server:
        sender = WireClient(server.address, tls=context, source_ip=HONEST_A)
        sender.register("remetente")
        wait_until(lambda: server.connection_count == 1)
        baseline_fds, baseline_threads = open_fds(), threading.active_count()
        for round_ in range(100):
            victim = WireClient(server.address, tls=context, source_ip=ATTACKER)
            victim.register("vitima")
            # Output queued for the victim while its TLS state breaks.
            sender.send(b"".join(f"ENVIAR vitima msg {i}\n".encode() for i in range(20)))
            corrupt_tls(victim)
            victim.close()
            replies = sender.read_lines(20)
            assert all(r == "OK" or r.startswith(("ERRO NAO_ENCONTRADO", "ERRO DESTINATARIO"))
                       for r in replies), (round_, replies)
            wait_until(lambda: server.connection_count == 1, what="a vítima ser liberada")
        assert sender.request("PING vivo") == "PONG vivo"  # the sender was never hurt
        assert server.addresses.get(ATTACKER).connections == 0
        wait_until(lambda: open_fds() <= baseline_fds, what="nenhum descritor vazado")
        wait_until(lambda: threading.active_count() <= baseline_threads,
                   what="nenhuma thread vazada")
        sender.close()


def test_cleanup_releases_the_slot_even_when_every_step_fails(monkeypatch):
    with running_server(**UNLIMITED) as server, WireClient(server.address) as client:
        client.register("ana")
        (connection,) = server.connections()

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("falha simulada na limpeza")

        monkeypatch.setattr(servidor.ClientConnection, "_unregister", broken)
        monkeypatch.setattr(connection.outbox, "close", broken)
        client.close()
        wait_until(lambda: server.connection_count == 0, what="a conexão ser esquecida")
        assert server.addresses.get(HOST).connections == 0
        assert connection.sock.fileno() == -1


# --------------------------------------------------------------------------
# 2. Floods of lines the rate limit did not see are slowed, not served


@pytest.mark.parametrize("payload", [b"\n" * 4096, b"XYZZY 1\n" * 512, b"x" * 5000 + b"\n"],
                         ids=["linhas-em-branco", "lixo", "linhas-longas"])
def test_a_flood_of_lines_is_slowed_and_honest_users_do_not_notice(payload):
    # The per-address budgets at their defaults; the per-connection rate is
    # raised so that the honest pair's 170 probes are never refused.
    with running_server(rate=1000, burst=1000) as server, honest_pair(server) as (ana, bia):
        quiet = round_trips(ana, bia, 20)
        with Flood(server.address, 8, payload):
            time.sleep(0.3)  # let the flood reach the server
            during = round_trips(ana, bia, 100)
            state = server.addresses.get(ATTACKER)
            read_before = state.lines_read
            time.sleep(1.0)
            read_in_a_second = state.lines_read - read_before
        after = round_trips(ana, bia, 50)
    config = servidor.ServerConfig()
    # The address gets its budget (and one minimal read per connection), not more.
    assert read_in_a_second <= config.address_lines + 8 * servidor.THROTTLED_RECV_CHUNK
    print(f"sem ataque p99 {p99(quiet) * 1e3:.1f} ms; durante p99 {p99(during) * 1e3:.1f} ms; "
          f"depois p99 {p99(after) * 1e3:.1f} ms; linhas lidas do atacante em 1 s: "
          f"{read_in_a_second}")
    # Medians: robust to the odd pause of a shared machine (the p99 figures are
    # bench/ataque.py's job). Before version 2 the median was ~300 ms here.
    assert statistics.median(during) < 0.03 and statistics.median(after) < 0.03


def test_blank_lines_do_not_keep_an_unregistered_squatter_alive():
    with running_server(register_timeout=0.5) as server, \
            WireClient(server.address, source_ip=ATTACKER) as squatter:
        started = time.monotonic()
        lines = []
        with contextlib.suppress(OSError):
            while not squatter.eof and time.monotonic() - started < 5:
                squatter.send(b"\n")
                with contextlib.suppress(TimeoutError):
                    lines.append(squatter.read_raw_line(0.05))
        assert any(line and line.startswith(b"ERRO TEMPO ") for line in lines)
        assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------
# 3. Reconnecting does not reset an address's budget


def test_reconnecting_does_not_reset_the_budget():
    config = servidor.ServerConfig()
    duration = 2.0
    executed = 0
    with running_server() as server:
        started = time.monotonic()
        while time.monotonic() - started < duration:
            with WireClient(server.address, source_ip=ATTACKER, timeout=1.0) as client:
                client.send(b"PING x\n" * 150)
                with contextlib.suppress(TimeoutError):
                    for _ in range(150):
                        if client.read_line(0.2) == "PONG x":
                            executed += 1
        elapsed = time.monotonic() - started
    budget = config.address_lines * elapsed + config.address_lines_burst
    print(f"{executed} comandos executados em {elapsed:.1f} s (orçamento {budget:.0f})")
    assert executed <= budget + servidor.THROTTLED_RECV_CHUNK


# --------------------------------------------------------------------------
# 4. A recipient that reads is never dropped because others send faster


def test_a_reader_is_never_dropped_by_a_burst_from_many_senders():
    """32 senders burst 100 messages of 3.9 KB each at one reader that reads at ~4 MB/s."""
    senders_count, burst, size = 32, 100, 3900
    with running_server(**UNLIMITED, max_pending=256 * 1024) as server:
        reader = WireClient(server.address, source_ip=HONEST_A, timeout=30)
        reader.register("leitora")
        senders = [WireClient(server.address, source_ip=ATTACKER, timeout=60)
                   for _ in range(senders_count)]
        for n, sender in enumerate(senders):
            sender.register(f"s{n}")
        total = senders_count * burst
        received = 0
        stop = threading.Event()

        def read_slowly() -> None:
            nonlocal received
            while received < total and not stop.is_set():
                line = reader.read_line(30)
                assert line.startswith("MSG "), line
                received += 1
                if received % 100 == 0:
                    time.sleep(0.1)  # ~390 KB per 0.1 s: about 4 MB/s

        thread = threading.Thread(target=read_slowly, daemon=True)
        thread.start()
        text = "y" * size
        for sender in senders:
            sender.send(f"ENVIAR leitora {text}\n".encode() * burst)
        for sender in senders:
            replies = sender.read_lines(burst, 60)
            assert replies == ["OK"] * burst, {r[:40] for r in replies}
        thread.join(60)
        stop.set()
        assert received == total
        assert server.registry.get("leitora") is not None
        reader.close()
        for sender in senders:
            sender.close()


# --------------------------------------------------------------------------
# 5, 6. Presence: churn is bounded, and every subscriber ends up right


def test_registration_churn_from_one_address_is_bounded():
    config = servidor.ServerConfig()
    with running_server(rate=1000, burst=1000) as server, \
            WireClient(server.address, source_ip=HONEST_A) as watcher, \
            WireClient(server.address, source_ip=ATTACKER) as churner:
        watcher.register("vigia")
        assert watcher.request("ASSINAR") == "OK"
        started = time.monotonic()
        accepted = refused = 0
        while time.monotonic() - started < 2.0:
            reply = churner.request("REGISTRAR x")
            if reply == "OK":
                accepted += 1
                assert churner.request("CANCELAR_REGISTRO") == "OK"
            else:
                assert reply.startswith("ERRO LIMITE "), reply
                refused += 1
        elapsed = time.monotonic() - started
        events = watcher.barrier()
    assert accepted <= config.registrations_burst + config.registrations * elapsed + 1
    assert refused > 0
    assert len(events) == 2 * accepted


def test_the_last_presence_event_matches_the_registry():
    """Two connections fight over one nickname while subscribers watch; at the end
    the last event every subscriber saw for it says what the registry says."""
    with running_server(**UNLIMITED) as server:
        watchers = [WireClient(server.address) for _ in range(20)]
        for n, watcher in enumerate(watchers):
            watcher.register(f"w{n}")
            assert watcher.request("ASSINAR") == "OK"
        fighters = [WireClient(server.address) for _ in range(4)]
        stop = time.monotonic() + 1.5

        def fight(client: WireClient) -> None:
            while time.monotonic() < stop:
                client.send(b"REGISTRAR x\nCANCELAR_REGISTRO\n")
                client.read_lines(2)

        threads = [threading.Thread(target=fight, args=(f,)) for f in fighters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert fighters[0].request("REGISTRAR x") == "OK"  # x ends up registered
        for watcher in watchers:
            seen = [line for line in watcher.barrier() if line.endswith(" x")]
            assert seen and seen[-1] == "ENTROU x", seen[-3:]
        for client in watchers + fighters:
            client.close()


# --------------------------------------------------------------------------
# 7, 8. Names that look alike, texts that fake a screen


@pytest.mark.parametrize("look_alike", ["аna", "αna", "ａｎａ", "𝐚𝐧𝐚", "ana\u3164", "\u3164",
                                        "ANA", "ána", "Ⅸ", "ana²"])
def test_look_alikes_of_a_registered_name_are_refused(look_alike):
    with running_server(**UNLIMITED) as server, WireClient(server.address) as ana, \
            WireClient(server.address) as other:
        ana.register("ana")
        reply = other.request(f"REGISTRAR {look_alike}")
        assert reply.startswith(("ERRO APELIDO_INVALIDO ", "ERRO APELIDO_EM_USO ")), reply


def test_kira_and_dotless_kira_are_the_same_name():
    with running_server(**UNLIMITED) as server, WireClient(server.address) as a, \
            WireClient(server.address) as b:
        a.register("kira")
        assert b.request("REGISTRAR kıra").startswith("ERRO APELIDO_EM_USO ")


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u2028", "\u2029", "\ufeff",
                                  "\u200b", "\U000e0041"])
def test_texts_that_could_fake_a_screen_are_refused(char):
    with running_server(**UNLIMITED) as server, WireClient(server.address) as ana, \
            WireClient(server.address) as bia:
        ana.register("ana")
        bia.register("bia")
        assert ana.request(f"ENVIAR bia antes{char}depois").startswith("ERRO ARGUMENTOS ")
        flag = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
        emoji = f"👨\u200d👩\u200d👧 ❤\ufe0f {flag}"
        assert ana.request(f"ENVIAR bia {emoji}") == "OK"
        assert bia.read_line() == f"MSG ana bia {emoji}"
        assert bia.barrier() == []


# --------------------------------------------------------------------------
# 9. Shutdown under a flood


def test_sigterm_under_a_flood_of_64_connections_exits_within_3_s():
    with ServerProcess() as process, Flood((HOST, process.port), 64, b"\n" * 4096, source=HOST):
        time.sleep(0.5)
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        code = process.proc.wait(timeout=5.0)
        elapsed = time.monotonic() - started
    assert code == 0, process.log[-5:]
    assert elapsed < 3.0, f"{elapsed:.2f} s"


# --------------------------------------------------------------------------
# 10. Memory: requests are charged by the output they cause


def test_pipelined_listar_from_clients_that_never_read_pins_little_memory():
    # No rate limits: what bounds the memory here is the output charge alone.
    with running_server(**UNLIMITED) as server:
        fillers = [WireClient(server.address, source_ip=f"127.0.1.{n % 250 + 1}")
                   for n in range(50)]
        for n, filler in enumerate(fillers):
            filler.register(f"{'n' * 28}{n:04d}")
        attackers = [WireClient(server.address, source_ip=ATTACKER, rcvbuf=4096)
                     for _ in range(16)]
        for client in attackers:
            client.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.sock.send(b"LISTAR\n" * 2000)
        time.sleep(1.0)
        pending = sum(c.outbox.pending for c in server.connections())
        per_connection = max(c.outbox.pending for c in server.connections())
        listing = len(server.registry.listing_reply())
        print(f"saída pendente total {pending} bytes; maior {per_connection}; LISTAR {listing}")
        # At most the high-water mark plus one reply each, far from 2000 replies each.
        assert per_connection <= servidor.OWN_OUTPUT_HIGH_WATER + listing
        assert pending <= 16 * (servidor.OWN_OUTPUT_HIGH_WATER + listing)
        for client in attackers + fillers:
            client.close()


def test_padded_legacy_addresses_do_not_inflate_the_directory():
    with running_server(**UNLIMITED) as server, WireClient(server.address) as legacy:
        padded = "0000:0000:0000:0000:0000:0000:0000:0001"
        assert legacy.request(f"REGISTRAR velho {padded} 5000") == "OK"
        assert legacy.request("LISTAR") == "USUARIOS 1"
        assert legacy.read_lines(2) == ["USUARIO velho ::1 5000", "END"]


# --------------------------------------------------------------------------
# 11. The log: rate-limited, and never in the way


def test_refused_connections_do_not_flood_the_log():
    with ServerProcess("--max-por-ip", "1") as process:
        keep = WireClient((HOST, process.port))
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(
                    (HOST, process.port), timeout=TIMEOUT) as sock:
                sock.recv(100)
        assert keep.request("PING ok") == "PONG ok"
        keep.close()
    refusals = [line for line in process.log if "recusada" in line]
    print(f"{len(refusals)} linhas de recusa para 300 recusas")
    assert len(refusals) <= 20
    assert any("suprimidas" in line for line in process.log)


def test_a_blocked_log_never_stops_the_server():
    """stderr on a pipe nobody reads: once it is full, logging must not block serving."""
    read_end, write_end = os.pipe()
    try:
        proc = _server_with_stderr(write_end)
        try:
            port = _wait_for_port(proc)
            for n in range(400):  # far more log than a pipe holds (64 KiB)
                with WireClient((HOST, port)) as client:
                    client.register(f"u{n}")
            started = time.monotonic()
            with WireClient((HOST, port)) as client:
                client.register("depois")
                assert client.request("PING ok") == "PONG ok"
            assert time.monotonic() - started < 1.0
        finally:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    finally:
        os.close(read_end)
        os.close(write_end)


def _server_with_stderr(stderr_fd: int) -> subprocess.Popen:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "servidor.py"), "--efemero", "--host", HOST, "--port",
         str(port), "--taxa", "0", "--taxa-ip", "0", "--registros-ip", "0",
         "--log-level", "DEBUG"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_fd)
    proc.chat_port = port
    return proc


def _wait_for_port(proc: subprocess.Popen) -> int:
    port = proc.chat_port

    def up() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return True
        return False

    wait_until(up, what="o servidor escutar")
    return port


# --------------------------------------------------------------------------
# 12. TLS handshake floods are bounded per address


def test_a_tls_handshake_flood_is_bounded_per_address(certificate):
    context = ssl.create_default_context(cafile=certificate[0])
    hello_context = ssl.create_default_context(cafile=certificate[0])
    with running_server(tls_context=servidor.make_tls_context(*certificate)) as server:
        stop = time.monotonic() + 1.5
        attempts = 0
        while time.monotonic() < stop:
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind((ATTACKER, 0))
                sock.settimeout(1.0)
                sock.connect(server.address)
                bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = hello_context.wrap_bio(bio_in, bio_out, server_hostname="localhost")
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.do_handshake()
                sock.sendall(bio_out.read())
                attempts += 1
        state = server.addresses.get(ATTACKER)
        started = time.monotonic()
        with WireClient(server.address, tls=context, source_ip=HONEST_A) as honest:
            assert honest.request("REGISTRAR honesta") == "OK"
        honest_seconds = time.monotonic() - started
    config = servidor.ServerConfig()
    print(f"{attempts} ClientHellos; {state.handshakes_refused} recusados; conexão honesta em "
          f"{honest_seconds * 1e3:.1f} ms")
    assert attempts - state.handshakes_refused <= config.tls_handshakes_burst + \
        config.tls_handshakes * 2.0
    assert honest_seconds < 0.5


# --------------------------------------------------------------------------
# Helpers of this module checked


def test_p99_of_a_single_sample():
    assert p99([0.5]) == 0.5


def test_round_trips_fail_on_a_wrong_message():
    with running_server(**UNLIMITED) as server, WireClient(server.address) as ana, \
            WireClient(server.address) as bia:
        ana.register("ana")
        bia.register("bia")
        assert ana.request("ENVIAR bia intrusa") == "OK"
        with pytest.raises(AssertionError):
            round_trips(ana, bia, 1)



# --------------------------------------------------------------------------
# Password hashing is bounded in threads (hence in CPU and memory)


def test_many_logins_at_once_hash_on_a_bounded_pool_of_threads(tmp_path):
    """Each hash needs 16 MiB and tens of ms: 12 at once still use only the pool's threads."""
    store = armazem.Store.open(str(tmp_path / "chat.sqlite3"))
    try:
        with running_server(**UNLIMITED, store=store, hashing_threads=2) as server:
            clients = [WireClient(server.address, timeout=30) for _ in range(12)]
            for n, client in enumerate(clients):
                client.send_line(f"REGISTRAR conta{n} segredo{n}")
            assert [client.read_line(30) for client in clients] == ["OK"] * 12
            hashers = {t.name for t in threading.enumerate() if t.name.startswith("senhas")}
            assert 1 <= len(hashers) <= 2, hashers
            for client in clients:
                client.close()
    finally:
        store.close()


def test_a_login_that_waits_too_long_for_its_hash_gets_an_error_and_stays(tmp_path,
                                                                          monkeypatch):
    """With the hashing pool saturated, a login past the wait bound is told so (ERRO
    LIMITE) and keeps its connection; the hash nobody waits for any more is not run."""
    monkeypatch.setattr(servidor.Passwords, "WAIT_BOUND", 0.02)  # well under one hash
    store = armazem.Store.open(str(tmp_path / "chat.sqlite3"))
    hashed = []
    real_hash = armazem.hash_password
    monkeypatch.setattr(armazem, "hash_password",
                        lambda password: hashed.append(password) or real_hash(password))
    try:
        with running_server(**UNLIMITED, store=store, hashing_threads=1) as server:
            clients = [WireClient(server.address) for _ in range(6)]
            for n, client in enumerate(clients):
                client.send_line(f"REGISTRAR conta{n} segredo{n}")
            replies = [client.read_line(TIMEOUT) for client in clients]
            assert all(reply == "OK" or reply.startswith("ERRO LIMITE ") for reply in replies)
            assert any(reply.startswith("ERRO LIMITE ") for reply in replies), replies
            for client in clients:  # nobody was disconnected
                assert client.request("PING ainda") == "PONG ainda"
            assert len(hashed) < len(clients)  # the abandoned ones were cancelled
            for client in clients:
                client.close()
    finally:
        store.close()


def test_an_account_removed_and_created_again_is_reserved_again(tmp_path):
    store = armazem.Store.open(str(tmp_path / "chat.sqlite3"))
    try:
        with running_server(**UNLIMITED, store=store) as server:
            def nobody_called_bob() -> bool:
                return server.registry.get("bob") is None

            with WireClient(server.address) as bob:
                assert bob.request("REGISTRAR bob segredo") == "OK"
            wait_until(nobody_called_bob, what="bob sair")
            assert store.remove_account("bob")  # the administrator, while the server runs
            with WireClient(server.address) as squatter:
                squatter.register("bob")  # no account any more: a nickname like any other
            wait_until(nobody_called_bob, what="o apelido ficar livre")
            with WireClient(server.address) as bob:
                assert bob.request("REGISTRAR bob outro-segredo") == "OK"  # created again
            wait_until(nobody_called_bob, what="bob sair de novo")
            with WireClient(server.address) as squatter:
                assert squatter.request("REGISTRAR bob").startswith("ERRO APELIDO_RESERVADO ")
    finally:
        store.close()


# --------------------------------------------------------------------------
# An outbox never keeps queued output without a sender


@contextlib.contextmanager
def outbox_to_a_socket() -> Iterator[tuple[servidor.Outbox, socket.socket]]:
    """An ``Outbox`` on one end of a socket pair, and the other end to read what it sends."""
    near, far = socket.socketpair()
    far.settimeout(TIMEOUT)
    outbox = servidor.Outbox(servidor.PlainTransport(near), 0, "teste", lambda why: None, 30.0)
    try:
        yield outbox, far
    finally:
        outbox.close(flush=False)
        outbox.join(TIMEOUT)
        near.close()
        far.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``: TimeoutError if some are never sent."""
    received = b""
    while len(received) < size:
        chunk = sock.recv(65536)
        assert chunk, "socket closed"
        received += chunk
    return received


def test_output_queued_while_a_flush_sends_is_always_sent(monkeypatch):
    """Other threads keep queueing while one flushes; when that flush stops taking more
    (it is bounded), what is still queued must go out anyway: found as an honest reader
    that got its last messages 30 s late and was then dropped as "parou de ler"."""
    real_send = servidor.rede.send_nowait
    sends = []
    outbox: servidor.Outbox

    def send_while_others_queue(sock: socket.socket, data: bytes | memoryview) -> int:
        sends.append(bytes(data))
        if len(sends) <= 8:  # another thread queues during each of these sends
            outbox.put(f"linha {len(sends)}\n".encode())
        return real_send(sock, data)

    monkeypatch.setattr(servidor.rede, "send_nowait", send_while_others_queue)
    with outbox_to_a_socket() as (outbox, far):
        outbox.put(b"linha 0\n")
        outbox.flush()  # the thread that flushes moves on after a few rounds
        expected = b"".join(f"linha {n}\n".encode() for n in range(9))
        assert read_exactly(far, len(expected)) == expected
        wait_until(lambda: outbox.drained, what="nada pendente")


def test_a_writer_woken_while_another_thread_sends_leaves_it_the_send(monkeypatch):
    """The writer thread, woken while a flusher owns the send, must not take that away:
    a third thread then sent at the same time, and lines came out cut into each other
    (or lost: the reader's last messages, and it was dropped 30 s later)."""
    real_send = servidor.rede.send_nowait
    calls: list[bytes] = []
    outbox: servidor.Outbox
    lines = {name: f"{name} ".encode() + b"x" * 2000 + b"\n" for name in ("a", "b", "c", "d")}

    def orchestrated_send(sock: socket.socket, data: bytes | memoryview) -> int:
        data = bytes(data)
        calls.append(data)
        if data == lines["a"]:  # setting up: half now, the writer thread sends the rest
            return real_send(sock, data[:1000])
        if data == lines["b"]:  # the flusher's first round; more comes meanwhile
            outbox.put(lines["c"])
            return real_send(sock, data)
        if data == lines["c"]:  # its second round, while the writer wakes
            deadline = time.monotonic() + 0.3
            while outbox._busy and time.monotonic() < deadline:
                time.sleep(0.005)
            third = threading.Thread(target=lambda: (outbox.put(lines["d"]), outbox.flush()))
            third.start()
            third.join(TIMEOUT)
            return real_send(sock, data[:1000])  # half: the rest goes to the writer
        return real_send(sock, data)

    monkeypatch.setattr(servidor.rede, "send_nowait", orchestrated_send)
    with outbox_to_a_socket() as (outbox, far):
        outbox.put(lines["a"])
        outbox.flush()
        wait_until(lambda: outbox.drained and not outbox._busy, what="o escritor terminar")
        outbox.put(lines["b"])
        outbox.flush()
        expected = b"".join(lines[name] for name in "abcd")
        received = read_exactly(far, len(expected))
        assert received.split(b"\n") == expected.split(b"\n")  # whole lines, in order
        wait_until(lambda: outbox.drained, what="nada pendente")
