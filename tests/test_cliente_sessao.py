"""The client's network session (``sessao.ChatSession``), headless, against scripted servers.

The scripted servers play what the real one never does on purpose: a server
that restarts on cue, freezes, floods, or breaks the contract (issue 8, item
13). The session against the real server is in ``test_cliente_integracao``.
No display is needed. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import simulacao
from cliente_apoio import ScriptedServer, connect, drain, is_reply_to, msg_line, wait_event
from wire import HOST, TIMEOUT, free_port, make_certificate, wait_until

import protocolo
import rede
import sessao
from protocolo import ErrorCode, Message
from sessao import (
    ChatSession,
    Connected,
    ConnectError,
    ConnectFailed,
    Disconnected,
    HistoryPage,
    Lost,
    NotConnectedError,
    Reconnecting,
    Reply,
)

FAST = {"reconnect_delays": (0.05,)}
"""Session options for tests that reconnect: no real back-off wait."""


@pytest.fixture
def fakes():
    """``fakes(script, **options)`` makes a ``ScriptedServer``; all are closed at the end."""
    made: list[ScriptedServer] = []

    def make(script, **options):
        fake = ScriptedServer(script, **options)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def sessions():
    """``open(address, nick, **options)``: connected sessions, closed and joined at the end."""
    made: list[ChatSession] = []

    def open_session(address, nick, **options):
        options.setdefault("close_timeout", 0.3)  # most scripts never answer SAIR
        session = connect(address, nick, **options)
        made.append(session)
        return session

    yield open_session
    for session in made:
        session.close()
        assert session.thread is None or not session.thread.is_alive()


def serve_until_released(fake, conn, nick="eu", handshake=True, **options):
    """Handshake, then answer PINGs (and RECEBIDO, ENTRAR, DEIXAR) until the test is over."""
    if handshake:
        fake.handshake(conn, nick, **options)
    while not fake.release.is_set():
        try:
            line = fake.read_line(conn, 0.1)
        except TimeoutError:
            continue
        except EOFError:
            return
        if line.startswith("PING"):
            conn.sendall(protocolo.format_pong(line[5:]))
        elif line.startswith(("RECEBIDO", "ENTRAR", "DEIXAR")):
            conn.sendall(b"OK\n")
        elif line == "SAIR":
            conn.sendall(b"OK\n")
            return


# --------------------------------------------------------------------------
# Connecting


def test_connect_speaks_version_2_registers_subscribes_lists_and_joins_geral(fakes):
    fake = fakes(lambda f, c: serve_until_released(f, c, "ana", users=("ana", "bia")))
    session = ChatSession(connect_timeout=TIMEOUT)
    try:
        session.connect(*fake.address, "ana")
        assert session.connected and not session.account
        assert wait_event(session, object) == Connected("ana", HOST, fake.address[1], False)
        listed = wait_event(session, object)
        assert listed.request == protocolo.ListUsers()
        assert listed.result.nicks == ["ana", "bia"]
        joined = wait_event(session, object)
        assert (joined.request, joined.result) == (protocolo.Join("#geral"), protocolo.Ok())
        assert session.rooms == ["#geral"]
        assert fake.lines[:5] == ["OLA 2", "REGISTRAR ana", "ASSINAR", "LISTAR", "ENTRAR #geral"]
    finally:
        session.close()
    assert fake.lines[-1] == "SAIR"


def test_a_password_makes_the_registration_an_account(fakes, sessions):
    fake = fakes(lambda f, c: serve_until_released(f, c, "ana", password="segredo1"))
    session = ChatSession(connect_timeout=TIMEOUT)
    try:
        session.connect(*fake.address, "ana", password="segredo1")
        event = wait_event(session, Connected)
        assert event.account and session.account
    finally:
        session.close()


@pytest.mark.parametrize(("code", "field", "expected"), [
    (ErrorCode.APELIDO_EM_USO, "apelido", "O apelido “ana” já está em uso"),
    (ErrorCode.APELIDO_INVALIDO, "apelido", "Apelido inválido"),
    (ErrorCode.APELIDO_RESERVADO, "senha", "tem conta aqui: informe a senha"),
    (ErrorCode.SENHA_INCORRETA, "senha", "Senha incorreta"),
    (ErrorCode.SEM_CONTA, "senha", "Este servidor não guarda contas; entre sem senha"),
    (ErrorCode.LIMITE, "servidor", "Aguarde um minuto"),
])
def test_a_refused_registration_names_the_field_in_portuguese(fakes, code, field, expected):
    def refuse(fake, conn):
        fake.expect(conn, "OLA 2")
        conn.sendall(b"OK\n")
        fake.read_line(conn)
        conn.sendall(protocolo.format_error(code, "recusado"))
        fake.wait_released()

    fake = fakes(refuse)
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError, match=expected):
        session.connect(*fake.address, "ana", password="segredo1")
    failed = wait_event(session, ConnectFailed)
    assert failed.field == field and expected in failed.message
    wait_until(lambda: not session.thread.is_alive(), TIMEOUT)
    assert not session.connected


def test_a_version_1_server_is_refused_with_a_clear_reason(fakes):
    def old_server(fake, conn):
        fake.expect(conn, "OLA 2")
        conn.sendall(b"ERRO COMANDO_DESCONHECIDO comando desconhecido: OLA\n")
        fake.wait_released()

    fake = fakes(old_server)
    with pytest.raises(ConnectError, match="não fala a versão 2 do protocolo"):
        ChatSession(connect_timeout=TIMEOUT).connect(*fake.address, "ana")


def test_connect_by_host_name_and_over_ipv6(fakes, sessions):
    fake = fakes(serve_until_released)
    session = sessions(("localhost", fake.address[1]), "eu")
    assert session.address == f"localhost:{fake.address[1]}"
    if not socket.has_ipv6:
        return
    try:
        fake6 = fakes(serve_until_released, host="::1")
    except OSError:
        return  # no IPv6 on this machine's loopback
    session6 = sessions(("::1", fake6.address[1]), "eu")
    assert session6.connected
    assert session6.address == f"[::1]:{fake6.address[1]}"


def test_connection_refused_is_a_clear_error_and_names_the_server_field():
    port = free_port()
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError, match=f"Conexão recusada por 127.0.0.1:{port}"):
        session.connect("127.0.0.1", port, "ana")
    assert wait_event(session, ConnectFailed).field == "servidor"


def test_unknown_host_is_a_clear_error():
    with pytest.raises(ConnectError, match="não encontrado"):
        ChatSession(connect_timeout=TIMEOUT).connect("servidor-que-nao-existe.invalid",
                                                     1998, "ana")


def test_server_that_never_answers_registration_times_out(fakes):
    fake = fakes(lambda f, c: f.wait_released())
    session = ChatSession(connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectError, match="não respondeu ao registro"):
        session.connect(*fake.address, "eu")
    assert time.monotonic() - started < 4.0  # the fake server would wait 15 s
    wait_until(lambda: not session.thread.is_alive(), TIMEOUT)


def test_a_session_connects_only_once(fakes, sessions):
    fake = fakes(serve_until_released)
    session = sessions(fake.address, "eu")
    with pytest.raises(RuntimeError):
        session.start(*fake.address, "eu2")


# --------------------------------------------------------------------------
# Messages, receipts, history


def test_send_gets_the_stored_id_and_time(fakes, sessions):
    def store(fake, conn):
        fake.handshake(conn)
        fake.expect(conn, "ENVIAR ana  olá, João! 日本語\tcom tab 👍🏽 ")
        conn.sendall(protocolo.format_ok_message(41, 1_764_511_387_123))
        fake.expect(conn, "ENVIAR #geral oi")
        conn.sendall(protocolo.format_error(ErrorCode.NAO_MEMBRO, "não é membro"))
        fake.wait_released()

    fake = fakes(store)
    session = sessions(fake.address, "eu")
    first = session.send_message("ana", " olá, João! 日本語\tcom tab 👍🏽 ")
    second = session.send_message("#geral", "oi")
    assert first.wait(TIMEOUT) == protocolo.OkMessage(41, 1_764_511_387_123)
    reply = wait_event(session, is_reply_to(protocolo.Send))
    assert (reply.result, reply.serial) == (first.result, first.serial)
    assert second.wait(TIMEOUT).code is ErrorCode.NAO_MEMBRO
    assert "Você não participa de #geral" in sessao.describe_send_error(second.result, "#geral")


@pytest.mark.parametrize("text", ["", "   ", "a\nb", "direção\u202etrocada", "x" * 5000])
def test_a_text_the_wire_cannot_carry_is_refused_before_sending(fakes, sessions, text):
    fake = fakes(serve_until_released)
    session = sessions(fake.address, "eu")
    with pytest.raises(ValueError):
        session.send_message("ana", text)


def test_pushes_are_events_and_repeated_ids_are_dropped(fakes, sessions):
    def pushes(fake, conn):
        fake.handshake(conn, password="segredo1")
        conn.sendall(msg_line(5, "ana", "eu", "oi") + msg_line(5, "ana", "eu", "oi")
                     + msg_line(6, "bia", "#geral", "bom dia")
                     + msg_line(6, "bia", "#geral", "bom dia")
                     + b"ENTROU carla\nSAIU #geral bia\nENTREGUE 3 ana\n"
                     + msg_line(7, "ana", "eu", "tchau"))
        fake.wait_released()

    fake = fakes(pushes)
    session = sessions(fake.address, "eu", password="segredo1")
    seen = []
    while len(seen) < 6:
        event = wait_event(session, lambda e: not isinstance(e, Reply))
        seen.append(event)
    assert seen == [
        Message("ana", "eu", "oi", 5, 1_764_511_387_123),
        Message("bia", "#geral", "bom dia", 6, 1_764_511_387_123),
        protocolo.Joined("carla"), protocolo.Left("bia", "#geral"), protocolo.Delivered(3, "ana"),
        Message("ana", "eu", "tchau", 7, 1_764_511_387_123)]
    assert drain(session) == []


def test_recebido_is_batched_sent_with_the_highest_id_taken_and_again_on_close(fakes):
    done = threading.Event()

    def count(fake, conn):
        fake.handshake(conn, password="segredo1")
        for i in range(1, 201):
            conn.sendall(msg_line(i, "ana", "eu", f"m{i}") + msg_line(1000 + i, "bia", "#geral",
                                                                       f"sala {i}"))
        while True:
            line = fake.read_line(conn)
            if line == "SAIR":
                conn.sendall(b"OK\n")
                done.set()
                return
            conn.sendall(b"OK\n")

    fake = fakes(count)
    session = connect(fake.address, "eu", password="segredo1", received_interval=0.2)
    started = time.monotonic()
    taken = 0
    while taken < 200:  # a reader that takes its time
        event = wait_event(session, Message)
        if event.target == "eu":
            taken += 1
            if taken % 50 == 0:
                time.sleep(0.1)  # the reader is busy elsewhere
    wait_until(lambda: "RECEBIDO 200" in fake.lines, TIMEOUT)
    elapsed = time.monotonic() - started
    acks = [line for line in fake.lines if line.startswith("RECEBIDO")]
    assert len(acks) <= elapsed / 0.2 + 2  # batched, not one per message
    ids = [int(line.split()[1]) for line in acks]
    assert ids == sorted(ids) and max(ids) == 200  # room ids (1001+) never acknowledged
    session.close()
    assert done.wait(TIMEOUT)
    assert fake.lines[-2:] == ["RECEBIDO 200", "SAIR"] or acks[-1] == "RECEBIDO 200"


def test_without_an_account_recebido_is_never_sent(fakes):
    def push(fake, conn):
        fake.handshake(conn)
        conn.sendall(msg_line(9, "ana", "eu", "oi"))
        fake.wait_released()

    fake = fakes(push)
    session = connect(fake.address, "eu", received_interval=0.05, close_timeout=0.3)
    assert wait_event(session, Message).message_id == 9
    session.close()
    assert not any(line.startswith("RECEBIDO") for line in fake.lines)


def test_history_pages_are_assembled_and_capped(fakes, sessions):
    items = [(i, 1_764_511_387_000 + i, "ana", "#geral", f"linha {i}") for i in range(90, 100)]

    def history(fake, conn):
        fake.handshake(conn)
        fake.expect(conn, "HISTORICO #geral")
        conn.sendall(protocolo.format_history(items))
        fake.expect(conn, "HISTORICO #geral 90 5")
        conn.sendall(protocolo.format_history(items[:3]))  # fewer than asked: fine
        fake.expect(conn, "HISTORICO #geral 87 5")
        conn.sendall(protocolo.format_history(items[:6]))  # more than asked: a violation
        fake.wait_released()

    fake = fakes(history)
    session = sessions(fake.address, "eu", reconnect_delays=())
    page = session.history("#geral").wait(TIMEOUT)
    assert isinstance(page, HistoryPage)
    assert [item.message_id for item in page.items] == list(range(90, 100))
    assert page.items[0] == protocolo.HistoryItem(90, 1_764_511_387_090, "ana", "#geral",
                                                  "linha 90")
    assert len(session.history("#geral", 90, 5).wait(TIMEOUT).items) == 3
    assert isinstance(session.history("#geral", 87, 5).wait(TIMEOUT), Lost)
    lost = wait_event(session, Disconnected)
    assert "violou o protocolo" in lost.message and lost.retry_in is None


# --------------------------------------------------------------------------
# A hostile or broken server (issue 8, item 13)


def test_an_endless_listar_is_a_protocol_violation(fakes):
    def endless(fake, conn):
        fake.handshake(conn)
        fake.expect(conn, "LISTAR")
        conn.sendall(b"USUARIOS 1\n")
        with contextlib.suppress(OSError):
            for i in range(200_000):
                conn.sendall(f"USUARIO u{i} 127.0.0.1 5000\n".encode() * 50)

    fake = fakes(endless)
    session = connect(fake.address, "eu", reconnect_delays=())
    result = session.list_users().wait(TIMEOUT)
    assert isinstance(result, Lost)
    event = wait_event(session, Disconnected)
    assert event.message == ("O servidor violou o protocolo (o servidor mandou mais itens do "
                             "que os 1 que anunciou): conexão encerrada.")
    session.close()


@pytest.mark.parametrize(("reply", "reason"), [
    (b"USUARIOS 99999999\n", "anunciou uma lista de 99999999 itens"),
    (b"USUARIOS 3\nUSUARIO a 127.0.0.1 5\nEND\n", "anunciou 3 itens e mandou 1"),
    (b"USUARIOS 1\nPONG\n", "resposta de várias linhas interrompida"),
    (b"PONG x\n", "resposta Pong para ListUsers"),
])
def test_replies_that_break_the_contract_end_the_connection(fakes, reply, reason):
    def broken(fake, conn):
        fake.handshake(conn)
        fake.expect(conn, "LISTAR")
        conn.sendall(reply)
        fake.wait_released()

    fake = fakes(broken)
    session = connect(fake.address, "eu", reconnect_delays=())
    session.list_users()
    assert reason in wait_event(session, Disconnected).message
    session.close()


def test_garbage_is_tolerated_up_to_a_bound(fakes, sessions):
    def garbage(fake, conn):
        fake.handshake(conn)
        conn.sendall(b"LIXO qualquer\n\xff\xfe invalido\n" + b"y" * 20000 + b"\n"
                     + b"USUARIO x 1.2.3.4 5\nEND\n" + msg_line(1, "ana", "eu", "oi"))
        fake.expect(conn, "PING z")
        conn.sendall(b"PONG z\n")
        conn.sendall(b"LIXO\n" * (sessao.MAX_UNREADABLE_LINES + 10))
        fake.wait_released()

    fake = fakes(garbage)
    session = sessions(fake.address, "eu", reconnect_delays=())
    assert session.ping("z").wait(TIMEOUT) == protocolo.Pong("z")
    assert wait_event(session, Message).text == "oi"
    assert "mais de 1000 linhas ilegíveis" in wait_event(session, Disconnected).message


def test_a_flood_of_pushes_is_held_back_by_the_reader_not_by_memory(fakes):
    """Back-pressure: a reader that stops means the session stops reading the socket."""
    total = 60_000
    padding = "x" * 250  # 17 MB in all: more than the kernel buffers hold
    sent = threading.Event()

    def flood(fake, conn):
        fake.handshake(conn)
        burst = b"".join(msg_line(i, "ana", "eu", f"mensagem {i} {padding}")
                         for i in range(1, total + 1))
        conn.sendall(burst)
        sent.set()
        fake.wait_released()

    fake = fakes(flood)
    session = connect(fake.address, "eu", events_high_water=1000)
    # Nobody reads: the queue stops near its bound and the server cannot send it all.
    wait_until(lambda: session.events.qsize() >= 1000, TIMEOUT)
    assert not sent.wait(0.5)
    bound = 1000 + sessao.RECV_CHUNK // len(msg_line(1, "ana", "eu", f"mensagem 1 {padding}"))
    assert session.events.qsize() <= bound
    # The reader comes back: everything arrives, in order, still within the bound.
    texts = [wait_event(session, Message).text for _ in range(total)]
    assert texts == [f"mensagem {i} {padding}" for i in range(1, total + 1)]
    assert sent.wait(TIMEOUT)
    assert session.events.most_waiting <= bound
    session.close()


def test_a_frozen_server_is_noticed_and_unanswered_messages_are_reported_unsent(fakes):
    """The server takes the bytes but never answers: PING after idle, then the loss."""
    def frozen(fake, conn):
        fake.handshake(conn)
        fake.wait_released()  # reads nothing more, answers nothing

    fake = fakes(frozen)
    session = connect(fake.address, "eu", idle_ping=0.4, ping_timeout=0.4, reconnect_delays=())
    pendings = [session.send_message("ana", f"mensagem {i}") for i in range(5)]
    started = time.monotonic()
    lost = wait_event(session, Disconnected, timeout=TIMEOUT)
    assert time.monotonic() - started < 0.4 + 0.4 + 1.0
    assert "O servidor parou de responder" in lost.message
    assert all(isinstance(p.wait(TIMEOUT), Lost) for p in pendings)
    assert sessao.LIVENESS_BOUND_S < 60


def test_a_server_that_stops_reading_makes_requests_fail_fast_never_block(fakes):
    def stop_reading(fake, conn):
        fake.handshake(conn)
        fake.wait_released()

    fake = fakes(stop_reading)
    session = connect(fake.address, "eu", send_timeout=0.5, max_outgoing=256 * 1024,
                      requests_per_s=100_000, request_burst=100_000, reconnect_delays=(),
                      idle_ping=60)
    text = "x" * 4000
    slowest, refused = 0.0, 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            session.send_message("bruno", text)
        except sessao.SendQueueFullError:
            refused += 1
            time.sleep(0.01)  # let the kernel buffers fill
        except NotConnectedError:
            break  # the session gave up on the stalled server
        slowest = max(slowest, time.monotonic() - started)
    assert refused > 0
    assert slowest < 1.0  # a blocking send would hang until the deadline
    assert "parou de receber" in wait_event(session, Disconnected).message
    session.close()


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage é só do Unix")
@pytest.mark.parametrize("attack", ["listar", "msg"])
def test_memory_stays_bounded_against_a_hostile_server(fakes, attack, tmp_path):
    """The session in its own process: peak RSS grows less than 100 MiB (issue 8, item 13)."""
    done = threading.Event()

    def hostile(fake, conn):
        fake.handshake(conn)
        with contextlib.suppress(OSError):
            if attack == "listar":
                fake.expect(conn, "LISTAR")
                conn.sendall(b"USUARIOS 1\n")
                chunk = b"".join(f"USUARIO u{i} 127.0.0.1 5000\n".encode() for i in range(2000))
                while not done.is_set():
                    conn.sendall(chunk)
            else:
                for start in range(1, 200_001, 2000):  # 200,000 messages, 70 MB
                    conn.sendall(b"".join(msg_line(i, "x" * 30, "eu", "y" * 300)
                                          for i in range(start, start + 2000)))
                fake.wait_released()

    fake = fakes(hostile)
    code = textwrap.dedent(f"""
        import resource, sys, time
        sys.path.insert(0, {str(Path(sessao.__file__).parent)!r})
        import sessao, protocolo
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = sessao.ChatSession(connect_timeout=5, reconnect_delays=())
        s.connect("127.0.0.1", {fake.address[1]}, "eu")
        attack = {attack!r}
        if attack == "listar":
            s.list_users()
        got, end = 0, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                event = s.events.get(timeout=1)
            except Exception:
                continue
            if isinstance(event, protocolo.Message):
                got += 1
                if got % 20000 == 0:
                    time.sleep(0.2)  # a reader that falls behind now and then
                if got == 200000:
                    break
            elif isinstance(event, sessao.Disconnected):
                end = event.message
                break
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, got, s.events.most_waiting, end)
        s.close()
    """)
    child = tmp_path / "cliente_hostil.py"
    child.write_text(code, encoding="utf-8")
    done_run = subprocess.run(simulacao.python_command(child), cwd=Path(sessao.__file__).parent,
                              capture_output=True, text=True, timeout=90)
    done.set()
    assert done_run.returncode == 0, done_run.stderr
    grown_mib, got, most_waiting, *end = done_run.stdout.split(maxsplit=3)
    print(f"\nservidor hostil ({attack}): +{grown_mib} MiB, {got} mensagens, "
          f"fila máxima {most_waiting}, fim: {end}")
    assert int(grown_mib) < 100
    if attack == "listar":
        assert "violou o protocolo" in end[0]
    else:
        assert int(got) == 200_000
        assert int(most_waiting) < sessao.EVENTS_HIGH_WATER + 200


# --------------------------------------------------------------------------
# Losing the server and coming back


def test_reconnect_rejoins_rooms_and_reports_unanswered_messages_unsent(fakes):
    def first_then_back(fake, conn):
        if fake.index == 0:
            fake.handshake(conn, password="segredo1")
            fake.expect(conn, "ENTRAR #redes")
            conn.sendall(b"OK\n")
            conn.sendall(msg_line(10, "ana", "eu", "antes"))
            while (line := fake.read_line(conn)) != "ENVIAR ana sem resposta":
                assert line == "RECEBIDO 10"
                conn.sendall(b"OK\n")
            return  # the server dies without answering
        fake.handshake(conn, password="segredo1", rooms=("#geral", "#redes"))
        # At least once: "antes" comes again (as if RECEBIDO had not reached the server).
        conn.sendall(msg_line(10, "ana", "eu", "antes") + msg_line(11, "ana", "eu", "depois"))
        serve_until_released(fake, conn, handshake=False)

    fake = fakes(first_then_back, connections=2)
    session = connect(fake.address, "eu", password="segredo1", **FAST)
    try:
        assert session.join("#redes").wait(TIMEOUT) == protocolo.Ok()
        assert wait_event(session, Message).text == "antes"
        unsent = session.send_message("ana", "sem resposta")
        skipped: list[object] = []
        back = wait_event(session, Connected, skipped=skipped)
        assert back.reconnected and back.account
        assert isinstance(unsent.wait(TIMEOUT), Lost)
        # First the message is reported unsent, then the loss, then the new attempt.
        lost = skipped[1]
        assert skipped == [Reply(protocolo.Send("ana", "sem resposta"), unsent.result,
                                 unsent.serial), lost, Reconnecting(1)]
        assert not lost.by_user and lost.retry_in is not None
        assert lost.message == "O servidor encerrou a conexão."
        assert wait_event(session, Message).text == "depois"  # "antes" was not repeated
        assert session.rooms == ["#geral", "#redes"]
    finally:
        session.close()
    assert fake.error is None


def test_back_off_grows_and_can_be_cancelled(fakes):
    fake = fakes(lambda f, c: f.handshake(c))  # one session, then the server is gone
    session = connect(fake.address, "eu", reconnect_delays=(0.05, 0.1, 0.2, 0.4))
    fake.close()
    delays = []
    while len(delays) < 4:
        event = wait_event(session, Disconnected)
        delays.append(event.retry_in)
        assert "Conexão recusada" in event.message or "encerrou" in event.message
    assert delays[0] < delays[1] < delays[2] < delays[3]
    session.cancel_reconnect()
    final = wait_event(session, lambda e: isinstance(e, Disconnected) and e.retry_in is None)
    assert final.by_user
    wait_until(lambda: not session.thread.is_alive(), TIMEOUT)


def test_reconnect_now_skips_the_wait(fakes):
    fake = fakes(lambda f, c: f.handshake(c) if f.index == 0 else serve_until_released(f, c),
                 connections=2)
    session = connect(fake.address, "eu", reconnect_delays=(30.0,))
    try:
        assert wait_event(session, Disconnected).retry_in >= 30.0
        started = time.monotonic()
        session.reconnect_now()
        assert wait_event(session, Connected).reconnected
        assert time.monotonic() - started < 3.0
    finally:
        session.close()


def test_a_nickname_still_in_use_is_retried_but_a_wrong_password_ends_it(fakes):
    def script(fake, conn):
        if fake.index == 0:
            fake.handshake(conn, password="segredo1")
            return
        fake.expect(conn, "OLA 2")
        conn.sendall(b"OK\n")
        fake.expect(conn, "REGISTRAR eu segredo1")
        code = ErrorCode.APELIDO_EM_USO if fake.index == 1 else ErrorCode.SENHA_INCORRETA
        conn.sendall(protocolo.format_error(code, "não"))
        if fake.index == 2:
            fake.wait_released()

    fake = fakes(script, connections=3)
    session = connect(fake.address, "eu", password="segredo1", **FAST)
    first = wait_event(session, Disconnected)
    assert first.retry_in is not None
    second = wait_event(session, Disconnected)
    assert "já está em uso" in second.message and second.retry_in is not None
    final = wait_event(session, Disconnected)
    assert "Senha incorreta" in final.message
    assert final.retry_in is None and not final.by_user
    wait_until(lambda: not session.thread.is_alive(), TIMEOUT)


# --------------------------------------------------------------------------
# Closing


def test_close_says_sair_and_joins_the_thread(fakes):
    fake = fakes(serve_until_released)
    session = connect(fake.address, "eu")
    session.close()
    assert not session.thread.is_alive()
    assert fake.lines[-1] == "SAIR"
    assert wait_event(session, Disconnected) == Disconnected("Desconectado.", True)
    session.close()  # idempotent
    with pytest.raises(NotConnectedError):
        session.ping()


def test_close_is_bounded_when_the_server_ignores_sair(fakes):
    fake = fakes(lambda f, c: (f.handshake(c), f.wait_released()))
    session = connect(fake.address, "eu", close_timeout=0.3)
    started = time.monotonic()
    session.close()
    assert time.monotonic() - started < 3.0  # the fake server would wait 15 s
    assert not session.thread.is_alive()


def test_close_without_connecting_and_closing_a_failed_session():
    ChatSession().close()
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError):
        session.connect("127.0.0.1", free_port(), "ana")
    session.close()
    assert not session.thread.is_alive()


# --------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    good = make_certificate(directory)
    other = make_certificate(directory, ("outro.exemplo",), stem="outro")
    return {"cert": good[0], "key": good[1], "other_cert": other[0], "other_key": other[1]}


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_tls_session_with_a_verified_certificate(fakes, certificates, sessions):
    context = server_context(certificates["cert"], certificates["key"])
    fake = fakes(serve_until_released, tls=context)
    session = sessions(fake.address, "eu", use_tls=True, tls_ca=certificates["cert"])
    assert session.tls and session.ping("t").wait(TIMEOUT) == protocolo.Pong("t")


def test_tls_problems_are_refused_in_portuguese(fakes, certificates, tmp_path):
    context = server_context(certificates["cert"], certificates["key"])
    fake = fakes(serve_until_released, tls=context, connections=3)
    with pytest.raises(ConnectError, match=r"Certificado TLS de .* rejeitado: .*autoassinado"):
        ChatSession(connect_timeout=TIMEOUT).connect(*fake.address, "eu", use_tls=True)
    other = server_context(certificates["other_cert"], certificates["other_key"])
    misnamed = fakes(serve_until_released, tls=other)
    with pytest.raises(ConnectError, match="não confere com o certificado"):
        ChatSession(connect_timeout=TIMEOUT).connect(
            *misnamed.address, "eu", use_tls=True, tls_ca=certificates["other_cert"])
    with pytest.raises(ConnectError, match="Arquivo de CA não encontrado"):
        ChatSession().connect(*fake.address, "eu", tls_ca=str(tmp_path / "nao-existe.pem"))
    junk = tmp_path / "lixo.pem"
    junk.write_text("isto não é um certificado\n")
    with pytest.raises(ConnectError, match="Arquivo de CA inválido"):
        ChatSession().connect(*fake.address, "eu", tls_ca=str(junk))


def test_plain_client_on_tls_server_and_tls_client_on_plain_server_get_hints(
        fakes, certificates):
    context = server_context(certificates["cert"], certificates["key"])
    tls_fake = fakes(lambda f, c: f.wait_released(), tls=context)
    with pytest.raises(ConnectError, match="exige TLS"):
        ChatSession(connect_timeout=TIMEOUT).connect(*tls_fake.address, "eu")
    def plain_server(fake, conn):
        conn.recv(4096)  # a ClientHello, read as a line of garbage
        conn.sendall(b"ERRO COMANDO_DESCONHECIDO comando desconhecido\n")
        fake.wait_released()

    plain = fakes(plain_server)
    with pytest.raises(ConnectError, match="O servidor usa TLS"):
        ChatSession(connect_timeout=TIMEOUT).connect(
            *plain.address, "eu", use_tls=True, tls_ca=certificates["cert"])


# --------------------------------------------------------------------------
# The event queue and the texts, alone


def test_event_queue_pauses_the_producer_and_wakes_it_when_drained():
    woken = []
    events = sessao.EventQueue(high_water=10, low_water=3)
    events.on_room = lambda: woken.append(True)
    for i in range(10):
        events.put(i)
    assert events.must_pause()
    assert events.take(5) == [0, 1, 2, 3, 4] and not woken
    assert events.must_pause()  # still paused until the low water mark
    assert events.get_nowait() == 5 and events.get_nowait() == 6
    assert woken == [True] and not events.must_pause()
    assert events.take(100) == [7, 8, 9]
    with pytest.raises(queue.Empty):
        events.get(timeout=0.01)


@pytest.mark.parametrize(("exc", "expected"), [
    (ConnectionRefusedError(111, "Connection refused"), "a conexão foi recusada"),
    (ConnectionResetError(104, "Connection reset by peer"), "interrompida pelo outro lado"),
    (OSError(getattr(os, "ENETUNREACH", 101), "Network is unreachable"),
     "a rede está inacessível"),
    (OSError(getattr(os, "EHOSTUNREACH", 113), "No route to host"),
     "computador do servidor está inacessível"),
    (OSError(99999, "Weird English text"), "erro de rede (código 99999)"),
])
def test_os_errors_are_translated_never_shown_in_english(exc, expected):
    text = sessao.describe_os_error(exc)
    assert expected in text
    assert exc.strerror not in text


def test_ipv6_addresses_are_shown_in_brackets():
    field, text = sessao.describe_connect_error(ConnectionRefusedError(111, "x"), "::1", 1998)
    assert field == "servidor" and "[::1]:1998" in text
    assert rede.parse_host_port("127.0.0.1:1998", 1) == ("127.0.0.1", 1998)
    assert rede.parse_host_port("[::1]:2000", 1998) == ("::1", 2000)
    assert rede.parse_host_port("::1", 1998) == ("::1", 1998)
    with pytest.raises(ValueError, match="porta inválida"):
        rede.parse_host_port("host:99999", 1998)


@pytest.mark.parametrize(("code", "expected"), [
    (ErrorCode.NAO_ENCONTRADO, "ana não está online e não tem conta"),
    (ErrorCode.DESTINATARIO_LENTO, "desconectado(a) pelo servidor"),
    (ErrorCode.LIMITE, "Muitas mensagens em pouco tempo"),
    (ErrorCode.ARMAZENAMENTO, "não conseguiu guardar"),
    (None, "O servidor recusou a mensagem: algo novo"),
])
def test_send_errors_read_as_plain_portuguese(code, expected):
    error = protocolo.Error(code, "algo novo", code.value if code else "NOVO")
    assert expected in sessao.describe_send_error(error, "ana")


def test_session_layer_works_without_tkinter(fakes, tmp_path):
    """The session must not need Tk: import it with tkinter made unimportable."""
    fake = fakes(serve_until_released)
    code = (
        "import sys; sys.modules['tkinter'] = None\n"
        f"sys.path.insert(0, {str(Path(sessao.__file__).parent)!r})\n"
        "import sessao, cliente\n"
        "s = sessao.ChatSession(connect_timeout=5)\n"
        f"s.connect('127.0.0.1', {fake.address[1]}, 'eu')\n"
        "print(s.ping('x').wait(5)); s.close()\n"
    )
    child = tmp_path / "sem_tk.py"
    child.write_text(code, encoding="utf-8")
    done = subprocess.run(simulacao.python_command(child), cwd=Path(sessao.__file__).parent,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Pong(token='x')"
