"""Abuse limits: connections per address and in total (LOTADO), the request
rate (LIMITE), the unregistered idle bound (TEMPO), TCP keepalive, and the
command-line options that set them.

Each loopback address (127.0.0.2, 127.0.0.3, ...) is its own client address
on Linux, so per-address limits are exercised without a second machine.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
import time

import pytest
import simulacao
from wire import WireClient, running_server, wait_until

import limites
import servidor

# --------------------------------------------------------------------------
# Connections per address and in total (LOTADO)


def assert_refused(client: WireClient) -> None:
    """The server sent exactly one ``ERRO LOTADO`` line and closed."""
    lines = client.expect_eof()
    assert len(lines) == 1 and lines[0].startswith("ERRO LOTADO "), lines


def assert_served(client: WireClient) -> None:
    assert client.request("PING ok") == "PONG ok"


def test_max_por_ip_refuses_the_extra_connection_from_one_address():
    with running_server(max_per_ip=2) as server:
        first = WireClient(server.address, source_ip="127.0.0.2")
        second = WireClient(server.address, source_ip="127.0.0.2")
        assert_served(first)
        assert_served(second)
        with WireClient(server.address, source_ip="127.0.0.2") as third:
            assert_refused(third)
        # Another address has its own count.
        with WireClient(server.address, source_ip="127.0.0.3") as other:
            assert_served(other)
            # The refusal did not take a slot; a departure frees one.
            first.close()
            wait_until(lambda: server.connection_count == 2, what="o servidor notar o close")
            with WireClient(server.address, source_ip="127.0.0.2") as again:
                assert_served(again)
            assert_served(second)
        second.close()


def test_max_por_ip_zero_means_no_limit():
    count = servidor.ServerConfig().max_per_ip + 6  # more than the default allows
    with running_server(max_per_ip=0) as server:
        clients = [WireClient(server.address, source_ip="127.0.0.4") for _ in range(count)]
        try:
            for client in clients:
                assert_served(client)
        finally:
            for client in clients:
                client.close()


def test_max_clientes_refuses_past_the_total_and_recovers():
    with running_server(max_clients=2, max_per_ip=0) as server:
        first = WireClient(server.address, source_ip="127.0.0.2")
        second = WireClient(server.address, source_ip="127.0.0.3")
        assert_served(first)
        assert_served(second)
        with WireClient(server.address, source_ip="127.0.0.5") as third:
            assert_refused(third)
        second.close()
        wait_until(lambda: server.connection_count == 1, what="o servidor notar o close")
        with WireClient(server.address, source_ip="127.0.0.5") as fourth:
            assert_served(fourth)
        assert_served(first)
        first.close()


def test_refused_client_that_spoke_first_still_reads_lotado():
    """A client that sends REGISTRAR before reading still gets the LOTADO line."""
    with running_server(max_per_ip=1) as server, \
            WireClient(server.address, source_ip="127.0.0.2") as first:
        assert_served(first)
        for _ in range(10):
            with WireClient(server.address, source_ip="127.0.0.2") as eager:
                eager.send(b"REGISTRAR ana\nLISTAR\n")
                assert_refused(eager)


def test_refused_connection_does_not_disturb_a_registered_user():
    with running_server(max_per_ip=1) as server, \
            WireClient(server.address, source_ip="127.0.0.2") as ana:
        assert ana.request("REGISTRAR ana") == "OK"
        for _ in range(5):
            with WireClient(server.address, source_ip="127.0.0.2") as extra:
                assert_refused(extra)
        assert ana.request("RETORNAR ana").startswith("ENCONTRADO 127.0.0.2 ")


def test_connection_dropped_when_no_thread_can_be_started(monkeypatch):
    """Out of threads, the server refuses that one connection and keeps accepting."""
    real_start = threading.Thread.start
    failures = []

    def start_or_fail(thread: threading.Thread) -> None:
        if thread.name.startswith("conexao-") and not failures:
            failures.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    with running_server(max_per_ip=1) as server:
        monkeypatch.setattr(threading.Thread, "start", start_or_fail)
        with WireClient(server.address, source_ip="127.0.0.2") as doomed:
            assert doomed.expect_eof() == []
        monkeypatch.undo()
        assert failures
        # Its per-address slot was given back and the accept loop still runs.
        with WireClient(server.address, source_ip="127.0.0.2") as client:
            assert_served(client)
        assert server.connection_count <= 1


# --------------------------------------------------------------------------
# Request rate (LIMITE)


def test_request_over_the_rate_is_refused_and_not_carried_out():
    # Burst of 4 and a refill so slow it never matters within the test.
    with running_server(rate=0.001, burst=4) as server, \
            WireClient(server.address) as ana, WireClient(server.address) as bia:
        assert ana.request("REGISTRAR ana") == "OK"
        assert bia.request("REGISTRAR bia") == "OK"
        ana.send(b"ENVIAR bia m1\nENVIAR bia m2\nENVIAR bia m3\n"
                       b"ENVIAR bia m4\nREGISTRAR ana2\n")
        replies = [ana.read_line() for _ in range(5)]
        assert replies[:3] == ["OK", "OK", "OK"]
        assert replies[3].startswith("ERRO LIMITE ")
        assert replies[4].startswith("ERRO LIMITE ")
        # bia has used one token: the barrier PING is her second.
        assert bia.barrier() == ["MSG ana bia m1", "MSG ana bia m2", "MSG ana bia m3"]
        # The refused REGISTRAR was not carried out either (RETORNAR from bia, who has tokens).
        assert bia.request("RETORNAR ana2") == "NAO ENCONTRADO"


def test_rate_refills_over_time():
    with running_server(rate=50, burst=2) as server, WireClient(server.address) as ana:
        ana.send(b"PING 1\nPING 2\nPING 3\n")
        assert [ana.read_line() for _ in range(3)][:2] == ["PONG 1", "PONG 2"]
        # At 50 tokens/s a new one is due within 20 ms; a refused PING costs nothing.
        deadline = time.monotonic() + 2.0
        while (reply := ana.request("PING 4")) != "PONG 4":
            assert reply.startswith("ERRO LIMITE ") and time.monotonic() < deadline


def test_blank_lines_are_neither_answered_nor_counted():
    with running_server(rate=0.001, burst=2) as server, WireClient(server.address) as ana:
        ana.send(b"PING a\n\n   \r\n\n\n\nPING b\nPING c\n")
        assert ana.read_line() == "PONG a"
        assert ana.read_line() == "PONG b"
        assert ana.read_line().startswith("ERRO LIMITE ")


def test_rate_zero_disables_the_limit():
    with running_server(rate=0, burst=1) as server, WireClient(server.address) as ana:
        count = 2000
        ana.send(b"".join(b"PING %d\n" % i for i in range(count)))
        assert [ana.read_line() for _ in range(count)] == [f"PONG {i}" for i in range(count)]


def test_default_rate_lets_a_person_type_freely():
    """A generous default: a burst of 100 and 20 per second never gets in the way."""
    defaults = servidor.ServerConfig()
    assert defaults.rate >= 10 and defaults.burst >= 50
    with running_server() as server, WireClient(server.address) as ana:
        ana.send(b"".join(b"PING %d\n" % i for i in range(defaults.burst)))
        assert [ana.read_line() for _ in range(defaults.burst)] == [
            f"PONG {i}" for i in range(defaults.burst)]


# --------------------------------------------------------------------------
# The unregistered idle bound (TEMPO)

TEMPO = 0.3


def assert_cut_by_tempo(client: WireClient, started: float, tempo: float = TEMPO) -> None:
    lines = client.expect_eof(timeout=tempo + 3)
    elapsed = time.monotonic() - started
    assert len(lines) == 1 and lines[0].startswith("ERRO TEMPO "), lines
    assert tempo * 0.9 <= elapsed < tempo + 2.0, elapsed


def test_idle_unregistered_connection_gets_tempo_and_is_closed():
    with running_server(register_timeout=TEMPO) as server:
        started = time.monotonic()
        with WireClient(server.address) as idle:
            assert_cut_by_tempo(idle, started)
        wait_until(lambda: server.connection_count == 0)


def test_slow_loris_without_a_line_feed_is_cut_too():
    """Bytes trickling in, never a whole line, do not reset the clock."""
    with running_server(register_timeout=TEMPO) as server, \
            WireClient(server.address) as loris:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < TEMPO + 3:
            # The select timeout paces the trickle: one byte every 20 ms.
            readable, _, _ = select.select([loris.sock], [], [], 0.02)
            if readable:
                break
            try:
                loris.send(b"R")
            except OSError:
                break
            sent += 1
        assert sent > 3
        assert_cut_by_tempo(loris, started)


def test_complete_lines_restart_the_clock_and_registered_connections_stay():
    tempo = 0.6  # PINGs 0.1 s apart leave half a second of slack on a busy machine
    with running_server(register_timeout=tempo) as server, \
            WireClient(server.address) as ana, WireClient(server.address) as idle:
        started = time.monotonic()
        # Complete lines keep an unregistered connection open for two bounds.
        while time.monotonic() - started < 2 * tempo:
            assert ana.request("PING vivo") == "PONG vivo"
            ana.assert_silent(0.1)
        assert_cut_by_tempo(idle, started, tempo)
        assert ana.request("REGISTRAR ana") == "OK"
        # Registered: well past the bound, still served.
        ana.assert_silent(1.5 * tempo)
        assert ana.request("PING ainda") == "PONG ainda"
        # Cancelling the registration starts the clock again.
        assert ana.request("CANCELAR_REGISTRO") == "OK"
        assert_cut_by_tempo(ana, time.monotonic(), tempo)


def test_a_request_sent_in_time_is_not_cut_because_its_address_was_slowed():
    """The address's budget keeps the server from reading for a while; the request
    that arrived before the TEMPO deadline still counts."""
    with running_server(register_timeout=0.5, address_lines=20, address_lines_burst=5) \
            as server, WireClient(server.address, source_ip="127.0.0.7") as client:
        client.send(b"PING a\n" + b"\n" * 30)  # 31 lines: over a second of debt
        assert client.read_line() == "PONG a"
        client.send_line("REGISTRAR pontual")  # well within 0.5 s of the PING
        assert client.read_line(timeout=5) == "OK"


def test_tempo_zero_disables_the_bound():
    with running_server(register_timeout=0) as server, WireClient(server.address) as idle:
        idle.assert_silent(3 * TEMPO)
        assert idle.request("PING ok") == "PONG ok"


# --------------------------------------------------------------------------
# TCP keepalive


def test_keepalive_is_enabled_and_tuned_on_accepted_sockets():
    with running_server() as server, WireClient(server.address) as ana:
        assert ana.request("PING ok") == "PONG ok"
        (connection,) = wait_until(server.connections)
        sock = connection.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        if sys.platform != "linux":
            pytest.skip("os valores do keepalive são conferidos pelas opções do Linux")
        # Idle 60 s, then 5 probes 10 s apart: a dead peer is gone in under two minutes.
        # The options' numbers, not their names: under a simulated Windows or
        # macOS (tests/simulacao.py) the names are gone, and this checks that the
        # other platform's path really tuned the socket.
        linux_options = {"TCP_KEEPIDLE": 4, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6}
        wanted = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 5}
        if simulacao.active_mode() == "windows":
            del wanted["TCP_KEEPCNT"]  # Windows fixes the number of probes itself
        for name, value in wanted.items():
            assert sock.getsockopt(socket.IPPROTO_TCP, linux_options[name]) == value, name


# --------------------------------------------------------------------------
# Command-line options


def parse(*argv: str) -> servidor.ServerConfig:
    return servidor.config_from_args(servidor.build_parser().parse_args(list(argv)))


def test_cli_defaults_match_server_config_defaults():
    config, defaults = parse(), servidor.ServerConfig()
    assert config.port == 1998 and config.host == ""
    for field in ("max_clients", "max_per_ip", "rate", "burst", "register_timeout",
                  "max_line", "max_pending"):
        assert getattr(config, field) == getattr(defaults, field), field
    assert (defaults.max_per_ip, defaults.rate, defaults.burst, defaults.register_timeout) == (
        64, 20.0, 100, 60.0)
    assert config.tls_context is None


def test_cli_sets_every_abuse_limit():
    config = parse("--host", "127.0.0.1", "--port", "0", "--max-clientes", "7",
                   "--max-por-ip", "3", "--taxa", "2.5", "--rajada", "9",
                   "--tempo-registro", "0.75", "--max-linha", "512", "--max-fila", "4096")
    assert (config.host, config.port, config.max_clients, config.max_per_ip) == (
        "127.0.0.1", 0, 7, 3)
    assert (config.rate, config.burst, config.register_timeout) == (2.5, 9, 0.75)
    assert (config.max_line, config.max_pending) == (512, 4096)


def test_cli_zero_disables_each_limit():
    config = parse("--max-clientes", "0", "--max-por-ip", "0", "--taxa", "0",
                   "--tempo-registro", "0")
    assert (config.max_clients, config.max_per_ip, config.rate, config.register_timeout) == (
        0, 0, 0.0, 0.0)


@pytest.mark.parametrize("argv", [
    ["--max-por-ip", "-1"], ["--max-clientes", "-5"], ["--taxa", "-1"], ["--taxa", "nan"],
    ["--tempo-registro", "-0.5"], ["--tempo-registro", "inf"], ["--rajada", "0"],
    ["--port", "70000"], ["--port", "-1"], ["--max-linha", "1"], ["--max-por-ip", "dois"],
])
def test_cli_rejects_values_that_would_refuse_everybody(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        servidor.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_cli_tls_needs_both_files(tmp_path):
    with pytest.raises(SystemExit, match="--tls-cert e --tls-key"):
        parse("--tls-cert", str(tmp_path / "c.pem"))
    with pytest.raises(SystemExit, match="--tls-cert e --tls-key"):
        parse("--tls-key", str(tmp_path / "k.pem"))


def test_cli_help_documents_each_limit_with_its_default():
    text = " ".join(servidor.build_parser().format_help().split())
    for option in ("--max-clientes", "--max-por-ip", "--taxa", "--tempo-registro"):
        assert option in text
    assert text.count("0 = sem limite") >= 4
    assert "(padrão: 64)" in text and "(padrão: 20)" in text and "(padrão: 100)" in text
    assert "(padrão: 60)" in text


# --------------------------------------------------------------------------
# limites.TokenBucket: the one rate limiter (server, discovery, client)


def test_token_bucket_lets_a_burst_through_then_the_rate():
    bucket = limites.TokenBucket(rate=10, burst=3, now=100.0)
    assert [bucket.take(now=100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(now=100.05) is False  # half a token refilled
    assert bucket.take(now=100.11) is True
    assert bucket.full(now=100.0 + 10) is True  # refills, but never past the burst
    assert bucket.level(now=1000.0) == 3


def test_token_bucket_charge_goes_into_debt_and_wait_says_how_long():
    bucket = limites.TokenBucket(rate=100, burst=10, now=0.0)
    bucket.charge(60, now=0.0)
    assert bucket.level(now=0.0) == -50
    assert bucket.wait(now=0.0) == pytest.approx(0.5, abs=0.01)
    assert bucket.wait(now=0.6) == 0.0
    assert bucket.take(5, now=0.6) is True  # 10 back after 0.6 s, capped at the burst


def test_token_bucket_wait_for_an_amount_and_a_zero_rate():
    bucket = limites.TokenBucket(rate=2, burst=1, now=0.0)
    assert bucket.take(now=0.0)
    assert bucket.wait(1.0, now=0.0) == pytest.approx(0.5, abs=0.01)
    assert limites.TokenBucket(rate=0, burst=1, now=0.0).wait(5.0, now=0.0) == float("inf")
