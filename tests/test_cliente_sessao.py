"""The client's session layer (``cliente.ChatSession``), headless, against a real server.

No display is needed: these tests never import Tk widgets. Every wait is
bounded (``wait_event`` and ``PendingReply.wait`` take timeouts).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cliente_apoio import ScriptedServer, connect, drain, wait_event
from wire import (
    TIMEOUT,
    UNLIMITED,
    WireClient,
    free_port,
    make_certificate,
    running_server,
    wait_until,
)

import cliente
import protocolo
import servidor
from cliente import (
    ChatSession,
    Connected,
    ConnectError,
    ConnectFailed,
    Disconnected,
    Lost,
    NotConnectedError,
    Reply,
    UserList,
)
from protocolo import ErrorCode, Joined, Left, Message


@pytest.fixture
def server():
    with running_server(**UNLIMITED) as srv:
        yield srv


@pytest.fixture
def sessions():
    """Sessions made through ``open(nick)`` are closed at the end, threads joined."""
    made: list[ChatSession] = []

    def open_session(address, nick, **options):
        session = connect(address, nick, **options)
        made.append(session)
        return session

    yield open_session
    for session in made:
        session.close()
        assert session.thread is None or not session.thread.is_alive()


def registered_nicks(server: servidor.Servidor) -> list[str]:
    return sorted(nick for nick, _, _ in server.registry.listing())


# --------------------------------------------------------------------------
# Connecting


def test_connect_registers_subscribes_and_lists(server):
    session = ChatSession(connect_timeout=TIMEOUT)
    try:
        session.connect(*server.address, "ana")
        assert session.connected
        first = wait_event(session, object)
        assert first == Connected("ana", server.address[0], server.address[1], False)
        assert wait_event(session, object) == Reply(protocolo.Subscribe(), protocolo.Ok())
        listed = wait_event(session, object)
        assert isinstance(listed, Reply) and isinstance(listed.result, UserList)
        assert listed.result.nicks == ["ana"]
        assert registered_nicks(server) == ["ana"]
    finally:
        session.close()


def test_connect_by_host_name(server, sessions):
    session = sessions(("localhost", server.address[1]), "ana")
    assert session.connected
    assert session.host == "localhost"


def test_connect_over_ipv6():
    if not socket.has_ipv6:
        pytest.skip("sem suporte a IPv6 neste Python")
    try:
        srv = servidor.Servidor(servidor.ServerConfig(host="::1", port=0))
        srv.start()
    except OSError as exc:
        pytest.skip(f"IPv6 indisponível nesta máquina: {exc}")
    try:
        session = connect(("::1", srv.address[1]), "ana")
        try:
            assert session.connected
            assert session.list_users().wait(TIMEOUT).nicks == ["ana"]
        finally:
            session.close()
    finally:
        srv.stop()


def test_nickname_taken_case_insensitively_is_a_clear_error(server, sessions):
    sessions(server.address, "Ana")
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError, match="“ana” já está em uso"):
        session.connect(*server.address, "ana")
    event = wait_event(session, object)
    assert isinstance(event, ConnectFailed) and "já está em uso" in event.message
    assert not session.connected
    wait_until(lambda: not session.thread.is_alive(), TIMEOUT)
    assert registered_nicks(server) == ["Ana"]


@pytest.mark.parametrize("nick", ["com espaço", "", "x" * 33, "a/b"])
def test_invalid_nickname_is_refused_before_touching_the_network(nick):
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError, match="Apelido inválido"):
        session.connect("127.0.0.1", 1, nick)
    session.close()


def test_connection_refused_is_a_clear_error():
    port = free_port()
    with pytest.raises(ConnectError, match=f"Conexão recusada por 127.0.0.1:{port}"):
        ChatSession(connect_timeout=TIMEOUT).connect("127.0.0.1", port, "ana")


def test_unknown_host_is_a_clear_error():
    with pytest.raises(ConnectError, match="não encontrado"):
        ChatSession(connect_timeout=TIMEOUT).connect("servidor-que-nao-existe.invalid",
                                                     1998, "ana")


def test_server_that_never_answers_registration_times_out():
    def silent(fake, conn):
        fake.release.wait(TIMEOUT)

    fake = ScriptedServer(silent)
    try:
        session = ChatSession(connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ConnectError, match="não respondeu ao registro"):
            session.connect(*fake.address, "eu")
        assert time.monotonic() - started < 4.0  # the fake server would wait 5 s
        wait_until(lambda: not session.thread.is_alive(), TIMEOUT)
    finally:
        fake.close()


def test_a_session_connects_only_once(server, sessions):
    session = sessions(server.address, "ana")
    with pytest.raises(RuntimeError):
        session.start(*server.address, "ana2")


# --------------------------------------------------------------------------
# Messages and presence


def test_send_and_receive_keeps_the_text_exactly(server, sessions):
    ana = sessions(server.address, "ana")
    bruno = sessions(server.address, "bruno")
    text = "  olá, João! ção 日本語\tcom tab  "
    assert ana.send_message("bruno", text).wait(TIMEOUT) == protocolo.Ok()
    assert wait_event(bruno, Message) == Message("ana", "bruno", text)


def test_send_to_missing_user_is_nao_encontrado(server, sessions):
    ana = sessions(server.address, "ana")
    result = ana.send_message("ninguem", "oi").wait(TIMEOUT)
    assert isinstance(result, protocolo.Error) and result.code is ErrorCode.NAO_ENCONTRADO
    reply = wait_event(ana, Reply)
    assert reply.request == protocolo.Send("ninguem", "oi") and reply.result == result
    assert "ninguem não está online" in cliente.describe_send_error(result, "ninguem")


def test_presence_joined_and_left(server, sessions):
    ana = sessions(server.address, "ana")
    bruno = sessions(server.address, "bruno")
    assert wait_event(ana, Joined) == Joined("bruno")
    bruno.close()
    assert wait_event(ana, Left) == Left("bruno")


def test_replies_are_matched_in_order_with_pushes_interleaved(server, sessions):
    """Pings with distinct tokens prove the matching; MSG/ENTROU/SAIU flow meanwhile."""
    ana = sessions(server.address, "ana")
    bruno = sessions(server.address, "bruno")
    wait_event(ana, Joined)
    count = 300

    def chatter():
        for i in range(count):
            bruno.send_message("ana", f"msg {i}")

    sender = threading.Thread(target=chatter)
    sender.start()
    pendings = []
    for i in range(count):
        pendings.append((i, ana.ping(f"t{i}")))
        if i % 50 == 0:
            pendings.append((None, ana.list_users()))
            pendings.append(("miss", ana.send_message("fantasma", "oi")))
            with WireClient(server.address) as extra:  # an ENTROU and a SAIU
                extra.register(f"extra{i}")
    sender.join(TIMEOUT)
    for tag, pending in pendings:
        result = pending.wait(TIMEOUT)
        if tag is None:
            assert isinstance(result, UserList) and {"ana", "bruno"} <= set(result.nicks)
        elif tag == "miss":
            assert isinstance(result, protocolo.Error)
            assert result.code is ErrorCode.NAO_ENCONTRADO
        else:
            assert result == protocolo.Pong(f"t{tag}")
    received = []
    while len(received) < count:
        received.append(wait_event(ana, Message).text)
    assert received == [f"msg {i}" for i in range(count)]


def test_ten_thousand_pushes_arrive_in_order(server, sessions):
    bruno = sessions(server.address, "bruno")
    lines = b"".join(f"ENVIAR bruno mensagem {i}\n".encode() for i in range(10_000))
    with WireClient(server.address) as flood:
        flood.register("flood")
        flood.send(lines)
        assert flood.read_lines(10_000, TIMEOUT) == ["OK"] * 10_000
    texts = [wait_event(bruno, Message).text for _ in range(10_000)]
    assert texts == [f"mensagem {i}" for i in range(10_000)]


# --------------------------------------------------------------------------
# Losing the server, reconnecting, closing


def test_loss_of_server_is_an_event_and_pending_requests_are_lost(server):
    session = connect(server.address, "ana")
    try:
        server.stop()
        event = wait_event(session, Disconnected)
        assert not event.by_user
        assert "encerrou a conexão" in event.message
        assert not session.connected
        wait_until(lambda: not session.thread.is_alive(), TIMEOUT)
        with pytest.raises(NotConnectedError):
            session.send_message("bruno", "oi")
    finally:
        session.close()


def test_pending_request_gets_lost_when_the_connection_drops():
    def drop_after_handshake(fake, conn):
        fake.handshake(conn)
        assert fake.read_line(conn) == "ENVIAR bruno oi"
        # Close without answering.

    fake = ScriptedServer(drop_after_handshake)
    try:
        session = connect(fake.address, "eu")
        pending = session.send_message("bruno", "oi")
        result = pending.wait(TIMEOUT)
        assert isinstance(result, Lost)
        assert wait_event(session, Reply).result == result
        assert "pode não ter sido entregue" in cliente.describe_send_error(result, "bruno")
        assert not wait_event(session, Disconnected).by_user
        session.close()
    finally:
        fake.close()
    assert fake.error is None


def test_reconnect_after_the_server_comes_back():
    with running_server(**UNLIMITED) as first:
        port = first.address[1]
        session = connect(first.address, "ana")
        first.stop()
        assert not wait_event(session, Disconnected).by_user
        session.close()
        with pytest.raises(ConnectError, match="Conexão recusada"):
            ChatSession(connect_timeout=TIMEOUT).connect("127.0.0.1", port, "ana")
    srv = servidor.Servidor(servidor.ServerConfig(host="127.0.0.1", port=port))
    srv.start()
    try:
        again = connect(srv.address, "ana")
        assert again.connected
        assert again.list_users().wait(TIMEOUT).nicks == ["ana"]
        again.close()
    finally:
        srv.stop()


def test_close_says_sair_and_joins_the_thread(server):
    ana = connect(server.address, "ana")
    with WireClient(server.address) as watcher:
        watcher.register("vigia")
        assert watcher.request("ASSINAR") == "OK"
        ana.close()
        assert not ana.thread.is_alive()
        assert watcher.read_line() == "SAIU ana"
    assert wait_event(ana, Disconnected) == Disconnected("Desconectado.", True)
    assert "ana" not in registered_nicks(server)
    ana.close()  # idempotent
    with pytest.raises(NotConnectedError):
        ana.ping()


def test_close_is_bounded_when_the_server_ignores_sair():
    def ignore_sair(fake, conn):
        fake.handshake(conn)
        assert fake.read_line(conn) == "SAIR"
        fake.release.wait(TIMEOUT)

    fake = ScriptedServer(ignore_sair)
    try:
        session = ChatSession(connect_timeout=TIMEOUT, close_timeout=0.3)
        session.connect(*fake.address, "eu")
        started = time.monotonic()
        session.close()
        assert time.monotonic() - started < 3.0  # the fake server would wait 5 s
        assert not session.thread.is_alive()
    finally:
        fake.close()
    assert fake.error is None


def test_close_without_connecting_and_closing_a_failed_session():
    ChatSession().close()
    session = ChatSession(connect_timeout=TIMEOUT)
    with pytest.raises(ConnectError):
        session.connect("127.0.0.1", free_port(), "ana")
    session.close()
    assert not session.thread.is_alive()


def test_requests_never_block_when_the_server_stops_reading():
    """The output buffer is bounded; a stalled server ends as a lost connection."""
    def stop_reading(fake, conn):
        fake.handshake(conn)
        fake.release.wait(TIMEOUT * 3)

    fake = ScriptedServer(stop_reading)
    try:
        session = ChatSession(connect_timeout=TIMEOUT, send_timeout=0.5,
                              max_outgoing=256 * 1024)
        session.connect(*fake.address, "eu")
        text = "x" * 4000
        slowest, refused, events = 0.0, 0, []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                session.send_message("bruno", text)
            except cliente.SendQueueFullError:
                slowest = max(slowest, time.monotonic() - started)
                refused += 1
                with contextlib.suppress(queue.Empty):  # let the kernel buffers fill
                    events.append(session.events.get(timeout=0.01))
                continue
            except NotConnectedError:
                break  # the session gave up on the stalled server
            slowest = max(slowest, time.monotonic() - started)
        assert refused > 0
        assert slowest < 1.0  # a blocking send would hang until the deadline
        event = next((e for e in events if isinstance(e, Disconnected)), None)
        event = event or wait_event(session, Disconnected)
        assert "parou de receber" in event.message
        session.close()
    finally:
        fake.close()


def test_garbage_from_the_server_is_ignored_and_matching_survives():
    def garbage(fake, conn):
        assert fake.read_line(conn) == "REGISTRAR eu"
        conn.sendall(b"OK\n")
        assert fake.read_line(conn) == "ASSINAR"
        assert fake.read_line(conn) == "LISTAR"
        conn.sendall(b"LIXO qualquer\n\xff\xfe invalido\n" + b"y" * 20000 + b"\n"
                     + b"MSG ana eu oi\nOK\nUSUARIOS 1\nUSUARIO eu 127.0.0.1 9\nEND\n")
        assert fake.read_line(conn) == "PING z"
        conn.sendall(b"PONG z\n")
        fake.release.wait(TIMEOUT)

    fake = ScriptedServer(garbage)
    try:
        session = ChatSession(connect_timeout=TIMEOUT)
        session.connect(*fake.address, "eu")
        assert session.ping("z").wait(TIMEOUT) == protocolo.Pong("z")
        events = drain(session)
        assert Message("ana", "eu", "oi") in events
        assert Reply(protocolo.Subscribe(), protocolo.Ok()) in events
        lists = [e for e in events if isinstance(e, Reply) and isinstance(e.result, UserList)]
        assert [e.result.nicks for e in lists] == [["eu"]]
        session.close()
    finally:
        fake.close()


# --------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    good = make_certificate(directory)
    other = make_certificate(directory, ("outro.exemplo",), stem="outro")
    return {"cert": good[0], "key": good[1], "other_cert": other[0], "other_key": other[1]}


@pytest.fixture
def tls_server(certificates):
    context = servidor.make_tls_context(certificates["cert"], certificates["key"])
    with running_server(tls_context=context, **UNLIMITED) as srv:
        yield srv


def test_tls_session_chats_with_verified_certificate(tls_server, certificates, sessions):
    ca = certificates["cert"]
    ana = sessions(tls_server.address, "ana", use_tls=True, tls_ca=ca)
    bruno = sessions(("localhost", tls_server.address[1]), "bruno", use_tls=True, tls_ca=ca)
    assert ana.tls and bruno.tls
    for i in range(200):
        ana.send_message("bruno", f"segredo {i}")
    assert [wait_event(bruno, Message).text for _ in range(200)] == [
        f"segredo {i}" for i in range(200)]
    assert bruno.send_message("ana", "recebido").wait(TIMEOUT) == protocolo.Ok()
    assert wait_event(ana, Message).text == "recebido"


def test_tls_ca_option_alone_implies_tls(tls_server, certificates, sessions):
    session = sessions(tls_server.address, "ana", tls_ca=certificates["cert"])
    assert session.tls


def test_tls_untrusted_certificate_is_refused_in_portuguese(tls_server):
    # No CA given: the system store does not know our self-signed certificate.
    with pytest.raises(ConnectError, match=r"Certificado TLS de .* rejeitado: .*autoassinado"):
        ChatSession(connect_timeout=TIMEOUT).connect(*tls_server.address, "ana", use_tls=True)


def test_tls_wrong_host_name_is_refused(certificates):
    context = servidor.make_tls_context(certificates["other_cert"], certificates["other_key"])
    with running_server(tls_context=context, **UNLIMITED) as srv, pytest.raises(
            ConnectError, match="não confere com o certificado"):
        ChatSession(connect_timeout=TIMEOUT).connect(
            *srv.address, "ana", use_tls=True, tls_ca=certificates["other_cert"])


def test_tls_bad_ca_file_is_reported(tls_server, tmp_path):
    missing = tmp_path / "nao-existe.pem"
    with pytest.raises(ConnectError, match="Arquivo de CA não encontrado"):
        ChatSession().connect(*tls_server.address, "ana", use_tls=True, tls_ca=str(missing))
    junk = tmp_path / "lixo.pem"
    junk.write_text("isto não é um certificado\n")
    with pytest.raises(ConnectError, match="Arquivo de CA inválido"):
        ChatSession().connect(*tls_server.address, "ana", use_tls=True, tls_ca=str(junk))


def test_plain_client_on_tls_server_gets_a_hint(tls_server):
    with pytest.raises(ConnectError, match="exige TLS"):
        ChatSession(connect_timeout=TIMEOUT).connect(*tls_server.address, "ana")


def test_tls_client_on_plain_server_gets_a_hint(server, certificates):
    with pytest.raises(ConnectError, match="O servidor usa TLS"):
        ChatSession(connect_timeout=TIMEOUT).connect(
            *server.address, "ana", use_tls=True, tls_ca=certificates["cert"])


# --------------------------------------------------------------------------
# Pure helpers and the command line


@pytest.mark.parametrize(("code", "expected"), [
    (ErrorCode.NAO_ENCONTRADO, "ana não está online"),
    (ErrorCode.DESTINATARIO_LENTO, "desconectado(a) pelo servidor"),
    (ErrorCode.LIMITE, "rápido demais"),
    (ErrorCode.SO_DIRETO, "só de diretório"),
    (ErrorCode.LINHA_LONGA, "longa demais"),
    (ErrorCode.ARGUMENTOS, "texto inválido"),
    (None, "O servidor recusou a mensagem: algo novo"),
])
def test_send_errors_read_as_plain_portuguese(code, expected):
    error = protocolo.Error(code, "algo novo", code.value if code else "NOVO")
    assert expected in cliente.describe_send_error(error, "ana")


def test_register_errors_read_as_plain_portuguese():
    def describe(code):
        return cliente.describe_register_error(protocolo.Error(code, "x", code.value), "ana")

    assert "já está em uso" in describe(ErrorCode.APELIDO_EM_USO)
    assert "lotado" in describe(ErrorCode.LOTADO)
    assert "Apelido inválido" in describe(ErrorCode.APELIDO_INVALIDO)


def test_message_text_is_cleaned_and_bounded():
    assert cliente.clean_message_text("a\nb\r\nc\x1b[31md\x7f\te") == "a b  c [31md \te"
    # Whatever the client lets through, the server accepts (C1 controls included).
    cleaned = cliente.clean_message_text("x\x9b31my\x85z")
    assert cleaned == "x 31my z"
    assert protocolo.parse_request(f"ENVIAR ana {cleaned}") == protocolo.Send("ana", cleaned)
    assert not cliente.message_too_long("ana", "x" * 4000)
    assert cliente.message_too_long("ana", "x" * 4090)
    assert cliente.message_too_long("ana", "ç" * 2100)  # bytes, not characters


def test_command_line_options():
    args = cliente.build_parser().parse_args([])
    assert (args.host, args.port, args.apelido, args.conectar, args.tls, args.tls_ca) == (
        "127.0.0.1", 1998, "", False, False, None)
    args = cliente.build_parser().parse_args(
        ["--host", "::1", "--port", "2000", "--apelido", "ana", "--conectar", "--tls",
         "--tls-ca", "ca.pem"])
    assert (args.host, args.port, args.apelido, args.conectar, args.tls, args.tls_ca) == (
        "::1", 2000, "ana", True, True, "ca.pem")


@pytest.mark.parametrize("port", ["0", "70000", "abc"])
def test_command_line_rejects_bad_ports(port, capsys):
    with pytest.raises(SystemExit):
        cliente.build_parser().parse_args(["--port", port])
    assert "porta" in capsys.readouterr().err


def test_session_layer_works_without_tkinter(server):
    """The session must not need Tk: import the module with tkinter made unimportable."""
    code = (
        "import sys; sys.modules['tkinter'] = None\n"
        "import cliente\n"
        "s = cliente.ChatSession(connect_timeout=5)\n"
        f"s.connect('127.0.0.1', {server.address[1]}, 'semtk')\n"
        "print(s.list_users().wait(5).nicks); s.close()\n"
    )
    root = Path(cliente.__file__).parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['semtk']"
