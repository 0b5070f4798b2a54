"""Tests of ``rede``: waits, keepalive, addresses, host:porta, and the platform simulation.

Waits run on real socket pairs through both mechanisms (``poll`` and
``select``). Keepalive is checked with ``getsockopt`` on a real socket for
Linux, and with fake sockets that record calls for Windows and macOS; the
simulation tests then run the Windows and macOS paths on real sockets in a
subprocess. Address discovery is checked inside network namespaces, where
the exact answer is known.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import simulacao
from lan_virtual import REPO, VirtualLan, lan_fixture, python_env  # noqa: F401 (lan_fixture)

import protocolo
import rede

SHORT = 0.1
"""A wait that must time out: long enough to measure, short enough to be cheap."""
BOUND = 5.0
"""Upper bound on anything that must happen "at once"."""


# --------------------------------------------------------------------------
# wait_readable / wait_writable


@pytest.fixture(params=["poll", "select"])
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once through ``poll`` and once through ``select`` (counted)."""
    calls = {"select": 0}
    real_select = select.select

    def counting_select(*args: object) -> object:
        calls["select"] += 1
        return real_select(*args)  # type: ignore[arg-type]

    if request.param == "poll" and not hasattr(select, "poll"):
        pytest.skip("este sistema (ou a simulação) não tem select.poll")
    monkeypatch.setattr(select, "select", counting_select)
    monkeypatch.setattr(rede, "USE_POLL", request.param == "poll")
    yield request.param
    if request.param == "select":
        assert calls["select"] > 0, "the select path was not taken"
    else:
        assert calls["select"] == 0, "the poll path used select"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(BOUND)
    right.settimeout(BOUND)
    with left, right:
        yield left, right


def _timed(call: object, *args: object) -> tuple[object, float]:
    start = time.monotonic()
    result = call(*args)  # type: ignore[operator]
    return result, time.monotonic() - start


def test_readable_times_out_when_nothing_arrives(mechanism: str, pair) -> None:
    ready, elapsed = _timed(rede.wait_readable, pair[0], SHORT)
    assert ready is False
    assert SHORT * 0.9 <= elapsed < BOUND


def test_readable_when_data_waits(mechanism: str, pair) -> None:
    pair[1].sendall(b"x")
    ready, elapsed = _timed(rede.wait_readable, pair[0], BOUND)
    assert ready is True and elapsed < BOUND
    assert pair[0].recv(1) == b"x"


def test_readable_at_eof_so_recv_reports_it(mechanism: str, pair) -> None:
    pair[1].close()
    assert rede.wait_readable(pair[0], BOUND) is True
    assert pair[0].recv(1) == b""


def test_readable_with_no_timeout_returns_once_ready(mechanism: str, pair) -> None:
    pair[1].sendall(b"x")
    assert rede.wait_readable(pair[0], None) is True


def test_negative_timeout_is_an_immediate_check(mechanism: str, pair) -> None:
    ready, elapsed = _timed(rede.wait_readable, pair[0], -1)
    assert ready is False and elapsed < SHORT


def test_writable_until_the_buffer_fills(mechanism: str, pair) -> None:
    sender = pair[0]
    assert rede.wait_writable(sender, BOUND) is True
    sender.setblocking(False)
    for _ in range(100_000):  # bounded: a socket buffer is at most a few MiB
        try:
            sender.send(b"\0" * 65536)
        except BlockingIOError:
            break
    else:
        pytest.fail("the send buffer never filled")
    ready, elapsed = _timed(rede.wait_writable, sender, SHORT)
    assert ready is False and elapsed >= SHORT * 0.9


def test_writable_after_peer_closed_so_send_reports_it(mechanism: str, pair) -> None:
    pair[1].close()
    assert rede.wait_writable(pair[0], BOUND) is True
    with pytest.raises(OSError):
        for _ in range(100):  # the first send may still be accepted
            pair[0].send(b"x" * 65536)


@pytest.mark.parametrize("use_poll", [True, False])
def test_closed_socket_counts_as_ready(monkeypatch: pytest.MonkeyPatch, use_poll: bool) -> None:
    monkeypatch.setattr(rede, "USE_POLL", use_poll)
    sock = socket.socket()
    sock.close()
    assert rede.wait_readable(sock, BOUND) is True
    assert rede.wait_writable(sock, BOUND) is True


def test_readable_sockets_names_the_ready_one(mechanism: str) -> None:
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    with first, first_peer, second, second_peer:
        assert rede.readable_sockets([first, second], SHORT) == []
        second_peer.sendall(b"x")
        assert rede.readable_sockets([first, second], BOUND) == [second]


def test_a_signal_does_not_cut_the_wait_short(mechanism: str, pair) -> None:
    """EINTR: a signal handler that runs mid-wait neither raises nor ends the wait."""
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, SHORT / 4)
        ready, elapsed = _timed(rede.wait_readable, pair[0], SHORT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired, "the timer did not fire during the wait"
    assert ready is False and elapsed >= SHORT * 0.9


def test_poll_path_takes_descriptors_past_1024(monkeypatch: pytest.MonkeyPatch, pair) -> None:
    """Why poll: the server holds thousands of sockets, and select stops at 1024 on Linux."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 2000:
        pytest.skip(f"limite de descritores baixo demais ({hard})")
    if soft <= 2000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2001, hard))
    try:
        with pytest.raises(OSError):
            os.fstat(2000)  # not in use: dup2 must not close somebody's descriptor
        high = os.dup2(pair[0].fileno(), 2000)
        try:
            monkeypatch.setattr(rede, "USE_POLL", None)
            assert rede.wait_readable(high, SHORT) is False
            pair[1].sendall(b"x")
            assert rede.wait_readable(high, BOUND) is True
        finally:
            os.close(high)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_without_poll_the_select_path_is_chosen_at_call_time(monkeypatch: pytest.MonkeyPatch,
                                                              pair) -> None:
    monkeypatch.setattr(rede, "USE_POLL", None)
    assert rede._uses_poll() is hasattr(select, "poll")
    monkeypatch.delattr(select, "poll", raising=False)
    assert rede._uses_poll() is False
    pair[1].sendall(b"x")
    assert rede.wait_readable(pair[0], BOUND) is True


def test_send_all_delivers_everything_to_a_slow_reader(mechanism: str, pair) -> None:
    sender, receiver = pair
    sender.setblocking(False)
    data = os.urandom(4 * 1024 * 1024)  # several times any socket buffer
    received = bytearray()

    def read_slowly() -> None:
        time.sleep(SHORT)  # slow to start: the sender must wait for room
        while len(received) < len(data):
            chunk = receiver.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    rede.send_all(sender, data, stall_timeout=BOUND)
    reader.join(BOUND)
    assert bytes(received) == data


def test_send_all_gives_up_on_a_peer_that_stopped_reading(mechanism: str, pair) -> None:
    sender = pair[0]
    sender.setblocking(False)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="não progrediu"):
        rede.send_all(sender, b"\0" * (16 * 1024 * 1024), stall_timeout=SHORT)
    assert time.monotonic() - started < BOUND


def test_send_all_reports_a_closed_peer(pair) -> None:
    pair[0].setblocking(False)
    pair[1].close()
    with pytest.raises(OSError) as raised:
        rede.send_all(pair[0], b"\0" * (16 * 1024 * 1024), stall_timeout=BOUND)
    assert not isinstance(raised.value, TimeoutError)


# --------------------------------------------------------------------------
# enable_keepalive


class FakeSocket:
    """Records ``setsockopt`` and ``ioctl`` calls; ``refuse`` lists (level, option) to fail."""

    def __init__(self, refuse: tuple = (), with_ioctl: bool = False) -> None:
        self.options: dict[tuple[int, int], object] = {}
        self.ioctls: list[tuple[int, object]] = []
        self._refuse = set(refuse)
        if with_ioctl:
            self.ioctl = self._ioctl

    def setsockopt(self, level: int, option: int, value: object) -> None:
        if (level, option) in self._refuse:
            raise OSError(92, "Protocol not available")
        self.options[(level, option)] = value

    def _ioctl(self, control: int, value: object) -> None:
        if ("ioctl", control) in self._refuse:
            raise OSError(10022, "Invalid argument")
        self.ioctls.append((control, value))


KEEPALIVE = (socket.SOL_SOCKET, socket.SO_KEEPALIVE)


EXPECTED_METHOD = {"win32": "windows", "darwin": "macos"}


def _tcp_option(sock: socket.socket, number: int) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, number)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lê opções pelo número do Linux")
@pytest.mark.parametrize(("idle", "interval", "probes"), [(30, 3, 4), (60, 10, 5)])
def test_keepalive_takes_effect_on_a_real_socket(idle: int, interval: int, probes: int) -> None:
    """Natively the Linux path; under ``simulacao`` the Windows or macOS one, with effect."""
    with socket.socket() as sock:
        method = rede.enable_keepalive(sock, idle=idle, interval=interval, probes=probes)
        assert method == EXPECTED_METHOD.get(rede.PLATFORM, "linux")
        assert sock.getsockopt(*KEEPALIVE) == 1
        assert _tcp_option(sock, simulacao.LINUX_TCP_KEEPIDLE) == idle
        assert _tcp_option(sock, simulacao.LINUX_TCP_KEEPINTVL) == interval
        if method != "windows":  # Windows fixes the probe count itself
            assert _tcp_option(sock, simulacao.LINUX_TCP_KEEPCNT) == probes


def test_keepalive_defaults_are_the_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rede, "PLATFORM", "linux")
    for name, number in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6),
                         ("TCP_USER_TIMEOUT", 18)):
        monkeypatch.setattr(socket, name, number, raising=False)
    sock = FakeSocket()
    assert rede.enable_keepalive(sock) == "linux"
    assert sock.options == {KEEPALIVE: 1, (socket.IPPROTO_TCP, 4): protocolo.KEEPALIVE_IDLE_S,
                            (socket.IPPROTO_TCP, 5): protocolo.KEEPALIVE_INTERVAL_S,
                            (socket.IPPROTO_TCP, 6): protocolo.KEEPALIVE_PROBES,
                            # unacknowledged data: the same bound, in milliseconds
                            (socket.IPPROTO_TCP, 18): rede.keepalive_bound() * 1000}


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="opção só do Linux")
def test_unacknowledged_data_gets_the_keepalive_bound_on_a_real_socket() -> None:
    """Keepalive does not probe while data waits for an ACK: this bound covers that case."""
    with socket.socket() as sock:
        rede.enable_keepalive(sock, idle=2, interval=1, probes=5)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000


def test_windows_keepalive_uses_the_ioctl_in_milliseconds(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(rede, "PLATFORM", "win32")
    monkeypatch.setattr(socket, "SIO_KEEPALIVE_VALS", 0x98000004, raising=False)
    sock = FakeSocket(with_ioctl=True)
    assert rede.enable_keepalive(sock, idle=60, interval=10, probes=5) == "windows"
    assert sock.options[KEEPALIVE] == 1
    assert sock.ioctls == [(0x98000004, (1, 60000, 10000))]


def test_windows_keepalive_refused_falls_back_to_basic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rede, "PLATFORM", "win32")
    monkeypatch.setattr(socket, "SIO_KEEPALIVE_VALS", 0x98000004, raising=False)
    sock = FakeSocket(refuse=[("ioctl", 0x98000004)], with_ioctl=True)
    assert rede.enable_keepalive(sock) == "basic"
    assert sock.options[KEEPALIVE] == 1


def test_macos_keepalive_uses_tcp_keepalive_0x10(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT", raising=False)  # Linux only
    monkeypatch.setattr(rede, "PLATFORM", "darwin")
    monkeypatch.delattr(socket, "TCP_KEEPALIVE", raising=False)
    monkeypatch.setattr(socket, "TCP_KEEPINTVL", 0x101, raising=False)
    monkeypatch.setattr(socket, "TCP_KEEPCNT", 0x102, raising=False)
    sock = FakeSocket()
    assert rede.enable_keepalive(sock, idle=60, interval=10, probes=5) == "macos"
    assert sock.options == {KEEPALIVE: 1, (socket.IPPROTO_TCP, 0x10): 60,
                            (socket.IPPROTO_TCP, 0x101): 10, (socket.IPPROTO_TCP, 0x102): 5}


def test_macos_keepalive_without_interval_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT", raising=False)  # Linux only
    monkeypatch.setattr(rede, "PLATFORM", "darwin")
    monkeypatch.delattr(socket, "TCP_KEEPINTVL", raising=False)
    monkeypatch.delattr(socket, "TCP_KEEPCNT", raising=False)
    sock = FakeSocket()
    assert rede.enable_keepalive(sock) == "macos"
    assert len(sock.options) == 2


def test_basic_keepalive_when_nothing_else_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT", raising=False)  # Linux only
    monkeypatch.setattr(rede, "PLATFORM", "sunos5")
    monkeypatch.delattr(socket, "TCP_KEEPIDLE", raising=False)
    sock = FakeSocket()
    assert rede.enable_keepalive(sock) == "basic"
    assert sock.options == {KEEPALIVE: 1}


def test_a_refused_tuning_option_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rede, "PLATFORM", "linux")
    monkeypatch.setattr(socket, "TCP_KEEPIDLE", 4, raising=False)
    monkeypatch.setattr(socket, "TCP_KEEPINTVL", 5, raising=False)
    monkeypatch.setattr(socket, "TCP_KEEPCNT", 6, raising=False)
    refused_interval = FakeSocket(refuse=[(socket.IPPROTO_TCP, 5)])
    assert rede.enable_keepalive(refused_interval) == "linux"
    refused_idle = FakeSocket(refuse=[(socket.IPPROTO_TCP, 4)])
    assert rede.enable_keepalive(refused_idle) == "basic"
    assert refused_idle.options[KEEPALIVE] == 1


def test_keepalive_itself_refused_raises() -> None:
    with pytest.raises(OSError):
        rede.enable_keepalive(FakeSocket(refuse=[KEEPALIVE]))


# --------------------------------------------------------------------------
# lan_addresses / broadcast_addresses


def test_lan_addresses_here_are_usable_and_ordered() -> None:
    addresses = rede.lan_addresses()
    assert len(addresses) == len(set(addresses))
    families = [":" in address for address in addresses]
    assert families == sorted(families), "IPv4 must come first"
    for address in addresses:
        assert not address.startswith(("127.", "::1", "fe80:")), address
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))  # really one of this machine's


def test_lan_addresses_drop_loopback_and_addresses_not_on_this_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rede, "_host_name_addresses",
                        lambda: iter(["127.0.1.1", "203.0.113.7", "fe80::1", "::1", "junk"]))
    addresses = rede.lan_addresses()
    for bad in ("127.0.1.1", "203.0.113.7", "fe80::1", "::1", "junk"):
        assert bad not in addresses


def test_lan_addresses_survive_every_source_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise OSError("no network")

    monkeypatch.setattr(socket, "getaddrinfo", broken)
    monkeypatch.setattr(socket, "if_nameindex", broken)
    monkeypatch.setattr(rede, "_ROUTE_PROBES", ((socket.AF_INET, "256.0.0.1"),))
    assert isinstance(rede.lan_addresses(), list)
    assert rede.broadcast_addresses() == []


ADDRESSES_CODE = ("import json, rede; "
                  "print(json.dumps([rede.lan_addresses(), rede.broadcast_addresses()]))")


def _addresses_in(host, *prefix: str) -> tuple[list[str], list[str]]:
    code = "; ".join([*prefix, ADDRESSES_CODE])
    done = host.run([sys.executable, "-c", code], timeout=30,
                    env=python_env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}"))
    assert done.returncode == 0, done.stderr
    found, broadcast = json.loads(done.stdout)
    return found, broadcast


def test_lan_addresses_in_a_namespace_are_exactly_its_own(lan: VirtualLan) -> None:
    host = lan.add_host("a")
    found, broadcast = _addresses_in(host)
    assert found == [host.address]
    assert broadcast == [f"10.77.{lan.subnet}.255"]


def test_lan_addresses_with_ipv6_list_ipv4_first(lan: VirtualLan) -> None:
    host = lan.add_host("a", ipv6=True)
    found, _ = _addresses_in(host)
    assert found == [host.address, host.ipv6_address]


def test_lan_addresses_on_simulated_windows_come_from_the_route(lan: VirtualLan) -> None:
    """Without Linux's interface table, the default route's source address still shows."""
    host = lan.add_host("a")
    found, broadcast = _addresses_in(host, "import simulacao", "simulacao.apply('windows')")
    assert found == [host.address]
    assert broadcast == []


# --------------------------------------------------------------------------
# host:porta


@pytest.mark.parametrize(("text", "expected"), [
    ("servidor", ("servidor", 1998)),
    ("  10.0.0.5  ", ("10.0.0.5", 1998)),
    ("10.0.0.5:2000", ("10.0.0.5", 2000)),
    ("lab.local:65535", ("lab.local", 65535)),
    ("[::1]", ("::1", 1998)),
    ("[::1]:1", ("::1", 1)),
    ("::1", ("::1", 1998)),
    ("fe80::1", ("fe80::1", 1998)),
    ("fe80::1%eth0", ("fe80::1%eth0", 1998)),
    ("[fe80::1%eth0]:3000", ("fe80::1%eth0", 3000)),
    ("2001:db8::1:1998", ("2001:db8::1:1998", 1998)),
])
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert rede.parse_host_port(text, 1998) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "informe o endereço"),
    ("   ", "informe o endereço"),
    (":1998", "informe o endereço"),
    ("[]:1998", "informe o endereço"),
    ("host:0", "porta inválida"),
    ("host:65536", "porta inválida"),
    ("host:", "porta inválida"),
    ("host:abc", "porta inválida"),
    ("host:-1", "porta inválida"),
    ("host:१२३", "porta inválida"),  # non-ASCII digits
    ("host:000001998", "porta inválida"),
    ("[::1]:x", "porta inválida"),
    ("[::1", "falta o ']'"),
    ("[::1]1998", "texto inesperado"),
    ("[servidor]:1998", "IPv6 inválido"),
    ("1:2:3", "IPv6 inválido"),
    ("meu host", "não pode ter espaços"),
])
def test_parse_host_port_refuses_with_a_portuguese_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rede.parse_host_port(text, 1998)


@pytest.mark.parametrize(("host", "port", "text"), [
    ("10.0.0.5", 1998, "10.0.0.5:1998"),
    ("servidor", 80, "servidor:80"),
    ("::1", 1998, "[::1]:1998"),
    ("fe80::1%eth0", 2000, "[fe80::1%eth0]:2000"),
])
def test_format_host_port_round_trips(host: str, port: int, text: str) -> None:
    assert rede.format_host_port(host, port) == text
    assert rede.parse_host_port(text, 1) == (host, port)


# --------------------------------------------------------------------------
# The platform simulation (tests/simulacao.py), in a fresh interpreter each


SIMULATION_PROBE = r'''
import json, select, selectors, socket, sys
import simulacao
simulacao.apply(simulacao.active_mode())
import descoberta, rede

report = {"mode": simulacao.applied_mode, "platform": rede.PLATFORM,
          "uses_poll": rede._uses_poll(),
          "missing": [n for n in ("MSG_DONTWAIT", "TCP_KEEPIDLE", "TCP_KEEPINTVL",
                                  "TCP_KEEPCNT", "SO_REUSEPORT", "AF_UNIX")
                      if not hasattr(socket, n)],
          "has_poll": hasattr(select, "poll")}
left, right = socket.socketpair()
report["socketpair_family"] = int(left.family)
report["idle_wait"] = rede.wait_readable(left, 0.05)
right.sendall(b"x")
report["data_wait"] = rede.wait_readable(left, 5)
report["select_calls"] = simulacao.select_calls
with socket.socket() as sock:
    report["keepalive"] = rede.enable_keepalive(sock)
    report["so_keepalive"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    report["idle"] = sock.getsockopt(socket.IPPROTO_TCP, simulacao.LINUX_TCP_KEEPIDLE)
    report["interval"] = sock.getsockopt(socket.IPPROTO_TCP, simulacao.LINUX_TCP_KEEPINTVL)
    report["count"] = sock.getsockopt(socket.IPPROTO_TCP, simulacao.LINUX_TCP_KEEPCNT)
report["ioctl_calls"] = [[c, list(v)] for c, v in simulacao.ioctl_calls]
report["selector"] = selectors.DefaultSelector.__name__
with descoberta.DiscoveryResponder(0, False, "simulado", host="127.0.0.1") as responder:
    found = descoberta.discover(responder.address[1], ["127.0.0.1"], broadcast=False,
                                timeout=3)
report["discovered"] = [server.name for server in found]
print(json.dumps(report))
'''


def _simulated(mode: str | None) -> dict:
    env = python_env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    env.pop("CHAT_SIMULAR_PLATAFORMA", None)
    if mode is not None:
        env["CHAT_SIMULAR_PLATAFORMA"] = mode
    code = SIMULATION_PROBE if mode else "import simulacao; print(repr(simulacao.active_mode()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env=env, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if mode else {"active": done.stdout.strip()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="simula a partir do Linux")
def test_simulated_windows_takes_every_fallback_and_it_works() -> None:
    report = _simulated("windows")
    assert report["platform"] == "win32"
    assert report["missing"] == ["MSG_DONTWAIT", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT",
                                 "SO_REUSEPORT", "AF_UNIX"]
    assert report["has_poll"] is False and report["uses_poll"] is False
    assert report["socketpair_family"] == socket.AF_INET
    assert report["idle_wait"] is False and report["data_wait"] is True
    assert report["select_calls"] >= 2
    assert report["keepalive"] == "windows"
    assert report["ioctl_calls"] == [[0x98000004, [1, 60000, 10000]]]
    assert (report["so_keepalive"], report["idle"], report["interval"]) == (1, 60, 10)
    assert report["selector"] == "_WindowsSelectSelector"
    assert report["discovered"] == ["simulado"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="simula a partir do Linux")
def test_simulated_macos_uses_tcp_keepalive_and_keeps_poll() -> None:
    report = _simulated("macos")
    assert report["platform"] == "darwin"
    assert report["missing"] == ["TCP_KEEPIDLE"]
    assert report["uses_poll"] is True
    assert report["keepalive"] == "macos"
    assert (report["so_keepalive"], report["idle"], report["interval"], report["count"]) == \
        (1, 60, 10, 5)
    assert report["ioctl_calls"] == []
    assert report["selector"] == "PollSelector"
    assert report["discovered"] == ["simulado"]


def test_simulation_is_off_without_the_variable() -> None:
    assert _simulated(None) == {"active": "None"}


def test_simulation_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="desconhecido"):
        simulacao.apply("beos")


@pytest.mark.parametrize(("mode", "expected"), [("windows", "win32 False"),
                                                ("macos", "darwin True"), ("", "")])
def test_python_command_simulates_child_processes_too(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path, mode: str,
                                                      expected: str) -> None:
    script = tmp_path / "filho.py"
    script.write_text("import socket, sys, rede\n"
                      "print(rede.PLATFORM, hasattr(socket, 'MSG_DONTWAIT'), sys.argv[1:])\n",
                      encoding="utf-8")
    monkeypatch.setenv("CHAT_SIMULAR_PLATAFORMA", mode)
    monkeypatch.setattr(simulacao, "applied_mode", None)  # the variable decides here
    argv = simulacao.python_command(script, "a", "b")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          env=python_env(PYTHONPATH=str(REPO), CHAT_SIMULAR_PLATAFORMA=mode))
    assert done.returncode == 0, done.stderr
    native = f"{sys.platform} True"
    assert done.stdout.strip() == f"{expected or native} ['a', 'b']"


def test_every_local_ipv4_address_is_read_from_the_routing_trie(tmp_path, monkeypatch):
    """An interface's second address is not in SIOCGIFADDR; the trie lists it."""
    trie = tmp_path / "fib_trie"
    trie.write_text(
        "Local:\n  +-- 0.0.0.0/0 3 0 5\n"
        "           |-- 127.0.0.1\n              /32 host LOCAL\n"
        "           |-- 10.78.0.9\n              /32 host LOCAL\n"
        "           |-- 10.78.0.255\n              /32 link BROADCAST\n"
        "           |-- 192.0.2.2\n              /32 host LOCAL\n", encoding="ascii")
    monkeypatch.setattr(rede, "PLATFORM", "linux")
    assert list(rede._fib_trie_local_addresses(str(trie))) == [
        "127.0.0.1", "10.78.0.9", "192.0.2.2"]


def test_keepalive_bound_is_idle_plus_every_probe():
    assert rede.keepalive_bound(60, 10, 5) == 110
    assert rede.keepalive_bound(2, 2 / 6, 5) == 7  # at least a second between probes
