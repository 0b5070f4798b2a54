"""Tests of ``descoberta``: the responder and ``discover``, on loopback and on a virtual LAN.

Loopback tests talk to a responder on a free port of its own, only by
unicast (broadcast would leave the machine). Distinct 127.x.y.z source
addresses stand in for distinct machines. The virtual-LAN tests run real
processes in network namespaces, where broadcasts cross from one "machine"
to another as in the lab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from lan_virtual import Host, VirtualLan, lan_fixture, read_line  # noqa: F401 (lan_fixture)
from wire import wait_until

import descoberta
import protocolo
import rede
from descoberta import AnswerLimiter, DiscoveryResponder, FoundServer

TIMEOUT = 5.0
"""Bound on any single wait in these tests."""
QUIET = 0.3
"""How long to listen for answers that must NOT come."""


@pytest.fixture
def responder() -> Iterator[DiscoveryResponder]:
    with DiscoveryResponder(0, True, "sala 12", host="127.0.0.1") as running:
        yield running


@contextlib.contextmanager
def probe_socket(source: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A UDP socket on ``source`` (any 127.x.y.z: another "machine" on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        yield sock


def collect(sock: socket.socket, quiet: float = QUIET, limit: int = 10_000) -> list[bytes]:
    """Every datagram that arrives until none has for ``quiet`` seconds (bounded)."""
    received: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(received) < limit and time.monotonic() < deadline:
        if not rede.wait_readable(sock, quiet):
            break
        received.append(sock.recv(protocolo.MAX_DISCOVERY_DATAGRAM + 1))
    return received


def answer_of(responder: DiscoveryResponder) -> bytes:
    return protocolo.format_discovery_answer(responder.address[1], True, "sala 12")


# --------------------------------------------------------------------------
# The responder


@pytest.mark.parametrize("probe", [b"DESCOBRIR 1\n", b"DESCOBRIR 1", b"descobrir 1\r\n",
                                   b"DESCOBRIR   1\n"])
def test_responder_answers_a_probe_with_the_exact_datagram(responder, probe: bytes) -> None:
    with probe_socket() as sock:
        sock.sendto(probe, responder.address)
        assert rede.wait_readable(sock, TIMEOUT)
        data, source = sock.recvfrom(1024)
    port = responder.address[1]
    assert data == f"SERVIDOR {port} 1 sala 12\n".encode()
    assert source == responder.address
    assert protocolo.parse_discovery_answer(data) == protocolo.ServerAnnouncement(
        port, True, "sala 12")


def test_responder_name_defaults_to_the_host_name_cleaned() -> None:
    with DiscoveryResponder(0, False, host="127.0.0.1") as running:
        assert running.name == protocolo.clean_server_name(socket.gethostname())
    dirty = DiscoveryResponder(0, False, "a\x1b[31mb\n" + "x" * 100)
    assert dirty.name == protocolo.clean_server_name("a\x1b[31mb\n" + "x" * 100)
    assert len(dirty.name) == protocolo.MAX_SERVER_NAME_CHARS


JUNK = [b"", b"OLA", b"DESCOBRIR", b"DESCOBRIR 2\n", b"DESCOBRIR 1 extra\n",
        b"SERVIDOR 1998 0 eu\n", b"\xff\xfe\xfd", b"DESCOBRIR 1" + b" " * 600,
        b"DESCOBRIR\t1\n", b"X" * 4000]


def test_responder_ignores_junk_and_oversized_datagrams(responder) -> None:
    with probe_socket() as sock:
        for junk in JUNK:
            sock.sendto(junk, responder.address)
        sock.sendto(protocolo.DISCOVERY_PROBE, responder.address)
        assert collect(sock) == [answer_of(responder)]
    stats = responder.stats
    assert stats.ignored == len(JUNK)
    assert stats.answered == 1


def test_responder_limits_answers_per_source_and_refills(responder) -> None:
    with probe_socket() as flooder, probe_socket("127.0.0.2") as other:
        started = time.monotonic()
        for _ in range(50):
            flooder.sendto(protocolo.DISCOVERY_PROBE, responder.address)
        first_burst = collect(flooder)
        burst_time = time.monotonic() - started - QUIET
        # The burst of 5, plus what refilled (5 per second) while the probes were handled.
        assert 5 <= len(first_burst) <= 5 + 5 * burst_time
        assert responder.stats.source_limited == 50 - len(first_burst)

        # Another source has a budget of its own.
        other.sendto(protocolo.DISCOVERY_PROBE, responder.address)
        assert collect(other) == [answer_of(responder)]

        # About half a second later, tokens are back: some answers, not ten.
        time.sleep(max(0.0, started + 0.6 - time.monotonic()))
        for _ in range(10):
            flooder.sendto(protocolo.DISCOVERY_PROBE, responder.address)
        refilled = collect(flooder)
        elapsed = time.monotonic() - started
    assert 1 <= len(refilled) <= min(5, 5 * elapsed)


def test_responder_limits_answers_in_total() -> None:
    with DiscoveryResponder(0, False, "x", host="127.0.0.1", per_source_per_s=5,
                            total_per_s=10) as running:
        sockets = [probe_socket(f"127.0.1.{n}") for n in range(1, 5)]
        with contextlib.ExitStack() as stack:
            opened = [stack.enter_context(s) for s in sockets]
            started = time.monotonic()
            for sock in opened:
                for _ in range(5):
                    sock.sendto(protocolo.DISCOVERY_PROBE, running.address)
            answers = sum(len(collect(sock, quiet=0.1)) for sock in opened)
            elapsed = time.monotonic() - started
        stats = running.stats
    # Four sources within their own budget, 20 probes: the total budget of 10 decides.
    assert 10 <= answers <= 10 + 10 * elapsed
    assert stats.answered == answers and stats.total_limited == 20 - answers
    assert stats.source_limited == 0


def test_responder_per_source_table_stays_bounded() -> None:
    """A flood from more sources than the table holds (spoofing, say) does not grow it."""
    sources = descoberta.MAX_TRACKED_SOURCES + 200
    batch = 100  # in batches, so the socket's receive buffer never drops a probe
    with DiscoveryResponder(0, False, "x", host="127.0.0.1") as running:
        for first in range(0, sources, batch):
            for n in range(first, min(first + batch, sources)):
                with probe_socket(f"127.2.{n // 250}.{n % 250 + 1}") as sock:
                    sock.sendto(protocolo.DISCOVERY_PROBE, running.address)
            handled = min(first + batch, sources)
            wait_until(lambda handled=handled: running.stats.answered + running.stats.limited
                       >= handled, what=f"{handled} probes handled")
            assert running.tracked_sources <= descoberta.MAX_TRACKED_SOURCES
        assert running.tracked_sources == descoberta.MAX_TRACKED_SOURCES
        assert running.stats.total_limited > 0  # 1224 answers in a moment exceed 200/s


def test_limiter_table_is_bounded_and_forgets_idle_sources() -> None:
    limiter = AnswerLimiter(per_source_per_s=5, total_per_s=0, max_sources=100)
    for n in range(10_000):
        assert limiter.allow(f"10.0.{n // 256}.{n % 256}", now=0.0) == descoberta.ALLOWED
    assert limiter.tracked_sources == 100
    limiter.forget_idle(now=0.1)
    assert limiter.tracked_sources == 100  # half a token back: not idle yet
    limiter.forget_idle(now=0.2)  # 5 per second refills the spent token in 0.2 s
    assert limiter.tracked_sources == 0


def test_limiter_budgets() -> None:
    limiter = AnswerLimiter(per_source_per_s=5, total_per_s=200)
    verdicts = [limiter.allow("10.0.0.1", now=100.0) for _ in range(7)]
    assert verdicts == [descoberta.ALLOWED] * 5 + [descoberta.SOURCE_LIMITED] * 2
    assert limiter.allow("10.0.0.1", now=100.2) == descoberta.ALLOWED  # one token back
    assert limiter.allow("10.0.0.1", now=100.2) == descoberta.SOURCE_LIMITED
    unlimited = AnswerLimiter(per_source_per_s=0, total_per_s=0)
    assert all(unlimited.allow("10.0.0.1", now=0.0) == descoberta.ALLOWED for _ in range(1000))


def _udp_from_port_zero(destination: tuple[str, int]) -> None:
    """Send a probe whose UDP source port is 0: answering it fails (EINVAL) in sendto."""
    payload = protocolo.DISCOVERY_PROBE
    header = struct.pack("!HHHH", 0, destination[1], 8 + len(payload), 0)  # no checksum
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.sendto(header + payload, (destination[0], 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="um datagrama forjado precisa de root")
def test_responder_survives_a_send_error(responder) -> None:
    _udp_from_port_zero(responder.address)
    wait_until(lambda: responder.stats.send_errors == 1, what="the failed answer counted")
    with probe_socket() as sock:
        sock.sendto(protocolo.DISCOVERY_PROBE, responder.address)
        assert collect(sock) == [answer_of(responder)]


SUMMARY = re.compile(r"(\d+) respostas, (\d+) pedidos acima do limite, "
                     r"(\d+) datagramas ignorados, (\d+) erros de rede")


def test_responder_logs_summaries_not_datagrams(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(descoberta, "SUMMARY_INTERVAL_S", 0.3)
    caplog.set_level(logging.DEBUG, logger="descoberta")

    def totals() -> list[int]:
        counts = [[int(n) for n in SUMMARY.search(r.getMessage()).groups()]
                  for r in caplog.records if "no último minuto" in r.getMessage()]
        return [sum(column) for column in zip(*counts, strict=True)] if counts else [0] * 4

    with DiscoveryResponder(0, False, "x", host="127.0.0.1") as running, \
            probe_socket() as sock:
        started = time.monotonic()
        for _ in range(100):
            sock.sendto(protocolo.DISCOVERY_PROBE, running.address)
            sock.sendto(b"lixo", running.address)
        wait_until(lambda: totals()[2] == 100 and totals()[0] + totals()[1] == 100,
                   what="summaries that account for every datagram")
        elapsed = time.monotonic() - started
    answered, _, _, errors = totals()
    assert 5 <= answered <= 5 + 5 * elapsed and errors == 0
    summaries = [r for r in caplog.records if "no último minuto" in r.getMessage()]
    assert all(r.levelno == logging.INFO for r in summaries)  # some were refused
    # 200 datagrams, a handful of lines: start, a summary per interval, the final total.
    assert len(summaries) <= elapsed / 0.3 + 1
    assert len(caplog.records) <= len(summaries) + 2


def test_stop_is_bounded_idempotent_and_frees_the_port() -> None:
    running = DiscoveryResponder(0, False, "x", host="127.0.0.1")
    running.start()
    address = running.address
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < descoberta.WAIT_TICK_S  # woken, not polled out
    running.stop()
    assert not [t for t in threading.enumerate() if t.name == "descoberta"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(address)
    with pytest.raises(RuntimeError):
        running.start()


def test_stop_without_start_and_a_taken_port() -> None:
    DiscoveryResponder(0, False, "x").stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        blocked = DiscoveryResponder(taken.getsockname()[1], False, "x", host="127.0.0.1")
        with pytest.raises(OSError):
            blocked.start()
        blocked.stop()


# --------------------------------------------------------------------------
# discover() on loopback


def test_discover_finds_a_responder_by_address_and_returns_early(responder) -> None:
    port = responder.address[1]
    started = time.monotonic()
    found = descoberta.discover(port, ["127.0.0.1"], broadcast=False, timeout=3)
    assert time.monotonic() - started < 1.5  # the only host named answered
    assert found == [FoundServer("127.0.0.1", port, True, "sala 12")]
    assert found[0].label == f"sala 12 — 127.0.0.1:{port} (TLS)"


def test_discover_accepts_host_colon_port(responder) -> None:
    port = responder.address[1]
    found = descoberta.discover(1, [f"127.0.0.1:{port}"], broadcast=False, timeout=3)
    assert [server.port for server in found] == [port]


def test_discover_shows_each_server_once(responder) -> None:
    port = responder.address[1]
    # 127.0.0.9 never answers, so discover waits its whole timeout and resends.
    found = descoberta.discover(port, ["127.0.0.1", "127.0.0.1", "127.0.0.9"],
                                broadcast=False, timeout=0.6)
    assert found == [FoundServer("127.0.0.1", port, True, "sala 12")]
    assert responder.stats.answered == 2  # the probe and its resend: one server


def test_discover_sorts_by_name() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reserve:
        reserve.bind(("127.0.3.1", 0))
        port = reserve.getsockname()[1]
    with DiscoveryResponder(port, False, "zebra", host="127.0.3.1"), \
            DiscoveryResponder(port, True, "Abelha", host="127.0.3.2"):
        found = descoberta.discover(port, ["127.0.3.1", "127.0.3.2"], broadcast=False,
                                    timeout=3)
    assert [(s.name, s.host, s.tls) for s in found] == [("Abelha", "127.0.3.2", True),
                                                      ("zebra", "127.0.3.1", False)]
    assert found[1].label == f"zebra — 127.0.3.1:{port}"


@contextlib.contextmanager
def fake_server(answers: list[bytes]) -> Iterator[int]:
    """A hostile "server" on loopback that answers every datagram with ``answers``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 2 * TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            if rede.wait_readable(sock, 0.05):
                _, source = sock.recvfrom(2048)
                for answer in answers:
                    sock.sendto(answer, source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(TIMEOUT)
        sock.close()


def test_discover_ignores_junk_answers_and_cleans_names() -> None:
    hostile = [b"lixo", b"", b"\xff\xfe", b"SERVIDOR 0 1 zero\n", b"SERVIDOR 99999 1 grande\n",
               b"SERVIDOR 1998 2 tls\n", b"SERVIDOR 1998\n", b"SERVIDOR -1 0 x\n",
               b"SERVIDOR 4000 0 " + b"n" * 600,
               b"SERVIDOR 4000 0 falso\x1b[31m\n"]
    with fake_server(hostile) as port:
        found = descoberta.discover(port, ["127.0.0.1"], broadcast=False, timeout=1)
    assert found == [FoundServer("127.0.0.1", 4000, False, "falso [31m")]


def test_discover_caps_the_results() -> None:
    many = [f"SERVIDOR {port} 0 s{port}\n".encode() for port in range(2000, 2100)]
    with fake_server(many) as port:
        # A second, silent host keeps discover from returning as soon as the
        # only named one answered: it must be the cap that stops it at 7.
        found = descoberta.discover(port, ["127.0.0.1", "127.0.0.9"], broadcast=False,
                                    timeout=1, max_results=7)
    assert len(found) == 7
    assert len({(s.host, s.port) for s in found}) == 7


@pytest.mark.parametrize("hosts", [["127.0.0.1"], ["nao-existe.invalid"], ["host:99999"], []])
def test_discover_respects_its_timeout(hosts: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives the probes, never answers
        started = time.monotonic()
        found = descoberta.discover(silent.getsockname()[1], hosts, broadcast=False,
                                    timeout=0.4)
        elapsed = time.monotonic() - started
        probes = collect(silent, quiet=0.05)
    assert found == []
    assert elapsed < 0.4 + 0.5
    if hosts == ["127.0.0.1"]:
        assert elapsed >= 0.35  # waited for an answer that never came
        assert probes == [protocolo.DISCOVERY_PROBE] * 2  # the probe and its resend


def test_discover_in_background_does_not_block() -> None:
    """The GUI keeps running while discovery waits; the answer shows up once it comes.

    The server here is a socket the test answers by hand, so the discovery
    cannot finish before the test has looked at it while it is still waiting.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(TIMEOUT)
        port = server.getsockname()[1]
        started = time.monotonic()
        handle = descoberta.discover_in_background(port, ["127.0.0.1"], broadcast=False,
                                                   timeout=4 * TIMEOUT)
        assert time.monotonic() - started < 1.0  # blocking would take until the answer
        probe, client = server.recvfrom(1024)
        assert probe == protocolo.DISCOVERY_PROBE
        assert not handle.done()
        with pytest.raises(TimeoutError):
            handle.result(timeout=0)
        server.sendto(protocolo.format_discovery_answer(port, True, "sala 12"), client)
        assert handle.result(timeout=TIMEOUT) == [FoundServer("127.0.0.1", port, True, "sala 12")]
        assert handle.done()


# --------------------------------------------------------------------------
# On a virtual LAN: real processes in network namespaces

LAN_PORT = protocolo.DEFAULT_PORT
DISCOVER_TIMEOUT = 1.0
RESPONDER_CODE = r"""
import signal, sys, threading
import descoberta
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *args: stop.set())
with descoberta.DiscoveryResponder(int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]) as r:
    print("pronto", r.address[1], flush=True)
    stop.wait(120)
s = r.stats
print("estatisticas", s.answered, s.limited, s.ignored, flush=True)
"""
DISCOVER_CODE = r"""
import json, sys
import descoberta
port, broadcast, timeout, hosts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
found = descoberta.discover(int(port), hosts, broadcast=broadcast == "1", timeout=float(timeout))
print(json.dumps([[s.host, s.port, s.tls, s.name] for s in found]))
"""
FLOOD_CODE = r"""
import json, socket, sys, time
target, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent = answers = 0
started = time.monotonic()
print("inicio", flush=True)
while time.monotonic() - started < duration:
    try:
        sock.sendto(b"DESCOBRIR 1\n", (target, port))
        sent += 1
    except BlockingIOError:
        pass
    while True:
        try:
            sock.recv(600)
            answers += 1
        except BlockingIOError:
            break
    time.sleep(0.0005)  # pacing: about 2000 probes per second
end = time.monotonic() + 0.3
while time.monotonic() < end:
    try:
        sock.recv(600)
        answers += 1
    except BlockingIOError:
        time.sleep(0.01)
print(json.dumps({"sent": sent, "answers": answers, "elapsed": time.monotonic() - started}))
"""


class Responder:
    """A ``DiscoveryResponder`` running as a real process on a virtual host."""

    def __init__(self, host: Host, name: str, tls: bool = False) -> None:
        self.host = host
        self.proc = host.popen_python(RESPONDER_CODE, str(LAN_PORT), "1" if tls else "0", name)
        line = read_line(self.proc, TIMEOUT)
        assert line == f"pronto {LAN_PORT}", line

    def stop(self) -> dict[str, int]:
        """Stop it (SIGTERM) and return its final counters."""
        self.proc.terminate()
        words = read_line(self.proc, TIMEOUT).split()
        assert self.proc.wait(TIMEOUT) == 0
        assert words[0] == "estatisticas", words
        return dict(zip(("answered", "limited", "ignored"), map(int, words[1:]), strict=True))


def discover_from(host: Host, *named: str, broadcast: bool = True) -> list[tuple]:
    done = host.run_python(DISCOVER_CODE, str(LAN_PORT), "1" if broadcast else "0",
                           str(DISCOVER_TIMEOUT), *named, timeout=30)
    assert done.returncode == 0, done.stderr
    return sorted(tuple(server) for server in json.loads(done.stdout))


def test_lan_broadcast_finds_a_responder_on_another_host(lan: VirtualLan) -> None:
    server, client = lan.add_host("a"), lan.add_host("b")
    responder = Responder(server, "sala-a", tls=True)
    assert discover_from(client) == [(server.address, LAN_PORT, True, "sala-a")]
    stats = responder.stop()
    assert stats["answered"] >= 1 and stats["ignored"] == 0


def test_lan_two_responders_are_each_found_once_and_an_absent_one_not(lan: VirtualLan) -> None:
    first, second, client = lan.add_host("a"), lan.add_host("c"), lan.add_host("b")
    lan.add_host("d")  # a machine with no server: must not show up
    Responder(first, "primeiro")
    Responder(second, "segundo")
    assert discover_from(client) == sorted([(first.address, LAN_PORT, False, "primeiro"),
                                            (second.address, LAN_PORT, False, "segundo")])


def test_lan_a_vanished_host_is_not_found_until_it_reappears(lan: VirtualLan) -> None:
    first, second, client = lan.add_host("a"), lan.add_host("c"), lan.add_host("b")
    Responder(first, "primeiro")
    Responder(second, "segundo")
    first.vanish()
    assert discover_from(client) == [(second.address, LAN_PORT, False, "segundo")]
    first.reappear()
    assert len(discover_from(client)) == 2


def test_lan_without_a_default_route_the_directed_broadcast_finds_it(lan: VirtualLan) -> None:
    """Linux will not send to 255.255.255.255 without a default route (an isolated lab)."""
    server = lan.add_host("a")
    client = lan.add_host("b", default_route=False)
    Responder(server, "isolada")
    assert discover_from(client) == [(server.address, LAN_PORT, False, "isolada")]


def test_lan_unicast_probe_to_a_named_host(lan: VirtualLan) -> None:
    server, client = lan.add_host("a"), lan.add_host("b")
    Responder(server, "por-nome")
    assert discover_from(client, server.address, broadcast=False) == [
        (server.address, LAN_PORT, False, "por-nome")]


def test_lan_a_flood_gets_no_more_than_its_limit_and_others_still_find(lan: VirtualLan
                                                                      ) -> None:
    server, client, flooder = lan.add_host("a"), lan.add_host("b"), lan.add_host("c")
    responder = Responder(server, "alvo")
    flood = flooder.popen_python(FLOOD_CODE, server.address, str(LAN_PORT), "2.5")
    assert read_line(flood, TIMEOUT) == "inicio"
    assert discover_from(client) == [(server.address, LAN_PORT, False, "alvo")]
    result = json.loads(read_line(flood, 3 * TIMEOUT))
    assert flood.wait(TIMEOUT) == 0
    stats = responder.stop()
    rate = descoberta.PER_SOURCE_ANSWERS_PER_S
    assert result["sent"] > 500, result  # it was a flood
    assert result["answers"] <= rate + rate * result["elapsed"] + 1, result
    assert stats["limited"] > 0 and stats["answered"] >= result["answers"], (stats, result)


def test_lan_fixture_cleans_up_namespaces_and_processes() -> None:
    if os.geteuid() != 0:
        pytest.skip("a rede virtual precisa de root")
    with VirtualLan() as network:
        host = network.add_host("a")
        proc = host.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        tag = network.tag
    assert proc.poll() is not None
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=TIMEOUT, check=True).stdout
    assert tag not in listing


def test_lan_fixture_explains_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import lan_virtual

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "precisa de root" in lan_virtual.unavailable_reason()

    def refuse(argv, stdin=None):
        raise lan_virtual.LanError("ip netns add: Operation not permitted")

    monkeypatch.setattr(lan_virtual, "_tool", refuse)
    with pytest.raises(lan_virtual.LanError, match="Operation not permitted"):
        VirtualLan()
