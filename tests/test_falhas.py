"""Faults: clients that vanish, stop reading or stop answering, and a server
killed with SIGKILL. In every case the others keep being served, and the
server (or its restart) is left in a clean state.
"""

from __future__ import annotations

import signal
import socket
import time

from cliente_apoio import connect, wait_event
from wire import UNLIMITED, ServerProcess, WireClient, running_server, wait_until

import cliente

PROMPT = 1.0
"""What "promptly" means here, in seconds: far above a loopback round trip."""


def registered(address: tuple[str, int], nick: str, *, subscribe: bool = False,
               rcvbuf: int | None = None) -> WireClient:
    client = WireClient(address, rcvbuf=rcvbuf)
    assert client.request(f"REGISTRAR {nick}") == "OK"
    if subscribe:
        assert client.request("ASSINAR") == "OK"
    return client


def assert_pair_works(sender: WireClient, recipient: WireClient, recipient_nick: str,
                      text: str) -> float:
    """A message goes through; returns the round trip, which must be prompt."""
    started = time.monotonic()
    assert sender.request(f"ENVIAR {recipient_nick} {text}") == "OK"
    line = recipient.read_line(timeout=PROMPT * 3)
    elapsed = time.monotonic() - started
    assert line is not None and line.endswith(f" {recipient_nick} {text}"), line
    assert elapsed < PROMPT, elapsed
    return elapsed


# --------------------------------------------------------------------------
# A client machine vanishes: TCP reset (SO_LINGER 0)


def test_reset_client_is_unregistered_and_subscribers_told():
    with running_server() as server, \
            registered(server.address, "carla") as carla, \
            registered(server.address, "ana", subscribe=True) as ana:
        bia = registered(server.address, "bia")
        assert ana.read_line() == "ENTROU bia"
        bia.reset()
        assert ana.read_line() == "SAIU bia"
        assert carla.request("RETORNAR bia") == "NAO ENCONTRADO"
        assert carla.request("ENVIAR bia oi").startswith("ERRO NAO_ENCONTRADO ")
        assert_pair_works(carla, ana, "ana", "segue tudo bem")
        wait_until(lambda: server.connection_count == 2)
        # The nickname is free again at once.
        with registered(server.address, "Bia"):
            assert ana.read_line() == "ENTROU Bia"


def test_reset_while_the_server_has_output_queued_for_it():
    with running_server(**UNLIMITED, max_pending=64 * 1024 * 1024) as server, \
            registered(server.address, "carla") as carla, \
            registered(server.address, "ana", subscribe=True) as ana:
        bia = registered(server.address, "bia", rcvbuf=4096)
        assert ana.read_line() == "ENTROU bia"
        # bia never reads: the kernel buffers fill and the server queues the rest.
        text = "x" * 4000
        carla.send(f"ENVIAR bia {text}\n".encode() * 2000)
        assert [carla.read_line() for _ in range(2000)] == ["OK"] * 2000
        (connection,) = [c for c in server.connections() if c.nick == "bia"]
        assert connection.outbox.pending > 0
        bia.reset()
        assert ana.read_line() == "SAIU bia"
        assert_pair_works(carla, ana, "ana", "depois do reset")
        wait_until(lambda: server.connection_count == 2)


def test_half_closed_client_still_gets_its_replies():
    """A client that sends its requests and shuts its side down gets every reply, then EOF."""
    with running_server() as server, registered(server.address, "ana", subscribe=True) as ana, \
            WireClient(server.address) as bia:
        bia.send(b"REGISTRAR bia\nLISTAR\nENVIAR ana tchau\n")
        bia.sock.shutdown(socket.SHUT_WR)
        lines = bia.expect_eof()
        assert lines[0] == "OK" and lines[1] == "USUARIOS 2" and lines[-1] == "OK", lines
        assert [ana.read_line() for _ in range(3)] == ["ENTROU bia", "MSG bia ana tchau",
                                                       "SAIU bia"]


# --------------------------------------------------------------------------
# A peer that stops reading


def test_peer_that_stops_reading_does_not_slow_anybody_else():
    with running_server(**UNLIMITED, max_pending=256 * 1024, stall_timeout=1.0) as server, \
            registered(server.address, "carla") as carla, \
            registered(server.address, "dani") as dani, \
            registered(server.address, "ana", subscribe=True) as ana:
        bia = registered(server.address, "bia", rcvbuf=4096)
        assert ana.read_line() == "ENTROU bia"
        try:
            text = "y" * 4000
            replies = []
            # Flood bia past the kernel's buffers (the server's send buffer may grow
            # to 4 MiB) and the 256 KiB bound, checking between rounds of 200 KB
            # that carla and dani are still served promptly.
            for _ in range(60):
                carla.send(f"ENVIAR bia {text}\n".encode() * 50)
                replies += [carla.read_line() for _ in range(50)]
                if replies[-1] != "OK":
                    break
                assert_pair_works(dani, carla, "carla", "ainda rápido?")
        finally:
            bia.close()
        refused = [reply for reply in replies if reply != "OK"]
        assert refused and refused[0].startswith("ERRO DESTINATARIO_LENTO "), replies[-3:]
        assert ana.read_line() == "SAIU bia"
        assert_pair_works(carla, dani, "dani", "bia saiu")
        wait_until(lambda: server.connection_count == 3)


# --------------------------------------------------------------------------
# A peer that stops answering at the TCP level


def test_peer_whose_window_stays_shut_is_dropped_by_the_send_timeout():
    """Loopback cannot lose packets, but a zero receive window looks the same to the
    sender: its writes stop making progress. The send timeout drops that peer, even
    though its queue never reaches the output bound."""
    send_timeout = 0.5
    with running_server(**UNLIMITED, send_timeout=send_timeout, max_pending=64 * 1024 * 1024) \
            as server, \
            registered(server.address, "carla") as carla, \
            registered(server.address, "ana", subscribe=True) as ana:
        bia = registered(server.address, "bia", rcvbuf=4096)
        assert ana.read_line() == "ENTROU bia"
        try:
            # Several MiB: far beyond what the kernel buffers take, far below max_pending.
            text = "z" * 4000
            carla.send(f"ENVIAR bia {text}\n".encode() * 2000)
            replies = [carla.read_line() for _ in range(2000)]
            # Once bia is dropped, the rest find nobody: nothing else may happen.
            assert replies[0] == "OK"
            assert all(reply == "OK" or reply.startswith("ERRO NAO_ENCONTRADO ")
                       for reply in replies), {reply[:30] for reply in replies}
            started = time.monotonic()
            assert ana.read_line(timeout=send_timeout + 5) == "SAIU bia"
            assert time.monotonic() - started < send_timeout + 3
        finally:
            bia.close()
        assert carla.request("ENVIAR bia oi").startswith("ERRO NAO_ENCONTRADO ")
        assert_pair_works(carla, ana, "ana", "sem bia")


# --------------------------------------------------------------------------
# The server killed with SIGKILL


def test_server_killed_with_sigkill_then_restarted_on_the_same_port():
    with ServerProcess() as server:
        clients = [registered(server.address, f"u{i}", subscribe=i == 0) for i in range(5)]
        idle = WireClient(server.address)
        assert idle.request("PING ok") == "PONG ok"
        clients[1].send(b"ENVIAR u2 " + b"k" * 1000 + b"\n")  # traffic in flight
        port = server.port
        started = time.monotonic()
        server.proc.send_signal(signal.SIGKILL)
        assert server.proc.wait(5.0) == -signal.SIGKILL
        for client in [*clients, idle]:
            client.expect_eof(timeout=PROMPT * 2)  # EOF or reset, whatever was pending
            client.close()
        assert time.monotonic() - started < PROMPT * 2

    # Nothing was kept: the restarted server on the same port starts empty.
    with ServerProcess(port=port) as again:
        assert again.port == port
        with registered(again.address, "u0") as u0:
            assert u0.request("LISTAR") == "USUARIOS 1"
            assert u0.read_line().startswith("USUARIO u0 127.0.0.1 ")
            assert u0.read_line() == "END"
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(3.0) == 0


def test_client_sessions_report_a_killed_server_and_reconnect_once_it_is_back():
    """What a user of ``cliente.py`` sees: the loss, then one click to come back."""

    with ServerProcess() as server:
        port = server.port
        ana = connect(server.address, "ana")
        bruno = connect(server.address, "bruno")
        server.proc.send_signal(signal.SIGKILL)
        assert server.proc.wait(5.0) == -signal.SIGKILL
        for session in (ana, bruno):
            lost = wait_event(session, cliente.Disconnected, timeout=PROMPT * 3)
            assert not lost.by_user
            assert lost.message  # a sentence for the status bar, not a traceback
            assert not session.connected
            session.close()

    with ServerProcess(port=port) as again:
        ana = connect(again.address, "ana")
        bruno = connect(again.address, "bruno")
        try:
            ana.send_message("bruno", "voltei")
            reply = wait_event(ana, lambda e: isinstance(e, cliente.Reply)
                               and isinstance(e.request, cliente.protocolo.Send))
            assert isinstance(reply.result, cliente.protocolo.OkMessage)  # version 2
            message = wait_event(bruno, cliente.protocolo.Message)
            assert (message.sender, message.text) == ("ana", "voltei")
        finally:
            ana.close()
            bruno.close()
