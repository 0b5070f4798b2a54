"""Tests of servidor.py over real sockets on 127.0.0.1.

Each test starts its own ``Servidor`` on port 0 (``make_server``) and talks
to it with ``wire.WireClient``; both are closed by the fixtures. Every wait
has a timeout, and absence is proven with a PING barrier (a reply is queued
after every push due before it) rather than by sleeping.

Groups: requests and replies in exact wire form, error precedence, framing,
nicknames, security, concurrency, life cycle.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
import types
from pathlib import Path

import pytest
from wire import HOST, TIMEOUT, UNLIMITED, ServerProcess, WireClient, wait_until

import protocolo
import servidor

ROOT = Path(__file__).resolve().parent.parent
ERROR_LINE = re.compile(r"ERRO ([A-Z_]+) (\S.*)")


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def make_server():
    """Factory: a started ``Servidor`` on 127.0.0.1 port 0; stopped at teardown.

    Every rate limit defaults to off (``wire.UNLIMITED``) so that bursts from
    tests, all from 127.0.0.1, are never slowed; the limits have their own tests.
    """
    servers: list[servidor.Servidor] = []

    def make(**options: object) -> servidor.Servidor:
        for name, value in UNLIMITED.items():
            options.setdefault(name, value)
        server = servidor.Servidor(servidor.ServerConfig(host=HOST, port=0, **options))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server) -> servidor.Servidor:
    return make_server()


@pytest.fixture
def user(server, connect):
    """Factory: a client connected to ``server`` and registered as ``nick``."""

    def registered(nick: str) -> WireClient:
        client = connect(server)
        client.register(nick)
        return client

    return registered


def assert_error(line: str, code: str) -> None:
    """``line`` is one ERRO line with ``code`` and a non-empty human text."""
    match = ERROR_LINE.fullmatch(line)
    assert match, f"not an ERRO line: {line!r}"
    assert match.group(1) == code, f"expected ERRO {code}, got {line!r}"


def lookup(client: WireClient, nick: str) -> str:
    return client.request(f"RETORNAR {nick}")


def wait_gone(client: WireClient, nick: str) -> None:
    """Poll RETORNAR until the server has dropped ``nick`` (it noticed a close)."""
    wait_until(lambda: lookup(client, nick) == "NAO ENCONTRADO", what=f"{nick} still registered")


# --------------------------------------------------------------------------
# Requests and replies, in exact wire form


def test_example_session_of_the_contract_byte_for_byte(server, connect):
    bruno = connect(server)
    bruno.register("bruno")
    ana = connect(server)
    ana.send(b"REGISTRAR ana\n")
    assert ana.read_line() == "OK"
    ana.send(b"LISTAR\n")
    ana.read_lines(4)
    ana.send(b"ENVIAR bruno oi, tudo bem?\n")
    assert ana.read_line() == "OK"
    assert bruno.read_line() == "MSG ana bruno oi, tudo bem?"
    bruno.send("ENVIAR ana tudo ótimo!\n".encode())
    assert bruno.read_line() == "OK"
    assert ana.read_line() == "MSG bruno ana tudo ótimo!"
    ana.send(b"ENVIAR carla oi\n")
    ana.read_line()
    # The ports are the clients' ephemeral ones: the server lists the peer address.
    assert bytes(ana.transcript) == (
        "OK\n"
        "USUARIOS 2\n"
        f"USUARIO ana 127.0.0.1 {ana.port}\n"
        f"USUARIO bruno 127.0.0.1 {bruno.port}\n"
        "END\n"
        "OK\n"
        "MSG bruno ana tudo ótimo!\n"
        "ERRO NAO_ENCONTRADO carla não está conectada\n").encode()


def test_legacy_directory_client_session_byte_for_byte(server, connect):
    old = connect(server)
    for line in ["REGISTRAR velho 10.0.0.5 5000", "LISTAR", "RETORNAR VELHO",
                 "RETORNAR ninguem", "CANCELAR_REGISTRO velho", "RETORNAR velho", "LISTAR"]:
        old.send_line(line)
    old.read_until(lambda line: line == "END")
    old.read_until(lambda line: line == "END")
    assert bytes(old.transcript) == (
        b"OK\n"
        b"USUARIOS 1\n"
        b"USUARIO velho 10.0.0.5 5000\n"
        b"END\n"
        b"ENCONTRADO 10.0.0.5 5000\n"
        b"NAO ENCONTRADO\n"
        b"OK\n"
        b"NAO ENCONTRADO\n"
        b"USUARIOS 0\n"
        b"END\n")


def test_listar_empty(server, connect):
    client = connect(server)
    assert client.request("LISTAR") == "USUARIOS 0"
    assert client.read_line() == "END"


def test_listar_sorts_case_insensitively_includes_caller_keeps_spelling(server, connect, user):
    clients = {nick: user(nick) for nick in ["carla", "Bruno", "ana", "ANDRE", "Ágata"]}
    caller = clients["carla"]
    caller.send_line("LISTAR")
    lines = caller.read_lines(7)
    order = sorted(clients, key=protocolo.nick_key)
    assert lines == ["USUARIOS 5",
                     *(f"USUARIO {nick} 127.0.0.1 {clients[nick].port}" for nick in order),
                     "END"]
    # Sorted by the nickname key, which folds case and accents (version 2).
    assert [line.split()[1] for line in lines[1:-1]] == ["Ágata", "ana", "ANDRE", "Bruno", "carla"]
    stranger = connect(server)  # LISTAR needs no registration
    stranger.send_line("LISTAR")
    assert stranger.read_lines(7) == lines


def test_retornar_found_and_not_found(server, connect, user):
    ana = user("Ana")
    stranger = connect(server)  # RETORNAR needs no registration
    assert stranger.request("RETORNAR ana") == f"ENCONTRADO 127.0.0.1 {ana.port}"
    assert stranger.request("RETORNAR ANA") == f"ENCONTRADO 127.0.0.1 {ana.port}"
    assert stranger.request("RETORNAR carla") == "NAO ENCONTRADO"
    assert stranger.request("RETORNAR b@d!") == "NAO ENCONTRADO"


def test_register_relay_form(server, connect):
    client = connect(server)
    assert client.request("REGISTRAR ana") == "OK"
    assert client.request("RETORNAR ana") == f"ENCONTRADO 127.0.0.1 {client.port}"
    assert_error(client.request("REGISTRAR ana"), "JA_REGISTRADO")
    assert_error(client.request("REGISTRAR outra"), "JA_REGISTRADO")


def test_directory_only_form(server, connect, user):
    ana = user("ana")
    old = connect(server)
    assert old.request("REGISTRAR velho 192.168.0.10 5000") == "OK"
    assert ana.request("RETORNAR velho") == "ENCONTRADO 192.168.0.10 5000"
    assert_error(ana.request("ENVIAR velho oi"), "SO_DIRETO")
    assert_error(ana.request("ENVIAR VELHO oi"), "SO_DIRETO")
    # A directory-only connection is registered, so it may send...
    assert old.request("ENVIAR ana oi, sou antigo") == "OK"
    assert ana.read_line() == "MSG velho ana oi, sou antigo"
    # ...and may subscribe, but never gets a push: not ENTROU, not MSG.
    assert old.request("ASSINAR") == "OK"
    user("bruno")
    assert_error(old.request("ENVIAR velho eco"), "SO_DIRETO")
    assert old.barrier() == []


def test_directory_only_form_with_ipv6(server, connect):
    client = connect(server)
    assert client.request("REGISTRAR seis 2001:db8::7 1998") == "OK"
    assert client.request("RETORNAR seis") == "ENCONTRADO 2001:db8::7 1998"


@pytest.mark.parametrize("line", [
    "REGISTRAR ana 10.0.0.5 0", "REGISTRAR ana 10.0.0.5 65536",
    "REGISTRAR ana host 5000", "REGISTRAR ana 10.0.0.5 5000 x", "REGISTRAR ana 10.0.0.5 x",
    "REGISTRAR ana fe80::1%eth0 5000", "REGISTRAR ana 1.2.3.4 " + "9" * 4000,
])
def test_register_with_bad_endpoint(server, connect, line):
    client = connect(server)
    assert_error(client.request(line), "ARGUMENTOS")
    assert client.request("LISTAR") == "USUARIOS 0"


def test_cancelar_registro(server, connect, user):
    ana = user("Ana")
    other = connect(server)
    assert ana.request("CANCELAR_REGISTRO") == "OK"
    # Removed before the OK: visible at once, no polling needed.
    assert other.request("RETORNAR ana") == "NAO ENCONTRADO"
    assert other.request("REGISTRAR ana") == "OK"
    assert_error(ana.request("CANCELAR_REGISTRO"), "NAO_REGISTRADO")
    # The connection stays open and may register again.
    assert ana.request("REGISTRAR Ana2") == "OK"
    assert ana.request("CANCELAR_REGISTRO ANA2") == "OK"  # own nick, any case
    assert ana.request("REGISTRAR Ana3") == "OK"
    assert ana.request("CANCELAR_REGISTRO ana3") == "OK"


def test_enviar(server, connect, user):
    ana, bruno = user("ana"), user("Bruno")
    assert ana.request("ENVIAR bruno olá, Bruno!") == "OK"
    assert bruno.read_line() == "MSG ana Bruno olá, Bruno!"  # the registered spelling
    assert ana.request("ENVIAR BRUNO  espaços  guardados ") == "OK"
    assert bruno.read_line() == "MSG ana Bruno  espaços  guardados "
    assert ana.request("ENVIAR carla oi") == "ERRO NAO_ENCONTRADO carla não está conectada"
    stranger = connect(server)
    assert_error(stranger.request("ENVIAR ana oi"), "NAO_REGISTRADO")
    assert ana.barrier() == []


def test_enviar_to_oneself(server, user):
    ana = user("ana")
    ana.send_line("ENVIAR ANA nota para mim")
    assert sorted(ana.read_lines(2)) == ["MSG ana ana nota para mim", "OK"]


def test_assinar_entrou_saiu(server, connect, user):
    watcher = user("vigia")
    assert watcher.request("ASSINAR") == "OK"
    assert watcher.request("ASSINAR") == "OK"  # again: still one subscription
    bystander = user("passante")  # registered, not subscribed
    assert watcher.read_line() == "ENTROU passante"

    ana = user("Ana")
    assert watcher.read_line() == "ENTROU Ana"
    assert ana.request("CANCELAR_REGISTRO") == "OK"
    assert watcher.read_line() == "SAIU Ana"

    bruno = user("bruno")
    assert watcher.read_line() == "ENTROU bruno"
    assert bruno.request("SAIR") == "OK"
    assert watcher.read_line() == "SAIU bruno"

    carla = user("carla")
    assert watcher.read_line() == "ENTROU carla"
    carla.close()
    assert watcher.read_line() == "SAIU carla"

    davi = user("davi")
    assert watcher.read_line() == "ENTROU davi"
    davi.reset()
    assert watcher.read_line() == "SAIU davi"

    assert watcher.barrier() == []
    assert bystander.barrier() == []
    assert_error(connect(server).request("ASSINAR"), "NAO_REGISTRADO")


def test_subscription_ends_with_registration(server, user):
    watcher = user("vigia")
    assert watcher.request("ASSINAR") == "OK"
    assert watcher.request("CANCELAR_REGISTRO") == "OK"
    assert watcher.request("REGISTRAR vigia") == "OK"
    user("ana")  # its OK is sent after any ENTROU was queued
    assert watcher.barrier() == []


def test_ping_pong(server, connect):
    client = connect(server)
    assert client.request("PING") == "PONG"
    assert client.request("PING ") == "PONG"
    assert client.request("PING 123") == "PONG 123"
    assert client.request("PING  a  b c ") == "PONG a  b c "
    assert client.request("ping ôi") == "PONG ôi"


def test_sair_answers_ok_then_closes(server, connect, user):
    ana = user("ana")
    other = connect(server)
    ana.send(b"SAIR\nPING depois\n")
    assert ana.expect_eof() == ["OK"]  # nothing after SAIR is answered
    # Removed before the OK: visible at once.
    assert other.request("RETORNAR ana") == "NAO ENCONTRADO"
    stranger = connect(server)
    assert stranger.request("SAIR") == "OK"
    assert stranger.expect_eof() == []


def test_verbs_are_case_insensitive(server, connect):
    client = connect(server)
    assert client.request("registrar ana") == "OK"
    assert client.request("Listar") == "USUARIOS 1"
    client.read_lines(2)
    assert client.request("retornar ANA") == f"ENCONTRADO 127.0.0.1 {client.port}"
    assert client.request("Assinar") == "OK"
    assert client.request("cancelar_registro") == "OK"
    assert client.request("sair") == "OK"


@pytest.mark.parametrize(("line", "code"), [
    ("FOO", "COMANDO_DESCONHECIDO"),
    ("MSG ana bob oi", "COMANDO_DESCONHECIDO"),
    ("OK", "COMANDO_DESCONHECIDO"),
    ("LISTAR x", "ARGUMENTOS"),
    ("RETORNAR", "ARGUMENTOS"),
    ("RETORNAR a b", "ARGUMENTOS"),
    ("SAIR now", "ARGUMENTOS"),
    ("ASSINAR x", "ARGUMENTOS"),
    ("CANCELAR_REGISTRO a b", "ARGUMENTOS"),
    ("REGISTRAR", "ARGUMENTOS"),
    ("REGISTRAR a b c d", "ARGUMENTOS"),
    ("ENVIAR", "ARGUMENTOS"),
    ("ENVIAR ana", "ARGUMENTOS"),
    ("ENVIAR ana ", "ARGUMENTOS"),
])
def test_malformed_requests_get_one_error_and_the_connection_stays(server, connect, line, code):
    client = connect(server)
    assert_error(client.request(line), code)
    assert client.request("PING vivo") == "PONG vivo"


# --------------------------------------------------------------------------
# Error precedence: arguments, registration state, nickname form, look-up


def test_error_precedence_unregistered(server, connect, user):
    user("bob")
    client = connect(server)
    for line, code in [
        ("ENVIAR bob", "ARGUMENTOS"),                 # arguments before registration
        ("ENVIAR b@d x\x01", "ARGUMENTOS"),
        ("CANCELAR_REGISTRO a b", "ARGUMENTOS"),
        ("ASSINAR x", "ARGUMENTOS"),
        ("REGISTRAR b@d! 1.2.3.4 0", "ARGUMENTOS"),   # arguments before nickname form
        ("ENVIAR b@d! oi", "NAO_REGISTRADO"),         # registration before form and look-up
        ("ENVIAR fantasma oi", "NAO_REGISTRADO"),
        ("CANCELAR_REGISTRO fantasma", "NAO_REGISTRADO"),
        ("CANCELAR_REGISTRO bob", "NAO_REGISTRADO"),
        ("REGISTRAR b@d!", "APELIDO_INVALIDO"),       # nickname form before look-up
        ("REGISTRAR b@d! 1.2.3.4 80", "APELIDO_INVALIDO"),
        ("REGISTRAR BOB", "APELIDO_EM_USO"),
        ("REGISTRAR bob 1.2.3.4 80", "APELIDO_EM_USO"),
    ]:
        assert_error(client.request(line), code)


def test_error_precedence_registered(server, user):
    user("bob")
    ana = user("ana")
    for line, code in [
        ("REGISTRAR", "ARGUMENTOS"),
        ("ENVIAR fantasma", "ARGUMENTOS"),
        ("REGISTRAR b@d!", "JA_REGISTRADO"),          # registration state before form
        ("REGISTRAR bob", "JA_REGISTRADO"),           # ...and before look-up
        ("REGISTRAR ana", "JA_REGISTRADO"),
        ("CANCELAR_REGISTRO bob", "PROIBIDO"),        # whether or not the user exists
        ("CANCELAR_REGISTRO fantasma", "PROIBIDO"),
        ("CANCELAR_REGISTRO b@d!", "PROIBIDO"),
        ("ENVIAR b@d! oi", "NAO_ENCONTRADO"),
        ("ENVIAR fantasma oi", "NAO_ENCONTRADO"),
    ]:
        assert_error(ana.request(line), code)


# --------------------------------------------------------------------------
# Abuse limits, in wire form (their depth is in test_limites.py)


def test_rate_limit_answers_limite_and_skips_the_request(make_server, connect):
    server = make_server(rate=0.01, burst=2)
    bob = connect(server)
    bob.register("bob")  # one token
    ana = connect(server)
    ana.register("ana")  # one token
    ana.send(b"ENVIAR bob um\nENVIAR bob dois\n")
    assert ana.read_line() == "OK"
    assert_error(ana.read_line(), "LIMITE")
    assert bob.barrier() == ["MSG ana bob um"]  # bob's second token; "dois" never went


def test_blank_lines_get_no_reply_even_past_the_rate_limit(make_server, connect):
    server = make_server(rate=0.01, burst=2)
    client = connect(server)
    client.send(b"PING a\n\n   \n\r\n\n\n\nPING b\nPING c\n")
    assert client.read_line() == "PONG a"
    assert client.read_line() == "PONG b"
    assert_error(client.read_line(), "LIMITE")
    client.assert_silent(0.2)


def test_unregistered_idle_connection_gets_tempo_then_close(make_server, connect):
    server = make_server(register_timeout=0.3)
    client = connect(server)
    lines = client.expect_eof()
    assert len(lines) == 1
    assert_error(lines[0], "TEMPO")


# --------------------------------------------------------------------------
# Framing


def test_byte_by_byte_delivery(server, connect):
    client = connect(server)
    data = "REGISTRAR joão\nPING x\r\nENVIAR JOÃO ôi, 😀\nLISTAR\n".encode()
    for i in range(len(data)):
        client.send(data[i:i + 1])
    assert client.read_line() == "OK"
    assert client.read_line() == "PONG x"
    assert sorted(client.read_lines(2)) == ["MSG joão joão ôi, 😀", "OK"]
    assert client.read_lines(3) == [
        "USUARIOS 1", f"USUARIO joão 127.0.0.1 {client.port}", "END"]


def test_fifty_pipelined_requests_in_one_send(server, connect, user):
    bob = user("bob")
    client = connect(server)
    lines, expected = ["REGISTRAR ana"], ["OK"]
    for i in range(49):
        kind = i % 7
        if kind == 0:
            lines.append(f"PING {i}")
            expected.append(f"PONG {i}")
        elif kind == 1:
            lines.append(f"ENVIAR bob {i}")
            expected.append("OK")
        elif kind == 2:
            lines.append("RETORNAR bob")
            expected.append(f"ENCONTRADO 127.0.0.1 {bob.port}")
        elif kind == 3:
            lines.append(f"RETORNAR x{i}")
            expected.append("NAO ENCONTRADO")
        elif kind == 4:
            lines.append(f"ENVIAR x{i} oi")
            expected.append(f"ERRO NAO_ENCONTRADO x{i} não está conectada")
        elif kind == 5:
            lines.append("LISTAR")
            expected += ["USUARIOS 2", f"USUARIO ana 127.0.0.1 {client.port}",
                         f"USUARIO bob 127.0.0.1 {bob.port}", "END"]
        else:
            lines.append("LISTAR x")
            expected.append("ARGUMENTOS")
    assert len(lines) == 50
    client.send("".join(line + "\n" for line in lines).encode())
    replies = client.read_lines(len(expected))
    for reply, want in zip(replies, expected, strict=True):
        if want == "ARGUMENTOS":
            assert_error(reply, want)
        else:
            assert reply == want
    assert bob.read_lines(7) == [f"MSG ana bob {i}" for i in range(1, 49, 7)]
    assert client.barrier() == []


def test_crlf_line_endings(server, connect, user):
    bob = user("bob")
    client = connect(server)
    client.send(b"REGISTRAR ana\r\nENVIAR bob oi\r\nLISTAR\r\nPING t\r\n")
    assert client.read_lines(6) == ["OK", "OK", "USUARIOS 2",
                                    f"USUARIO ana 127.0.0.1 {client.port}",
                                    f"USUARIO bob 127.0.0.1 {bob.port}", "END"]
    assert client.read_line() == "PONG t"
    assert bob.read_line() == "MSG ana bob oi"  # the CR is not part of the text
    assert b"\r" not in bob.transcript


def test_line_at_the_limit_is_accepted(server, connect):
    client = connect(server)
    token = "x" * (4096 - len("PING \n"))
    assert client.request(f"PING {token}") == f"PONG {token}"
    token_crlf = "y" * (4096 - len("PING \r\n"))
    client.send(f"PING {token_crlf}\r\n".encode())
    assert client.read_line() == f"PONG {token_crlf}"


def test_over_long_line_then_valid_line(server, connect):
    client = connect(server)
    client.send(b"PING " + b"x" * 4091 + b"\nPING ok\n")  # 4097 bytes, then a good line
    assert_error(client.read_line(), "LINHA_LONGA")
    assert client.read_line() == "PONG ok"
    assert client.barrier() == []


def test_huge_line_answered_once_when_its_lf_arrives(server, connect):
    client = connect(server)
    client.register("ana")
    for _ in range(64):
        client.send(b"ENVIAR ana " + b"z" * 16384)  # 1 MiB without an LF
    client.assert_silent(0.2)  # no answer before the LF
    client.send(b"\nPING ok\n")
    assert_error(client.read_line(), "LINHA_LONGA")
    assert client.read_line() == "PONG ok"
    assert client.barrier() == []  # one LINHA_LONGA only, and no MSG


def test_limit_counts_bytes_not_characters(server, connect):
    client = connect(server)
    fits = "ã" * ((4096 - len("PING \n")) // 2)  # 2045 characters, 4090 bytes
    assert client.request(f"PING {fits}") == f"PONG {fits}"
    too_long = fits + "ã"  # 2046 characters, 4098 bytes with "PING " and LF
    assert_error(client.request(f"PING {too_long}"), "LINHA_LONGA")


def test_long_message_from_the_longest_nick_is_relayed(server, user):
    # The MSG line is longer than 4096 bytes; clients accept up to 8192.
    sender, recipient = user("s" * 32), user("r" * 32)
    text = "é" * ((4096 - len("ENVIAR " + "r" * 32 + " \n")) // 2)
    assert sender.request(f"ENVIAR {'r' * 32} {text}") == "OK"
    assert recipient.read_line() == f"MSG {'s' * 32} {'r' * 32} {text}"


@pytest.mark.parametrize("raw", [
    b"PING \xff\n", b"ENVIAR bob \xc3\n", b"REGISTRAR \xc0\x80\n", b"\xed\xa0\x80\n",
])
def test_invalid_utf8(server, connect, user, raw):
    bob = user("bob")
    client = connect(server)
    client.register("ana")
    client.send(raw)
    assert_error(client.read_line(), "CODIFICACAO")
    assert client.request("PING vivo") == "PONG vivo"
    assert bob.barrier() == []


def test_nul_and_control_characters(server, connect, user):
    bob = user("bob")
    ana = connect(server)
    ana.register("ana")
    for raw, code in [
        (b"ENVIAR bob a\x00b\n", "ARGUMENTOS"),
        (b"ENVIAR bob \x1b[2J\n", "ARGUMENTOS"),
        (b"ENVIAR bob a\rb\n", "ARGUMENTOS"),
        (b"ENVIAR bob a\x7f\n", "ARGUMENTOS"),
        (b"ENVIAR bob sino\x07\n", "ARGUMENTOS"),
        (b"\x00\n", "COMANDO_DESCONHECIDO"),
        (b"PI\x00NG\n", "COMANDO_DESCONHECIDO"),
        (b"REGISTRAR a\x00b\n", "JA_REGISTRADO"),
    ]:
        ana.send(raw)
        assert_error(ana.read_line(), code)
    other = connect(server)
    other.send(b"REGISTRAR a\x00b\n")
    assert_error(other.read_line(), "APELIDO_INVALIDO")
    assert bob.barrier() == []
    assert ana.request("ENVIAR bob col1\tcol2") == "OK"  # TAB is allowed
    assert bob.read_line() == "MSG ana bob col1\tcol2"


def test_blank_lines_get_no_reply(server, connect):
    client = connect(server)
    client.send(b"\n\r\n   \n \r\n")
    assert client.barrier() == []


def test_eof_mid_line(server, connect, user):
    bob = user("bob")
    watcher = user("vigia")
    assert watcher.request("ASSINAR") == "OK"
    eve = user("eve")
    assert watcher.read_line() == "ENTROU eve"
    eve.send(b"PING a\nENVIAR bob metade sem fim")
    eve.shutdown_write()
    assert eve.expect_eof() == ["PONG a"]  # the cut line is not a request
    assert watcher.read_line() == "SAIU eve"
    assert bob.barrier() == []
    assert bob.request("RETORNAR eve") == "NAO ENCONTRADO"


def test_reset_mid_message(server, connect, user):
    ana, bob = user("ana"), user("bob")
    watcher = user("vigia")
    assert watcher.request("ASSINAR") == "OK"
    mallory = user("mallory")
    assert watcher.read_line() == "ENTROU mallory"
    mallory.send(b"ENVIAR bob meia mensa")
    mallory.reset()
    assert watcher.read_line() == "SAIU mallory"
    assert bob.barrier() == []
    assert ana.request("ENVIAR bob ainda aqui") == "OK"
    assert bob.read_line() == "MSG ana bob ainda aqui"
    wait_until(lambda: server.connection_count == 3, what="reset connection forgotten")


def test_resets_before_and_during_accept(server, connect):
    for _ in range(50):
        WireClient(server.address).reset()
    wait_until(lambda: server.connection_count == 0, what="reset connections forgotten")
    client = connect(server)
    assert client.request("PING vivo") == "PONG vivo"


# --------------------------------------------------------------------------
# Nicknames


@pytest.mark.parametrize("nick", ["João_2", "Ωμέγα", "名前", "Москва", "ana.b-c", "ß",
                                  "x" * 32, "ã" * 32, "Joa\u0303o"])
def test_valid_nicknames_register_and_show_as_given(server, connect, nick):
    client = connect(server)
    assert client.request(f"REGISTRAR {nick}") == "OK"
    assert client.request("LISTAR") == "USUARIOS 1"
    assert client.read_lines(2) == [f"USUARIO {nick} 127.0.0.1 {client.port}", "END"]
    assert client.request(f"ENVIAR {nick.upper()} oi") in ("OK", f"MSG {nick} {nick} oi")


# Version 2's rules (changed): digits are ASCII, letters from one script.
@pytest.mark.parametrize("nick", ["x" * 33, "ã" * 33, "ana!", "a/b", "😀", "a@b", "a,b",
                                  "١٢٣", "аna", "ana\u3164"])
def test_invalid_nicknames_are_refused(server, connect, nick):
    client = connect(server)
    assert_error(client.request(f"REGISTRAR {nick}"), "APELIDO_INVALIDO")
    assert client.request("LISTAR") == "USUARIOS 0"


def test_nickname_with_spaces_is_an_argument_error(server, connect):
    client = connect(server)
    # Two words are the account form (version 2), refused without a disk;
    # four are nothing at all.
    assert_error(client.request("REGISTRAR ana mariana"), "SEM_CONTA")
    assert_error(client.request("REGISTRAR ana maria da silva"), "ARGUMENTOS")
    assert client.request("REGISTRAR  ana  ") == "OK"  # extra spaces are separators
    assert client.request("RETORNAR ana") == f"ENCONTRADO 127.0.0.1 {client.port}"


@pytest.mark.parametrize(("first", "second"), [
    ("Ana", "ANA"), ("ana", "aNa"), ("straße", "STRASSE"), ("João", "JOÃO"),
])
def test_case_insensitive_collision(server, connect, first, second):
    one, two = connect(server), connect(server)
    assert one.request(f"REGISTRAR {first}") == "OK"
    assert_error(two.request(f"REGISTRAR {second}"), "APELIDO_EM_USO")
    assert two.request(f"RETORNAR {second}") == f"ENCONTRADO 127.0.0.1 {one.port}"
    assert two.request("LISTAR") == "USUARIOS 1"
    assert two.read_line() == f"USUARIO {first} 127.0.0.1 {one.port}"


@pytest.mark.parametrize("leave", ["close", "reset", "shutdown"])
def test_reregistration_after_disconnect(server, connect, leave):
    first = connect(server)
    first.register("Ana")
    if leave == "close":
        first.close()
    elif leave == "reset":
        first.reset()
    else:
        first.shutdown_write()
    second = connect(server)
    wait_gone(second, "ana")
    assert second.request("REGISTRAR ana") == "OK"
    assert second.request("RETORNAR ANA") == f"ENCONTRADO 127.0.0.1 {second.port}"


# --------------------------------------------------------------------------
# Security


def test_sender_is_always_the_server_known_nickname(server, connect, user):
    bob = user("bob")
    ana = user("ana")
    assert ana.request("ENVIAR bob MSG carla bob eu sou a carla") == "OK"
    assert bob.read_line() == "MSG ana bob MSG carla bob eu sou a carla"
    # A second line in the same send is a request of its own, not a push.
    ana.send(b"ENVIAR bob oi\nMSG carla bob falso\n")
    assert ana.read_line() == "OK"
    assert_error(ana.read_line(), "COMANDO_DESCONHECIDO")
    assert bob.barrier() == ["MSG ana bob oi"]
    # A CR cannot fake a line end for a terminal either.
    assert_error(ana.request("ENVIAR bob oi\rMSG carla bob falso"), "ARGUMENTOS")
    # After re-registering, the new nickname is the sender.
    assert ana.request("CANCELAR_REGISTRO") == "OK"
    assert_error(ana.request("ENVIAR bob anônimo"), "NAO_REGISTRADO")
    assert ana.request("REGISTRAR ana2") == "OK"
    assert ana.request("ENVIAR bob de novo") == "OK"
    assert bob.read_line() == "MSG ana2 bob de novo"
    assert bob.barrier() == []


def test_cannot_cancel_or_take_another_users_registration(server, connect, user):
    bob = user("bob")
    ana = user("ana")
    stranger = connect(server)
    assert_error(ana.request("CANCELAR_REGISTRO bob"), "PROIBIDO")
    assert_error(ana.request("CANCELAR_REGISTRO BOB"), "PROIBIDO")
    assert_error(stranger.request("CANCELAR_REGISTRO bob"), "NAO_REGISTRADO")
    assert_error(stranger.request("REGISTRAR Bob"), "APELIDO_EM_USO")
    assert_error(stranger.request("REGISTRAR bob 1.2.3.4 80"), "APELIDO_EM_USO")
    assert stranger.request("RETORNAR bob") == f"ENCONTRADO 127.0.0.1 {bob.port}"
    assert ana.request("ENVIAR bob ainda registrado") == "OK"
    assert bob.read_line() == "MSG ana bob ainda registrado"


# --------------------------------------------------------------------------
# Concurrency


def run_threads(target, count: int, timeout: float) -> list[BaseException]:
    """Run ``target(i)`` in ``count`` threads; return what they raised."""
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "client threads still running"
    return errors


def test_200_clients_register_and_message_at_once(make_server, connect):
    server = make_server(max_per_ip=0)
    count, per_pair = 200, 20
    offsets = (1, 2, 3, 5, 8)
    nicks = [f"u{i:03d}" for i in range(count)]
    clients = [connect(server) for _ in range(count)]
    start = threading.Barrier(count, timeout=20)
    received: dict[str, dict[str, list[int]]] = {}

    def client_body(i: int) -> None:
        client, me = clients[i], nicks[i]
        start.wait()
        client.register(me)
        start.wait()  # everybody is registered
        client.send("".join(f"ENVIAR {nicks[(i + d) % count]} {me}:{n}\n"
                            for n in range(per_pair) for d in offsets).encode())
        oks, messages = 0, {}
        expected = per_pair * len(offsets)
        deadline = time.monotonic() + 20
        while oks < expected or sum(map(len, messages.values())) < expected:
            line = client.read_line(max(0.0, deadline - time.monotonic()))
            if line == "OK":
                oks += 1
                continue
            verb, sender, recipient, text = line.split(" ")
            assert (verb, recipient) == ("MSG", me), line
            origin, number = text.split(":")
            assert origin == sender, line
            messages.setdefault(sender, []).append(int(number))
        received[me] = messages

    errors = run_threads(client_body, count, timeout=40)
    assert not errors, errors[:3]
    for i, me in enumerate(nicks):
        senders = {nicks[(i - d) % count] for d in offsets}
        assert set(received[me]) == senders
        for sender in senders:
            assert received[me][sender] == list(range(per_pair)), (sender, me)
    assert all(client.barrier() == [] for client in clients[:10])
    assert clients[0].request("LISTAR") == f"USUARIOS {count}"


def test_listar_reply_is_never_split_by_pushes(server, connect, user):
    watcher = user("vigia")
    assert watcher.request("ASSINAR") == "OK"
    sender = user("remetente")
    assert watcher.read_line() == "ENTROU remetente"
    churn = connect(server)
    rounds = 100

    def make_noise(kind: int) -> None:
        if kind == 0:
            for n in range(rounds):
                assert churn.request(f"REGISTRAR gira{n}") == "OK"
                assert churn.request("CANCELAR_REGISTRO") == "OK"
        else:
            for n in range(rounds):
                assert sender.request(f"ENVIAR vigia {n}") == "OK"

    errors: list[BaseException] = []
    noise = threading.Thread(target=lambda: errors.extend(run_threads(make_noise, 2, 20)),
                             daemon=True)
    noise.start()
    watcher.send(b"LISTAR\n" * rounds)
    listings = 0
    deadline = time.monotonic() + 20
    while listings < rounds:
        line = watcher.read_line(max(0.0, deadline - time.monotonic()))
        if line.startswith("USUARIOS "):
            size = int(line.split()[1])
            body = watcher.read_lines(size + 1)
            assert all(entry.startswith("USUARIO ") for entry in body[:-1]), body
            assert body[-1] == "END", body
            listings += 1
        else:
            assert line.split()[0] in ("MSG", "ENTROU", "SAIU"), line
    noise.join(TIMEOUT)
    assert not noise.is_alive()
    assert not errors, errors


def test_slow_recipient_does_not_delay_others_and_is_dropped(make_server, connect):
    server = make_server(max_pending=64 * 1024, stall_timeout=1.0)
    slow = connect(server, rcvbuf=4096)
    slow.register("lento")  # and never reads again
    stuck = server.registry.get("lento").connection
    flooder, ana, bob = connect(server), connect(server), connect(server)
    flooder.register("inundador")
    ana.register("ana")
    bob.register("bob")

    # 1. Fill the kernel buffers until output stays queued in the server:
    #    lento's writer thread is now blocked on its socket.
    big = "x" * 3000
    while stuck.outbox.pending < 16 * 1024:
        assert flooder.request(f"ENVIAR lento {big}") == "OK"

    # 2. While lento is stuck (and still gets messages), ana and bob talk.
    round_trips = []
    for n in range(30):
        assert flooder.request(f"ENVIAR lento {'y' * 1000}") == "OK"
        started = time.monotonic()
        assert ana.request(f"ENVIAR bob ping {n}") == "OK"
        assert bob.read_line() == f"MSG ana bob ping {n}"
        assert bob.request(f"ENVIAR ana pong {n}") == "OK"
        assert ana.read_line() == f"MSG bob ana pong {n}"
        round_trips.append(time.monotonic() - started)
    assert stuck.outbox.pending > 0, "lento was not stuck while we measured"
    assert server.registry.get("lento") is not None
    assert max(round_trips) < 0.5, f"slowest round trip {max(round_trips):.3f} s"

    # 3. Past max_pending, lento is dropped and its sender told so, once.
    replies = []
    while not any(line.startswith("ERRO") for line in replies):
        assert len(replies) < 10_000, "never dropped"
        replies.append(flooder.request(f"ENVIAR lento {big}"))
    assert_error(replies[-1], "DESTINATARIO_LENTO")
    assert all(line == "OK" for line in replies[:-1])
    wait_gone(ana, "lento")
    assert_error(flooder.request("ENVIAR lento ainda?"), "NAO_ENCONTRADO")
    assert ana.request("ENVIAR bob depois") == "OK"
    assert bob.read_line() == "MSG ana bob depois"


def test_slow_but_reading_recipient_gets_everything_in_order(server, connect, user):
    # Small buffers and a reader that drains in short bursts push the
    # server's output through its writer thread and back many times.
    reader = connect(server, rcvbuf=4096)
    reader.register("devagar")
    senders = [user(f"s{i}") for i in range(3)]
    count, text = 400, "w" * 500

    def send_all(i: int) -> None:
        for batch in range(0, count, 50):
            senders[i].send("".join(f"ENVIAR devagar {i}:{n}:{text}\n"
                                    for n in range(batch, batch + 50)).encode())
            assert senders[i].read_lines(50) == ["OK"] * 50

    sending = threading.Thread(target=lambda: run_threads(send_all, 3, timeout=30), daemon=True)
    sending.start()
    seen: dict[str, list[int]] = {str(i): [] for i in range(3)}
    for _ in range(3 * count):
        verb, sender, recipient, body = reader.read_line(10).split(" ")
        origin, number, rest = body.split(":")
        assert (verb, recipient, sender, rest) == ("MSG", "devagar", f"s{origin}", text)
        seen[origin].append(int(number))
    sending.join(TIMEOUT)
    assert all(numbers == list(range(count)) for numbers in seen.values())
    assert reader.barrier() == []


def test_racing_registrations_of_one_nickname(server, connect):
    clients = [connect(server) for _ in range(20)]
    start = threading.Barrier(len(clients), timeout=TIMEOUT)
    replies: list[str] = []

    def race(i: int) -> None:
        start.wait()
        replies.append(clients[i].request(f"REGISTRAR {'Disputado' if i % 2 else 'disputado'}"))

    assert not run_threads(race, len(clients), timeout=10)
    assert replies.count("OK") == 1
    for reply in replies:
        if reply != "OK":
            assert_error(reply, "APELIDO_EM_USO")


# --------------------------------------------------------------------------
# Life cycle


def test_lotado_at_max_clients(make_server, connect):
    server = make_server(max_clients=3)
    admitted = [connect(server) for _ in range(3)]
    for client in admitted:
        assert client.request("PING") == "PONG"
    refused = connect(server)
    lines = refused.expect_eof()
    assert len(lines) == 1
    assert_error(lines[0], "LOTADO")
    hasty = connect(server)  # types before the server even accepted
    hasty.send(b"REGISTRAR pressa\n")
    lines = hasty.expect_eof()
    assert len(lines) == 1
    assert_error(lines[0], "LOTADO")
    admitted[0].close()
    wait_until(lambda: server.connection_count == 2, what="closed connection forgotten")
    again = connect(server)
    assert again.request("PING") == "PONG"


def test_lotado_at_max_per_ip(make_server, connect):
    server = make_server(max_clients=0, max_per_ip=2)
    admitted = [connect(server) for _ in range(2)]
    for client in admitted:
        assert client.request("PING") == "PONG"
    lines = connect(server).expect_eof()
    assert len(lines) == 1
    assert_error(lines[0], "LOTADO")


def test_no_thread_leak_after_500_connections(make_server):
    server = make_server()
    baseline = threading.active_count()
    for i in range(500):
        with WireClient(server.address, rcvbuf=4096) as client:
            kind = i % 6
            if kind == 0:
                client.register(f"c{i}")
                client.send_line("SAIR")
                assert client.expect_eof() == ["OK"]
            elif kind == 1:
                client.register(f"c{i}")
                assert client.request("PING") == "PONG"
            elif kind == 2:
                client.send(b"ENVIAR x meia")
                client.reset()
            elif kind == 3:
                client.send(b"LISTAR\n")
                client.shutdown_write()
                client.expect_eof()
            elif kind == 4:
                # Replies it never reads: the server's writer thread takes over.
                client.send(f"PING {'p' * 4000}\n".encode() * 100)
    wait_until(lambda: server.connection_count == 0, what="connections forgotten")
    wait_until(lambda: threading.active_count() <= baseline,
               what=f"threads back to {baseline}: {threading.active_count()}")
    assert len(server.registry) == 0


def test_stop_flushes_closes_and_is_idempotent(connect):
    baseline = threading.active_count()
    server = servidor.Servidor(servidor.ServerConfig(host=HOST, port=0, rate=0))
    server.stop()  # before start: nothing to do
    server.start()
    address = server.address
    try:
        ana = connect(server)
        ana.register("ana")
        bob = connect(server)
        bob.register("bob")
        idle = connect(server)
        assert ana.request("ENVIAR bob até logo") == "OK"
    finally:
        server.stop()
    server.stop()
    assert bob.expect_eof() == ["MSG ana bob até logo"]
    assert ana.expect_eof() == []
    assert idle.expect_eof() == []
    assert all(listener.fileno() == -1 for listener in server._listeners)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=TIMEOUT).close()
    assert server.connection_count == 0
    wait_until(lambda: threading.active_count() <= baseline,
               what=f"threads back to {baseline}: {threading.active_count()}")


def test_stop_during_heavy_traffic_is_bounded(make_server, connect):
    server = make_server(max_per_ip=0)
    clients = [connect(server) for _ in range(20)]
    for i, client in enumerate(clients):
        client.register(f"c{i}")
    stuck = connect(server, rcvbuf=4096)
    stuck.register("parado")  # never reads
    queued = server.registry.get("parado").connection.outbox
    while queued.pending < 16 * 1024:  # kernel buffers full: its writer is blocked
        assert clients[0].request(f"ENVIAR parado {'x' * 3000}") == "OK"
    running = threading.Event()
    running.set()

    def chatter(i: int) -> None:
        client = clients[i]
        with contextlib.suppress(OSError, AssertionError):
            while running.is_set():
                client.send(f"ENVIAR c{(i + 1) % 20} {'t' * 200}\n".encode() * 20)
                client.read_lines(20)

    talking = threading.Thread(target=lambda: run_threads(chatter, 20, timeout=15), daemon=True)
    talking.start()
    wait_until(lambda: b"MSG c1 c2 " in clients[2].transcript, what="traffic flowing")
    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started
    running.clear()
    talking.join(TIMEOUT * 2)
    assert not talking.is_alive()
    assert elapsed < 3.0, f"stop() took {elapsed:.2f} s"
    assert server.connection_count == 0


def test_context_manager_starts_and_stops(connect):
    with servidor.Servidor(servidor.ServerConfig(host=HOST, port=0)) as server:
        client = connect(server)
        assert client.request("PING") == "PONG"
    assert client.expect_eof() == []


def test_subprocess_exits_0_within_3_s_on_sigterm_with_clients(connect):
    with ServerProcess("--taxa", "0") as process:
        port = process.port

        target = types.SimpleNamespace(address=(HOST, port))
        watcher = connect(target)
        watcher.register("vigia")
        assert watcher.request("ASSINAR") == "OK"
        ana = connect(target)
        ana.register("ana")
        assert watcher.read_line() == "ENTROU ana"
        slow = connect(target, rcvbuf=4096)
        slow.register("lento")  # never reads: output stays queued for it
        assert watcher.read_line() == "ENTROU lento"
        # About 660 KB for a client that never reads: the kernel buffers fill,
        # the server holds the rest, and ana's thread waits for lento to read
        # (senders are slowed, not served) -- so SIGTERM finds a connection
        # blocked on another, output queued, and requests not yet answered.
        for _ in range(2):
            ana.send(f"ENVIAR lento {'x' * 3000}\n".encode() * 110)
        partial = connect(target)
        partial.send(b"PING sem fim")
        idle = connect(target)

        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        code = process.proc.wait(timeout=3.0)
        elapsed = time.monotonic() - started
        assert code == 0, process.log
        assert elapsed < 3.0
        for client in (partial, idle):
            assert client.expect_eof() == []
        assert all(line == "OK" or line.startswith("ERRO ") for line in ana.expect_eof())
        assert all(line.startswith("SAIU ") for line in watcher.expect_eof())
    assert any("encerrado" in line for line in process.log), process.log


def test_subprocess_exits_0_on_sigint(connect):
    with ServerProcess() as process:
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(timeout=3.0) == 0, process.log
