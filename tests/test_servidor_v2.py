"""Version 2 of the protocol in servidor.py, over real sockets on 127.0.0.1.

Each test starts its own ``Servidor`` on port 0 (``make_server``); by default
it keeps its messages and accounts in a real SQLite file under ``tmp_path``
(``durable=False`` gives the ``--efemero`` in-memory store). Clients are
``wire.WireClient``s; absence is proven with a PING barrier, never by
sleeping. Passwords cost a real scrypt hash (tens of milliseconds), so the
tests create only the accounts they need.

Groups: version negotiation, accounts, rooms, v1 and v2 side by side, room
ordering, offline delivery and cursors, receipts, history, look-alike names
and the text rule on the wire, the command line (administration and the
data path).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import simulacao
from wire import HOST, REPO, TIMEOUT, UNLIMITED, ServerProcess, WireClient, wait_until

import armazem
import protocolo
import servidor

ERROR_LINE = re.compile(r"ERRO ([A-Z_]+) (\S.*)")
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
OK_V2 = re.compile(rf"OK ([1-9]\d*) ({WHEN})")
MSG_V2 = re.compile(rf"MSG ([1-9]\d*) ({WHEN}) (\S+) (\S+) (.*)", re.DOTALL)
ITEM = re.compile(rf"ITEM ([1-9]\d*) ({WHEN}) (\S+) (\S+) (.*)", re.DOTALL)
PASSWORD = "segredo1"
CLI_TIMEOUT = 30.0
"""Bound on one run of ``servidor.py`` as a command (Python start-up included)."""


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def make_server(tmp_path):
    """Factory: a started ``Servidor`` on 127.0.0.1 port 0; stopped at teardown.

    ``durable`` (the default) gives it a file-backed store at ``path`` (a
    fresh file under ``tmp_path`` unless given), closed after the server
    stops. Rate limits are off (``wire.UNLIMITED``) unless a test sets one.
    """
    started: list[tuple[servidor.Servidor, armazem.Store | None]] = []

    def make(*, durable: bool = True, path: Path | None = None,
             **options: object) -> servidor.Servidor:
        for name, value in UNLIMITED.items():
            options.setdefault(name, value)
        options.setdefault("discovery", False)
        store = None
        if durable:
            store = armazem.Store.open(str(path or tmp_path / f"chat{len(started)}.sqlite3"))
            options["store"] = store
        server = servidor.Servidor(servidor.ServerConfig(host=HOST, port=0, **options))
        try:
            server.start()
        except BaseException:
            if store is not None:
                store.close()
            raise
        started.append((server, store))
        return server

    yield make
    for server, store in started:
        server.stop()
        if store is not None:
            store.close()


@pytest.fixture
def server(make_server) -> servidor.Servidor:
    return make_server()


@pytest.fixture
def v2(connect):
    """Factory: a version-2 client registered as ``nick`` (with ``password``, an account)."""

    def registered(target: servidor.Servidor, nick: str, password: str | None = None,
                   **options: object) -> WireClient:
        client = connect(target, **options)
        assert client.request("OLA 2") == "OK"
        line = f"REGISTRAR {nick}" + (f" {password}" if password else "")
        assert client.request(line) == "OK", line
        return client

    return registered


@pytest.fixture
def v1(connect):
    """Factory: a version-1 client (no OLA) registered as ``nick``, with or without account."""

    def registered(target: servidor.Servidor, nick: str, password: str | None = None,
                   **options: object) -> WireClient:
        client = connect(target, **options)
        line = f"REGISTRAR {nick}" + (f" {password}" if password else "")
        assert client.request(line) == "OK", line
        return client

    return registered


def assert_error(line: str, code: str) -> None:
    """``line`` is one ERRO line with ``code`` and a non-empty human text."""
    match = ERROR_LINE.fullmatch(line)
    assert match, f"not an ERRO line: {line!r}"
    assert match.group(1) == code, f"expected ERRO {code}, got {line!r}"


def sent(client: WireClient, target: str, text: str) -> tuple[int, str]:
    """ENVIAR from a version-2 client; returns the (id, quando) of its ``OK``."""
    reply = client.request(f"ENVIAR {target} {text}")
    match = OK_V2.fullmatch(reply)
    assert match, f"ENVIAR {target}: {reply!r}"
    return int(match.group(1)), match.group(2)


def msg_v2(message_id: int, when: str, sender: str, target: str, text: str) -> str:
    return f"MSG {message_id} {when} {sender} {target} {text}"


def quit_(client: WireClient) -> None:
    """SAIR, and the connection ends with nothing more to read."""
    client.send_line("SAIR")
    assert client.expect_eof()[-1:] == ["OK"]


def history(client: WireClient, request: str) -> list[str]:
    """The ITEM lines of a HISTORICO reply (header and END checked)."""
    header = client.request(request)
    assert header.startswith("HISTORICO "), header
    count = int(header.split()[1])
    lines = client.read_lines(count + 1)
    assert lines[-1] == "END"
    return lines[:-1]


def item_ids(items: list[str]) -> list[int]:
    return [int(ITEM.fullmatch(item).group(1)) for item in items]


def member_lines(client: WireClient, room: str) -> list[str]:
    header = client.request(f"MEMBROS {room}")
    assert header.startswith("USUARIOS "), header
    lines = client.read_lines(int(header.split()[1]) + 1)
    assert lines[-1] == "END"
    return lines[:-1]


def rooms_listing(client: WireClient) -> list[str]:
    header = client.request("SALAS")
    assert header.startswith("SALAS "), header
    lines = client.read_lines(int(header.split()[1]) + 1)
    assert lines[-1] == "END"
    return lines[:-1]


# --------------------------------------------------------------------------
# Version negotiation


def test_ola_negotiates_and_refuses_unknown_versions_in_wire_form(server, connect):
    client = connect(server)
    assert client.request("OLA 2") == "OK"
    assert client.request("OLA 3") == "ERRO VERSAO versões suportadas: 1 2"
    assert client.request("OLA 0") == "ERRO VERSAO versões suportadas: 1 2"
    assert client.request("OLA dois") == "ERRO VERSAO versões suportadas: 1 2"
    assert client.request("ola 1") == "OK"
    assert_error(client.request("OLA"), "ARGUMENTOS")
    assert_error(client.request("OLA 2 3"), "ARGUMENTOS")
    assert client.request("REGISTRAR ana") == "OK"
    # After REGISTRAR: the registration state is checked before the version.
    assert_error(client.request("OLA 2"), "JA_REGISTRADO")
    assert_error(client.request("OLA 9"), "JA_REGISTRADO")
    # Unregistered again, the connection may change its version.
    assert client.request("CANCELAR_REGISTRO") == "OK"
    assert client.request("OLA 2") == "OK"
    assert client.request("REGISTRAR ana") == "OK"
    client.send_line("ENVIAR ana nota")
    first, second = client.read_lines(2)
    assert MSG_V2.fullmatch(first) and OK_V2.fullmatch(second)  # now in version 2's form


def test_without_ola_or_after_ola_1_a_connection_speaks_version_1(server, connect, v2):
    bia = v2(server, "bia")
    plain, back = connect(server), connect(server)
    plain.register("ana")
    assert back.request("OLA 2") == "OK"
    assert back.request("OLA 1") == "OK"  # the last OLA before REGISTRAR wins
    back.register("caio")
    for client, nick in ((plain, "ana"), (back, "caio")):
        assert client.request(f"ENVIAR bia oi de {nick}") == "OK"
        assert bia.read_line().endswith(f" {nick} bia oi de {nick}")
        sent(bia, nick, f"oi, {nick}")
        assert client.read_line() == f"MSG bia {nick} oi, {nick}"


def test_v2_ok_and_msg_carry_the_same_id_and_time(server, v2):
    ana, bia = v2(server, "ana"), v2(server, "bia")
    before = datetime.datetime.now(datetime.timezone.utc)
    ids = []
    for n in range(3):
        message_id, when = sent(ana, "bia", f"mensagem {n}")
        assert bia.read_line() == msg_v2(message_id, when, "ana", "bia", f"mensagem {n}")
        ids.append(message_id)
        accepted = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc)
        assert abs((accepted - before).total_seconds()) < 60  # UTC, not local time
    assert ids == sorted(ids) and len(set(ids)) == 3
    # Notes to oneself: the MSG comes before the OK, both with one id.
    ana.send_line("ENVIAR ANA lembrete")
    first, second = ana.read_lines(2)
    match = MSG_V2.fullmatch(first)
    assert match and match.group(3, 4, 5) == ("ana", "ana", "lembrete")
    assert second == f"OK {match.group(1)} {match.group(2)}"
    assert int(match.group(1)) > ids[-1]


# --------------------------------------------------------------------------
# Accounts


def test_registrar_with_password_creates_then_checks_the_account(server, connect):
    first = connect(server)
    assert first.request("REGISTRAR Ana segredo1") == "OK"
    other = connect(server)
    # Online: a right password is still APELIDO_EM_USO, a wrong one SENHA_INCORRETA.
    assert_error(other.request("REGISTRAR ana segredo1"), "APELIDO_EM_USO")
    assert_error(other.request("REGISTRAR ana errada99"), "SENHA_INCORRETA")
    quit_(first)
    assert other.request("REGISTRAR ANA segredo1") == "OK"  # any case, same account
    assert other.request("RETORNAR ana") == f"ENCONTRADO 127.0.0.1 {other.port}"
    quit_(other)
    third = connect(server)
    assert third.request("REGISTRAR ana errada99") == "ERRO SENHA_INCORRETA senha incorreta"
    assert third.request("REGISTRAR ana segredo1") == "OK"


def test_a_nickname_with_an_account_is_reserved_in_every_form(server, connect):
    owner = connect(server)
    assert owner.request("REGISTRAR ana segredo1") == "OK"
    quit_(owner)
    watcher = connect(server)
    watcher.register("vigia")
    assert watcher.request("ASSINAR") == "OK"
    client = connect(server)
    assert client.request("REGISTRAR ana") == (
        "ERRO APELIDO_RESERVADO ana tem conta: registre-se com REGISTRAR ana <senha>")
    assert_error(client.request("REGISTRAR ANA"), "APELIDO_RESERVADO")
    assert_error(client.request("REGISTRAR ａｎａ"), "APELIDO_RESERVADO")  # same key
    assert_error(client.request("REGISTRAR ana 10.0.0.5 5000"), "APELIDO_RESERVADO")
    assert client.request("LISTAR") == "USUARIOS 1"
    client.read_lines(2)
    assert watcher.barrier() == []  # not even for an instant in the directory
    # A nickname without an account is taken as in version 1.
    assert client.request("REGISTRAR bia") == "OK"


def test_a_password_registration_of_a_nickname_online_without_account(server, connect):
    guest = connect(server)
    guest.register("bia")
    other = connect(server)
    assert_error(other.request("REGISTRAR bia segredo1"), "APELIDO_EM_USO")
    quit_(guest)
    # No account was created by the refused attempt: the plain form still works.
    assert other.request("REGISTRAR bia") == "OK"


@pytest.mark.parametrize(("password", "ok"), [
    ("12345", False), ("x" * 129, False), ("abc\x01def", False), ("abc\x7fdef", False),
    ("abc\x85def", False), ("123456", True), ("x" * 128, True), ("ãçé😀ßø", True),
])
def test_password_rules_on_the_wire(server, connect, password, ok):
    client = connect(server)
    client.send(f"REGISTRAR conta {password}\n".encode())
    reply = client.read_line()
    if ok:
        assert reply == "OK"
        quit_(client)
        again = connect(server)
        again.send(f"REGISTRAR CONTA {password}\n".encode())
        assert again.read_line() == "OK"
    else:
        assert_error(reply, "SENHA_INVALIDA")
        assert client.request("REGISTRAR conta") == "OK"  # no account was created


def test_a_tab_is_a_control_character_in_a_password(server, connect):
    client = connect(server)
    assert_error(client.request("REGISTRAR conta abc\tdef"), "SENHA_INVALIDA")


def test_registrar_precedence_with_password(server, connect):
    owner = connect(server)
    assert owner.request("REGISTRAR ana segredo1") == "OK"
    client = connect(server)
    for line, code in [
        ("REGISTRAR", "ARGUMENTOS"),
        ("REGISTRAR ana a b c", "ARGUMENTOS"),
        ("REGISTRAR b@d! 123", "APELIDO_INVALIDO"),      # name before password
        ("REGISTRAR ana 123", "SENHA_INVALIDA"),         # password form before the account
        ("REGISTRAR bia 123", "SENHA_INVALIDA"),
        ("REGISTRAR ana segredo2", "SENHA_INCORRETA"),  # before "online"
        ("REGISTRAR ana segredo1", "APELIDO_EM_USO"),
    ]:
        assert_error(client.request(line), code)
    for line in ["REGISTRAR b@d! 123", "REGISTRAR ana 123", "REGISTRAR x segredo1",
                 "REGISTRAR ana"]:
        assert_error(owner.request(line), "JA_REGISTRADO")


def test_sem_conta_on_a_server_without_disk(make_server, connect):
    server = make_server(durable=False)
    client = connect(server)
    assert client.request("REGISTRAR ana segredo1") == (
        "ERRO SEM_CONTA este servidor não guarda contas (modo efêmero); registre-se sem senha")
    for line in ["RECEBIDO 1", "SENHA segredo1 segredo2", "HISTORICO ana", "HISTORICO #sala"]:
        assert_error(client.request(line), "NAO_REGISTRADO")
    client.register("ana")
    for line in ["RECEBIDO 1", "SENHA segredo1 segredo2", "HISTORICO bia"]:
        assert_error(client.request(line), "SEM_CONTA")
    # Without a disk a room still has its recent history, in memory.
    assert client.request("ENTRAR #sala") == "OK"
    assert client.request("ENVIAR #sala oi") == "OK"
    [item] = history(client, "HISTORICO #sala")
    assert ITEM.fullmatch(item).group(3, 4, 5) == ("ana", "#sala", "oi")
    # And an offline nickname is not found: no accounts, nothing waits.
    assert_error(client.request("ENVIAR bia oi"), "NAO_ENCONTRADO")


class ShiftedTime:
    """``servidor``'s view of the ``time`` module, with a monotonic clock a test moves.

    Only the server module sees it (``monkeypatch`` replaces its ``time``);
    the server runs with every timeout that a jump could trip turned off.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def shifted_time(monkeypatch) -> ShiftedTime:
    clock = ShiftedTime()
    monkeypatch.setattr(servidor, "time", clock)
    return clock


def jump_free_server(make_server, **options: object) -> servidor.Servidor:
    """A server whose clocks may jump: no TEMPO, send or stall timeout to trip."""
    return make_server(register_timeout=0, send_timeout=0, stall_timeout=0, **options)


def test_five_wrong_passwords_block_the_address_until_60_s_after_the_fifth(
        make_server, connect, shifted_time):
    server = jump_free_server(make_server)
    owner = connect(server)
    assert owner.request("REGISTRAR ana segredo1") == "OK"
    quit_(owner)
    guesser = connect(server)
    for _ in range(5):
        assert_error(guesser.request("REGISTRAR ana errada99"), "SENHA_INCORRETA")
    # Every REGISTRAR with a password from this address, right or wrong, new account or not.
    for line in ["REGISTRAR ana segredo1", "REGISTRAR ana errada99", "REGISTRAR nova segredo1"]:
        assert_error(guesser.request(line), "LIMITE")
    assert_error(connect(server).request("REGISTRAR ana segredo1"), "LIMITE")
    # Other addresses are not blocked, and the plain form is not a password attempt.
    elsewhere = connect(server, source_ip="127.0.0.2")
    assert elsewhere.request("REGISTRAR ana segredo1") == "OK"
    quit_(elsewhere)
    assert guesser.request("REGISTRAR livre") == "OK"
    assert guesser.request("CANCELAR_REGISTRO") == "OK"
    shifted_time.offset += 59.5
    assert_error(guesser.request("REGISTRAR ana segredo1"), "LIMITE")
    shifted_time.offset += 1.0
    assert guesser.request("REGISTRAR ana segredo1") == "OK"


def test_the_block_lasts_60_s_after_the_fifth_failure_not_the_first(
        make_server, connect, shifted_time):
    server = jump_free_server(make_server)
    owner = connect(server)
    assert owner.request("REGISTRAR ana segredo1") == "OK"
    quit_(owner)
    guesser = connect(server)
    for _ in range(5):  # at 0, 10, 20, 30 and 40 s: five within 60 s
        assert_error(guesser.request("REGISTRAR ana errada99"), "SENHA_INCORRETA")
        shifted_time.offset += 10.0
    shifted_time.offset += 11.0  # 61 s after the first failure, 21 s after the fifth
    assert_error(guesser.request("REGISTRAR ana segredo1"), "LIMITE")
    shifted_time.offset += 38.5  # 59.5 s after the fifth
    assert_error(guesser.request("REGISTRAR ana segredo1"), "LIMITE")
    shifted_time.offset += 1.0
    assert guesser.request("REGISTRAR ana segredo1") == "OK"


def test_failures_spread_over_more_than_60_s_do_not_block(make_server, connect, shifted_time):
    server = jump_free_server(make_server)
    owner = connect(server)
    assert owner.request("REGISTRAR ana segredo1") == "OK"
    quit_(owner)
    guesser = connect(server)
    for _ in range(8):
        assert_error(guesser.request("REGISTRAR ana errada99"), "SENHA_INCORRETA")
        shifted_time.offset += 16.0  # never five within 60 s
    assert guesser.request("REGISTRAR ana segredo1") == "OK"


def test_wrong_current_passwords_in_senha_count_too(make_server, connect, shifted_time):
    server = jump_free_server(make_server)
    client = connect(server)
    assert client.request("REGISTRAR ana segredo1") == "OK"
    for _ in range(5):
        assert_error(client.request("SENHA errada99 novasenha"), "SENHA_INCORRETA")
    assert_error(client.request("SENHA segredo1 novasenha"), "LIMITE")
    shifted_time.offset += 60.5
    assert client.request("SENHA segredo1 novasenha") == "OK"


def test_an_address_creates_a_limited_number_of_accounts(make_server, connect, shifted_time):
    server = jump_free_server(make_server, accounts_per_hour=2)
    client = connect(server)
    for nick in ("conta1", "conta2"):
        assert client.request(f"REGISTRAR {nick} segredo1") == "OK"
        assert client.request("CANCELAR_REGISTRO") == "OK"
    assert_error(client.request("REGISTRAR conta3 segredo1"), "LIMITE")
    # Logging in to an existing account is not creating one.
    assert client.request("REGISTRAR conta1 segredo1") == "OK"
    assert client.request("CANCELAR_REGISTRO") == "OK"
    elsewhere = connect(server, source_ip="127.0.0.3")
    assert elsewhere.request("REGISTRAR conta3 segredo1") == "OK"
    shifted_time.offset += 3600.5
    assert client.request("REGISTRAR conta4 segredo1") == "OK"


def test_senha_changes_the_password(server, connect):
    client = connect(server)
    assert_error(client.request("SENHA segredo1 novasenha"), "NAO_REGISTRADO")
    assert_error(client.request("SENHA segredo1"), "ARGUMENTOS")
    client.register("semconta")
    assert_error(client.request("SENHA segredo1 novasenha"), "SEM_CONTA")
    assert client.request("CANCELAR_REGISTRO") == "OK"
    assert client.request("REGISTRAR ana segredo1") == "OK"
    assert_error(client.request("SENHA segredo1 curta"), "SENHA_INVALIDA")
    assert_error(client.request("SENHA errada99 curta"), "SENHA_INVALIDA")  # form first
    assert client.request("SENHA errada99 novasenha") == (
        "ERRO SENHA_INCORRETA senha atual incorreta")
    assert client.request("SENHA segredo1 novasenha") == "OK"
    quit_(client)
    again = connect(server)
    assert_error(again.request("REGISTRAR ana segredo1"), "SENHA_INCORRETA")
    assert again.request("REGISTRAR ana novasenha") == "OK"


def test_passwords_never_reach_the_log(server, connect, caplog):
    caplog.set_level("DEBUG")
    client = connect(server)
    assert client.request("REGISTRAR ana Sigilo-123") == "OK"
    assert client.request("SENHA Sigilo-123 Outra-456") == "OK"
    quit_(client)
    again = connect(server)
    assert_error(again.request("REGISTRAR ana Errada-789"), "SENHA_INCORRETA")
    assert again.request("REGISTRAR ana Outra-456") == "OK"
    assert any("ana" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        for secret in ("Sigilo-123", "Outra-456", "Errada-789"):
            assert secret not in record.getMessage()


# --------------------------------------------------------------------------
# Rooms


def test_rooms_entrar_membros_salas_deixar_with_pushes(server, connect, v2):
    ana, bia = v2(server, "ana"), v2(server, "bia")
    caio = connect(server)
    caio.register("caio")  # version 1
    assert ana.request("ENTRAR #Geral") == "OK"
    assert bia.request("ENTRAR #GERAL") == "OK"  # the first spelling is the one shown
    assert ana.read_line() == "ENTROU #Geral bia"
    assert caio.request("ENTRAR #geral") == "OK"
    assert ana.read_line() == "ENTROU #Geral caio"
    assert bia.read_line() == "ENTROU #Geral caio"
    assert caio.request("ENTRAR #geral") == "OK"  # already a member: OK, and no push
    assert bia.request("ENTRAR #redes-2026") == "OK"
    stranger = connect(server)  # MEMBROS and SALAS need no registration
    assert member_lines(stranger, "#gErAl") == [
        f"USUARIO ana 127.0.0.1 {ana.port}", f"USUARIO bia 127.0.0.1 {bia.port}",
        f"USUARIO caio 127.0.0.1 {caio.port}"]
    assert rooms_listing(stranger) == ["SALA #Geral 3", "SALA #redes-2026 1"]
    assert caio.request("DEIXAR #GERAL") == "OK"
    assert ana.read_line() == "SAIU #Geral caio"
    assert bia.read_line() == "SAIU #Geral caio"
    assert bia.request("DEIXAR #redes-2026") == "OK"  # the last member: the room ends
    assert rooms_listing(stranger) == ["SALA #Geral 2"]
    assert member_lines(stranger, "#redes-2026") == []
    for client in (ana, bia, caio, stranger):
        assert client.barrier() == []


def test_a_room_ends_with_its_last_member_and_a_new_spelling_starts(server, v2):
    ana = v2(server, "ana")
    assert ana.request("ENTRAR #Sala") == "OK"
    assert ana.request("DEIXAR #sala") == "OK"
    assert ana.request("ENTRAR #SALA") == "OK"
    assert rooms_listing(ana) == ["SALA #SALA 1"]


def test_room_errors_and_their_precedence(server, connect, v2):
    stranger = connect(server)
    for line, code in [
        ("ENTRAR", "ARGUMENTOS"), ("ENTRAR #a #b", "ARGUMENTOS"), ("DEIXAR", "ARGUMENTOS"),
        ("MEMBROS", "ARGUMENTOS"), ("SALAS x", "ARGUMENTOS"), ("ENVIAR #sala", "ARGUMENTOS"),
        ("ENTRAR #b@d", "NAO_REGISTRADO"),  # registration before the room's name
        ("DEIXAR #sala", "NAO_REGISTRADO"), ("ENVIAR #sala oi", "NAO_REGISTRADO"),
        ("MEMBROS #b@d", "SALA_INVALIDA"), ("MEMBROS sala", "SALA_INVALIDA"),
    ]:
        assert_error(stranger.request(line), code)
    old = connect(server)
    assert old.request("REGISTRAR velho 10.0.0.5 5000") == "OK"
    for line in ["ENTRAR #sala", "ENTRAR #b@d", "DEIXAR #sala", "ENVIAR #sala oi"]:
        assert_error(old.request(line), "SO_DIRETO")
    ana = v2(server, "ana")
    for line, code in [
        ("ENTRAR #", "SALA_INVALIDA"), ("ENTRAR #a!", "SALA_INVALIDA"),
        ("ENTRAR #" + "x" * 33, "SALA_INVALIDA"), ("ENTRAR #аb", "SALA_INVALIDA"),
        ("ENTRAR ##", "SALA_INVALIDA"), ("DEIXAR sala", "SALA_INVALIDA"),
        ("DEIXAR #b@d", "SALA_INVALIDA"), ("ENVIAR #b@d oi", "SALA_INVALIDA"),
        ("DEIXAR #sala", "NAO_MEMBRO"), ("ENVIAR #sala oi", "NAO_MEMBRO"),
    ]:
        assert_error(ana.request(line), code)
    assert ana.request("ENTRAR #" + "x" * 32) == "OK"
    assert member_lines(stranger, "#vazia") == []


def test_fifty_rooms_per_connection(server, v2):
    ana = v2(server, "ana")
    ana.send("".join(f"ENTRAR #s{n}\n" for n in range(50)).encode())
    assert ana.read_lines(50) == ["OK"] * 50
    assert ana.request("ENTRAR #s51") == (
        f"ERRO LIMITE no máximo {protocolo.MAX_ROOMS_PER_CONNECTION} salas por conexão")
    assert ana.request("ENTRAR #S7") == "OK"  # already a member: not a 51st room
    assert ana.request("DEIXAR #s0") == "OK"
    assert ana.request("ENTRAR #s51") == "OK"
    assert len(rooms_listing(ana)) == 50


def test_room_messages_reach_the_other_members_in_their_own_form(server, connect, v2, v1):
    ana, bia = v2(server, "ana"), v2(server, "bia")
    caio = v1(server, "caio")
    outsider = v2(server, "davi")
    for client in (ana, bia, caio):
        assert client.request("ENTRAR #Geral") == "OK"
    ana.barrier()
    bia.barrier()
    message_id, when = sent(ana, "#geral", "oi, turma")
    assert bia.read_line() == msg_v2(message_id, when, "ana", "#Geral", "oi, turma")
    assert caio.read_line() == "MSG ana #Geral oi, turma"
    assert caio.request("ENVIAR #GERAL oi de v1") == "OK"
    bia_line, ana_line = bia.read_line(), ana.read_line()
    assert bia_line == ana_line
    match = MSG_V2.fullmatch(bia_line)
    assert match and match.group(3, 4, 5) == ("caio", "#Geral", "oi de v1")
    assert int(match.group(1)) > message_id
    for client in (ana, bia, caio, outsider):  # never to the sender, never to non-members
        assert client.barrier() == []


@pytest.mark.parametrize("exit_path", ["SAIR", "CANCELAR_REGISTRO", "close", "reset"])
def test_every_exit_leaves_every_room(server, connect, v2, exit_path):
    watcher = v2(server, "vigia")
    assert watcher.request("ASSINAR") == "OK"
    leaver = v2(server, "ana")
    assert watcher.read_line() == "ENTROU ana"
    for room in ("#a", "#b", "#so-dela"):
        assert leaver.request(f"ENTRAR {room}") == "OK"
    for room in ("#a", "#b"):
        assert watcher.request(f"ENTRAR {room}") == "OK"
    assert leaver.barrier() == ["ENTROU #a vigia", "ENTROU #b vigia"]
    if exit_path in ("SAIR", "CANCELAR_REGISTRO"):
        assert leaver.request(exit_path) == "OK"
    elif exit_path == "close":
        leaver.close()
    else:
        leaver.reset()
    # The rooms in the order they were joined, then the registration.
    assert watcher.read_lines(3) == ["SAIU #a ana", "SAIU #b ana", "SAIU ana"]
    assert rooms_listing(watcher) == ["SALA #a 1", "SALA #b 1"]
    assert member_lines(watcher, "#a") == [f"USUARIO vigia 127.0.0.1 {watcher.port}"]
    if exit_path == "CANCELAR_REGISTRO":  # the connection stays, in no room
        assert leaver.request("REGISTRAR ana") == "OK"
        assert watcher.read_line() == "ENTROU ana"
        assert_error(leaver.request("ENVIAR #a oi"), "NAO_MEMBRO")
        assert_error(leaver.request("DEIXAR #a"), "NAO_MEMBRO")
    assert watcher.barrier() == []


def test_a_slow_member_is_dropped_and_the_room_sender_still_gets_ok(make_server, connect):
    server = make_server(max_pending=64 * 1024, stall_timeout=0.5)
    slow = connect(server, rcvbuf=4096)
    slow.register("lento")
    assert slow.request("ENTRAR #sala") == "OK"  # and never reads again
    reader, sender = connect(server), connect(server)
    reader.register("leitor")
    sender.register("falante")
    for client in (reader, sender):
        assert client.request("ENTRAR #sala") == "OK"
    reader.barrier()
    big = "x" * 3000
    count = 400  # 1.2 MB: far past the slow member's 64 KiB bound
    replies: list[str] = []

    def talk() -> None:
        for _ in range(0, count, 50):
            sender.send(f"ENVIAR #sala {big}\n".encode() * 50)
            target = len(replies) + 50
            while len(replies) < target:
                line = sender.read_line(10)
                if line != "SAIU #sala lento":  # the sender is a member too
                    replies.append(line)

    talking = threading.Thread(target=talk, daemon=True)
    talking.start()
    got = reader.read_until(lambda line: line == "SAIU #sala lento", timeout=20)
    rest = [reader.read_line(10) for _ in range(count - (len(got) - 1))]
    talking.join(20)
    assert not talking.is_alive()
    assert replies == ["OK"] * count
    assert [line for line in got + rest if line != "SAIU #sala lento"] == [
        f"MSG falante #sala {big}"] * count
    assert [line.split()[1] for line in member_lines(reader, "#sala")] == ["falante", "leitor"]


# --------------------------------------------------------------------------
# Room ordering: one order for every member


def test_every_member_sees_one_order(server, connect, v2, v1):
    senders = [v2(server, f"s{n}") if n % 2 else v1(server, f"s{n}") for n in range(4)]
    listeners = [v2(server, "ouve2"), v1(server, "ouve1")]
    members = senders + listeners
    for client in members:
        assert client.request("ENTRAR #ordem") == "OK"
    for client in members:
        client.barrier()
    per_sender = 100
    start = threading.Barrier(len(senders), timeout=TIMEOUT)
    errors: list[BaseException] = []

    def stream(n: int) -> None:
        try:
            client = senders[n]
            start.wait()
            for batch in range(0, per_sender, 25):
                client.send("".join(f"ENVIAR #ordem s{n}:{k}\n"
                                    for k in range(batch, batch + 25)).encode())
                # Replies and messages from the others arrive mixed: keep both.
                oks = 0
                while oks < 25:
                    line = client.read_line(10)
                    if line.startswith("OK"):
                        oks += 1
                    else:
                        received[n].append(line)
        except BaseException as exc:
            errors.append(exc)

    received: list[list[str]] = [[] for _ in members]
    threads = [threading.Thread(target=stream, args=(n,), daemon=True)
               for n in range(len(senders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    total = per_sender * len(senders)
    for index, client in enumerate(members):
        expected = total - (per_sender if index < len(senders) else 0)
        while len(received[index]) < expected:
            received[index].append(client.read_line(10))
        assert client.barrier() == []

    def content(line: str) -> tuple[str, str]:
        match = MSG_V2.fullmatch(line)
        if match:
            return match.group(3), match.group(5)
        verb, sender, room, text = line.split(" ", 3)
        assert (verb, room) == ("MSG", "#ordem"), line
        return sender, text

    reference = received[len(senders)]  # the version-2 listener sees everything
    ids = [int(MSG_V2.fullmatch(line).group(1)) for line in reference]
    assert ids == sorted(ids) and len(set(ids)) == total
    order = [content(line) for line in reference]
    for n in range(len(senders)):  # per-sender order is the order it sent in
        assert [text for sender, text in order if sender == f"s{n}"] == [
            f"s{n}:{k}" for k in range(per_sender)]
    for index, lines in enumerate(received):
        nick = f"s{index}" if index < len(senders) else None
        assert [content(line) for line in lines] == [c for c in order if c[0] != nick], index
        if index % 2 and index < len(senders):  # v2 senders: the same ids as the reference
            assert [line for line in lines] == [line for line in reference
                                                if content(line)[0] != nick]


# --------------------------------------------------------------------------
# Version 1 and version 2 side by side, one conversation


def test_v1_and_v2_in_one_conversation(server, v1, v2):
    ana = v1(server, "ana")
    bia = v2(server, "bia")
    assert ana.request("ENVIAR bia oi, bia") == "OK"
    match = MSG_V2.fullmatch(bia.read_line())
    assert match and match.group(3, 4, 5) == ("ana", "bia", "oi, bia")
    message_id, _ = sent(bia, "ANA", "oi, ana")
    assert ana.read_line() == "MSG bia ana oi, ana"
    assert message_id > int(match.group(1))
    assert bytes(ana.transcript) == b"OK\nOK\nMSG bia ana oi, ana\n"
    assert ana.barrier() == [] and bia.barrier() == []


# --------------------------------------------------------------------------
# Offline delivery and cursors


def test_offline_account_gets_its_messages_on_return_oldest_first(server, connect, v2):
    bia = v2(server, "Bia", PASSWORD)
    quit_(bia)
    ana = v2(server, "ana")
    waiting = [sent(ana, "bia", f"enquanto fora {n}") for n in range(3)]
    assert_error(ana.request("ENVIAR caio oi"), "NAO_ENCONTRADO")  # no account: as in v1
    back = connect(server)
    assert back.request("OLA 2") == "OK"
    assert back.request(f"REGISTRAR bia {PASSWORD}") == "OK"
    # Stored with the account's spelling; pushed right after the OK, oldest first.
    assert back.read_lines(3) == [msg_v2(i, when, "ana", "Bia", f"enquanto fora {n}")
                                  for n, (i, when) in enumerate(waiting)]
    newer, when = sent(ana, "bia", "agora online")
    assert back.read_line() == msg_v2(newer, when, "ana", "bia", "agora online")
    assert back.barrier() == []


def test_a_v1_sender_to_an_offline_account_gets_ok(server, v1, v2):
    bia = v2(server, "bia", PASSWORD)
    quit_(bia)
    ana = v1(server, "ana")
    assert ana.request("ENVIAR bia guardada") == "OK"
    assert_error(ana.request("ENVIAR caio perdida"), "NAO_ENCONTRADO")
    back = v1(server, "bia", PASSWORD)
    assert back.read_line() == "MSG ana bia guardada"


def test_catch_up_pages_come_before_messages_sent_meanwhile(server, connect, v2):
    bia = v2(server, "bia", PASSWORD)
    quit_(bia)
    ana = v2(server, "ana")
    waiting = 450  # more than two catch-up pages
    for batch in range(0, waiting, 150):
        ana.send("".join(f"ENVIAR bia antes {n}\n" for n in range(batch, batch + 150)).encode())
        assert all(OK_V2.fullmatch(line) for line in ana.read_lines(150))
    during = 100
    back = connect(server)
    assert back.request("OLA 2") == "OK"
    back.send(f"REGISTRAR bia {PASSWORD}\n".encode())
    ana.send("".join(f"ENVIAR bia durante {n}\n" for n in range(during)).encode())
    assert back.read_line(10) == "OK"
    lines = [back.read_line(10) for _ in range(waiting + during)]
    assert all(OK_V2.fullmatch(line) for line in ana.read_lines(during))
    parsed = [MSG_V2.fullmatch(line) for line in lines]
    ids = [int(match.group(1)) for match in parsed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    texts = [match.group(5) for match in parsed]
    assert texts == [f"antes {n}" for n in range(waiting)] + [
        f"durante {n}" for n in range(during)]
    assert back.barrier() == []


def test_v2_without_recebido_gets_the_messages_again(server, connect, v2):
    bia = v2(server, "bia", PASSWORD)
    ana = v2(server, "ana")
    delivered = []
    for n in range(3):
        message_id, when = sent(ana, "bia", f"m{n}")
        delivered.append(msg_v2(message_id, when, "ana", "bia", f"m{n}"))
        assert bia.read_line() == delivered[-1]
    quit_(bia)
    again = v2(server, "bia", PASSWORD)
    assert again.read_lines(3) == delivered  # at least once: the id lets the client drop them
    last = int(MSG_V2.fullmatch(delivered[1]).group(1))
    assert again.request(f"RECEBIDO {last}") == "OK"
    quit_(again)
    third = v2(server, "bia", PASSWORD)
    assert third.read_line() == delivered[2]
    assert third.request(f"RECEBIDO {last + 1}") == "OK"
    assert third.barrier() == []
    quit_(third)
    assert v2(server, "bia", PASSWORD).barrier() == []


def test_recebido_never_moves_back_and_is_clamped_to_the_newest_id(server, v2):
    bia = v2(server, "bia", PASSWORD)
    ana = v2(server, "ana")
    first, _ = sent(ana, "bia", "um")
    bia.read_line()
    assert bia.request("RECEBIDO 999999999") == "OK"  # far past the newest id
    second, when = sent(ana, "bia", "dois")  # newer than the cursor: still pending
    assert bia.read_line() == msg_v2(second, when, "ana", "bia", "dois")
    assert bia.request(f"RECEBIDO {first}") == "OK"  # backwards: changes nothing
    quit_(bia)
    again = v2(server, "bia", PASSWORD)
    assert again.read_line() == msg_v2(second, when, "ana", "bia", "dois")
    assert again.barrier() == []


def test_recebido_errors(server, connect, v2):
    client = connect(server)
    for line, code in [("RECEBIDO", "ARGUMENTOS"), ("RECEBIDO 0", "ARGUMENTOS"),
                       ("RECEBIDO -1", "ARGUMENTOS"), ("RECEBIDO x", "ARGUMENTOS"),
                       ("RECEBIDO 1 2", "ARGUMENTOS"), ("RECEBIDO 1", "NAO_REGISTRADO")]:
        assert_error(client.request(line), code)
    guest = v2(server, "visita")
    assert guest.request("RECEBIDO 1") == (
        "ERRO SEM_CONTA RECEBIDO vale só para contas (com senha)")


def test_a_v1_account_has_received_what_was_written_to_it(server, v1, v2):
    bia = v1(server, "bia", PASSWORD)
    ana = v2(server, "ana")
    for n in range(3):
        sent(ana, "bia", f"m{n}")
        assert bia.read_line() == f"MSG ana bia m{n}"
    quit_(bia)
    back = v1(server, "bia", PASSWORD)
    assert back.barrier() == []  # written to the socket: received, never pushed again
    quit_(back)
    sent(ana, "bia", "fora")
    as_v2 = v2(server, "bia", PASSWORD)
    match = MSG_V2.fullmatch(as_v2.read_line())
    assert match and match.group(5) == "fora"
    assert as_v2.barrier() == []


def test_a_v1_connection_that_changes_accounts_keeps_each_cursor(server, connect, v1, v2):
    """The cursor is the account's: one session's ids must not hide the next one's."""
    bia = v1(server, "bia", PASSWORD)
    quit_(bia)
    ana = v2(server, "ana")
    sent(ana, "bia", "para a bia")  # the older message, waiting for bia
    shared = connect(server)
    assert shared.request(f"REGISTRAR caio {PASSWORD}") == "OK"
    sent(ana, "caio", "para o caio")  # a newer id, written to caio
    assert shared.read_line() == "MSG ana caio para o caio"
    assert shared.request("CANCELAR_REGISTRO") == "OK"
    assert shared.request(f"REGISTRAR bia {PASSWORD}") == "OK"
    assert shared.read_line() == "MSG ana bia para a bia"
    assert shared.request("CANCELAR_REGISTRO") == "OK"
    assert shared.request(f"REGISTRAR bia {PASSWORD}") == "OK"
    assert shared.barrier() == []  # written once: received, never pushed again


def test_the_pending_limit_of_an_offline_account(make_server, v2):
    server = make_server(max_pending_per_account=3)
    bia = v2(server, "bia", PASSWORD)
    quit_(bia)
    ana = v2(server, "ana")
    for n in range(3):
        sent(ana, "bia", f"m{n}")
    assert ana.request("ENVIAR bia m3") == "ERRO LIMITE bia já tem 3 mensagens esperando"
    back = v2(server, "bia", PASSWORD)
    lines = back.read_lines(3)
    # Online, the limit does not apply.
    sent(ana, "bia", "online 1")
    sent(ana, "bia", "online 2")
    back.read_lines(2)
    assert back.request(f"RECEBIDO {MSG_V2.fullmatch(lines[-1]).group(1)}") == "OK"
    quit_(back)
    sent(ana, "bia", "cabe")  # two still unacknowledged: room for one more
    assert_error(ana.request("ENVIAR bia não cabe"), "LIMITE")


def test_messages_to_an_account_survive_a_restart(make_server, tmp_path, connect):
    path = tmp_path / "reinicio.sqlite3"
    first = make_server(path=path)
    ana = connect(first)
    assert ana.request("OLA 2") == "OK"
    assert ana.request(f"REGISTRAR ana {PASSWORD}") == "OK"
    bia = connect(first)
    assert bia.request(f"REGISTRAR bia {PASSWORD}") == "OK"
    quit_(bia)
    message_id, when = sent(ana, "bia", "depois do reinício")
    first.stop()
    first.config.store.close()
    second = make_server(path=path)
    back = connect(second)
    assert back.request("OLA 2") == "OK"
    assert back.request(f"REGISTRAR bia {PASSWORD}") == "OK"
    assert back.read_line() == msg_v2(message_id, when, "ana", "bia", "depois do reinício")
    # Ids keep growing across restarts.
    assert sent(back, "ana", "resposta")[0] > message_id


# --------------------------------------------------------------------------
# Receipts


def test_entregue_when_the_recipient_acknowledges(server, v2, v1):
    ana = v2(server, "ana", PASSWORD)
    bia = v2(server, "bia", PASSWORD)
    message_id, _ = sent(ana, "bia", "recebeu?")
    bia.read_line()
    assert ana.barrier() == []  # pushed is not received
    assert bia.request(f"RECEBIDO {message_id}") == "OK"
    assert ana.read_line() == f"ENTREGUE {message_id} bia"
    assert bia.request(f"RECEBIDO {message_id}") == "OK"  # again: no second receipt
    assert ana.barrier() == []
    # No receipt for a sender without account, a version-1 sender or a room.
    guest = v2(server, "visita")
    old = v1(server, "velho", PASSWORD)
    for client in (ana, bia):
        assert client.request("ENTRAR #sala") == "OK"
    ana.barrier()
    room_id, _ = sent(ana, "#sala", "na sala")
    guest_id, _ = sent(guest, "bia", "sem conta")
    assert old.request("ENVIAR bia versão 1") == "OK"
    lines = bia.read_lines(3)
    newest = max(int(line.split()[1]) for line in lines)
    assert newest > max(room_id, guest_id)
    assert bia.request(f"RECEBIDO {newest}") == "OK"
    for client in (ana, guest, old):
        assert client.barrier() == []


def test_a_receipt_waits_for_its_sender_to_come_back_on_version_2(server, connect, v2, v1):
    ana = v2(server, "ana", PASSWORD)
    bia = v2(server, "bia", PASSWORD)
    quit_(bia)
    first, _ = sent(ana, "bia", "um")
    second, _ = sent(ana, "bia", "dois")
    quit_(ana)
    # Online on version 1 when the receipts fall due: no ENTREGUE (a version-2 push).
    as_v1 = v1(server, "ana", PASSWORD)
    bia = v2(server, "bia", PASSWORD)
    bia.read_lines(2)
    assert bia.request(f"RECEBIDO {second}") == "OK"
    sent(bia, "ana", "resposta")
    assert as_v1.barrier() == ["MSG bia ana resposta"]
    quit_(as_v1)
    back = connect(server)
    assert back.request("OLA 2") == "OK"
    assert back.request(f"REGISTRAR ana {PASSWORD}") == "OK"
    # The v1 session received the answer; what is due now is the receipts.
    assert back.read_lines(2) == [f"ENTREGUE {first} bia", f"ENTREGUE {second} bia"]
    assert back.barrier() == []
    quit_(back)
    assert v2(server, "ana", PASSWORD).barrier() == []  # each receipt once


def test_pending_messages_come_before_the_receipts(server, connect, v2):
    ana = v2(server, "ana", PASSWORD)
    bia = v2(server, "bia", PASSWORD)
    message_id, _ = sent(ana, "bia", "pergunta")
    quit_(ana)
    bia.read_line()
    assert bia.request(f"RECEBIDO {message_id}") == "OK"
    answer, when = sent(bia, "ana", "resposta")
    back = connect(server)
    assert back.request("OLA 2") == "OK"
    assert back.request(f"REGISTRAR ana {PASSWORD}") == "OK"
    assert back.read_lines(2) == [msg_v2(answer, when, "bia", "ana", "resposta"),
                                  f"ENTREGUE {message_id} bia"]


def test_a_v1_recipient_account_makes_receipts_due_by_what_it_was_written(server, v1, v2):
    ana = v2(server, "ana", PASSWORD)
    bia = v1(server, "bia", PASSWORD)
    message_id, _ = sent(ana, "bia", "para a versão 1")
    assert bia.read_line() == "MSG ana bia para a versão 1"
    # Its cursor is saved periodically (and when it leaves): the receipt follows.
    assert ana.read_line(timeout=5) == f"ENTREGUE {message_id} bia"


# --------------------------------------------------------------------------
# History


def test_room_history_pages_back_oldest_first(server, connect, v2):
    ana = v2(server, "ana")
    assert ana.request("ENTRAR #Hist") == "OK"
    count = 120
    ana.send("".join(f"ENVIAR #hist n{n}\n" for n in range(count)).encode())
    oks = [OK_V2.fullmatch(line) for line in ana.read_lines(count)]
    ids = [int(match.group(1)) for match in oks]
    reader = connect(server)
    reader.register("leitor")  # any registration may read a room, member or not
    newest = history(reader, "HISTORICO #HIST")
    assert newest == [f"ITEM {ids[n]} {oks[n].group(2)} ana #Hist n{n}" for n in range(70, 120)]
    assert item_ids(history(reader, "HISTORICO #hist 0")) == ids[70:]  # 0: the newest
    assert item_ids(history(reader, f"HISTORICO #hist {ids[70]}")) == ids[20:70]
    assert item_ids(history(reader, f"HISTORICO #hist {ids[20]} 100")) == ids[:20]
    assert item_ids(history(reader, f"HISTORICO #hist {ids[0]}")) == []
    assert item_ids(history(reader, f"HISTORICO #hist {ids[10]} 3")) == ids[7:10]
    assert history(reader, "HISTORICO #outra") == []
    assert ana.request("DEIXAR #hist") == "OK"  # a room without members keeps its history
    assert item_ids(history(reader, "HISTORICO #hist 0 1")) == ids[-1:]


def test_history_limit_is_served_as_500_at_most(server, v2):
    ana = v2(server, "ana")
    assert ana.request("ENTRAR #muitas") == "OK"
    count = 520
    for batch in range(0, count, 130):
        ana.send("".join(f"ENVIAR #muitas {n}\n" for n in range(batch, batch + 130)).encode())
        ana.read_lines(130)
    items = history(ana, "HISTORICO #muitas 0 999999999")
    assert len(items) == protocolo.HISTORY_MAX_LIMIT
    assert [ITEM.fullmatch(item).group(5) for item in items] == [
        str(n) for n in range(20, count)]
    assert len(history(ana, "HISTORICO #muitas 0 501")) == 500


def test_history_reply_is_capped_in_bytes_and_pages_cover_everything(server, v2):
    ana = v2(server, "ana")
    assert ana.request("ENTRAR #grande") == "OK"
    count, text = 100, "g" * 4000
    for batch in range(0, count, 25):
        ana.send("".join(f"ENVIAR #grande {n}:{text}\n"
                         for n in range(batch, batch + 25)).encode())
        ana.read_lines(25)
    seen: list[int] = []
    before = 0
    for _ in range(count):
        mark = len(ana.transcript)
        items = history(ana, f"HISTORICO #grande {before} 500")
        reply_bytes = len(ana.transcript) - mark
        if not items:
            break
        assert reply_bytes <= servidor.HISTORY_REPLY_MAX_BYTES + 64
        assert len(items) < count  # the cap, not the limit, cut it
        ids = item_ids(items)
        assert ids == sorted(ids) and (not seen or ids[-1] < seen[0])
        seen[:0] = ids
        before = ids[0]
    texts = [int(ITEM.fullmatch(item).group(5).split(":")[0])
             for item in history(ana, "HISTORICO #grande 0 50")]
    assert texts[-1] == count - 1  # the newest first in, not the oldest
    assert len(seen) == count and len(set(seen)) == count


def test_pair_history_needs_an_account_and_reads_both_directions(server, connect, v2):
    ana = v2(server, "ana", PASSWORD)
    bia = v2(server, "bia", PASSWORD)
    guest = v2(server, "visita")
    ida, ida_when = sent(ana, "bia", "ida")
    bia.read_line()
    volta, volta_when = sent(bia, "ANA", "volta")
    ana.read_line()
    sent(guest, "ana", "de fora")
    ana.read_line()
    expected = [f"ITEM {ida} {ida_when} ana bia ida", f"ITEM {volta} {volta_when} bia ana volta"]
    assert history(ana, "HISTORICO bia") == expected
    assert history(bia, "HISTORICO Ana") == expected
    assert history(ana, f"HISTORICO bia {volta}") == expected[:1]
    assert history(ana, "HISTORICO ninguem") == []
    # Checked in order: registration, account, then the nickname's form.
    stranger = connect(server)
    assert_error(stranger.request("HISTORICO bia"), "NAO_REGISTRADO")
    assert_error(stranger.request("HISTORICO b@d!"), "NAO_REGISTRADO")
    assert_error(guest.request("HISTORICO b@d!"), "SEM_CONTA")
    assert guest.request("HISTORICO ana") == (
        "ERRO SEM_CONTA o histórico de conversas é só para contas (com senha)")
    assert_error(ana.request("HISTORICO b@d!"), "APELIDO_INVALIDO")
    assert_error(ana.request("HISTORICO #b@d"), "SALA_INVALIDA")
    for line in ["HISTORICO", "HISTORICO bia x", "HISTORICO bia 0 0", "HISTORICO bia 1 2 3",
                 "HISTORICO bia 1 1234567890"]:
        assert_error(ana.request(line), "ARGUMENTOS")


def test_pair_history_starts_at_the_readers_account(server, connect, v2):
    ana = v2(server, "ana", PASSWORD)
    early = connect(server)
    early.register("bia")  # bia without an account, for now
    sent(ana, "bia", "antes da conta da bia")
    quit_(early)
    bia = v2(server, "bia", PASSWORD)
    later, when = sent(ana, "bia", "depois")
    bia.read_line()
    assert history(bia, "HISTORICO ana") == [f"ITEM {later} {when} ana bia depois"]
    assert len(history(ana, "HISTORICO bia")) == 2


# --------------------------------------------------------------------------
# Names without look-alikes, on the wire


@pytest.mark.parametrize(("taken", "attempt", "code"), [
    ("ana", "аna", "APELIDO_INVALIDO"),        # Cyrillic а among Latin letters
    ("paypal", "раураl", "APELIDO_INVALIDO"),  # mixed scripts
    ("ana", "ana\u3164", "APELIDO_INVALIDO"),  # Hangul filler: invisible
    ("ana", "\u115fana", "APELIDO_INVALIDO"),
    ("x2", "x²", "APELIDO_INVALIDO"),          # digits are ASCII only
    ("ix", "Ⅸ", "APELIDO_INVALIDO"),
    ("ana", "ａｎａ", "APELIDO_EM_USO"),        # fullwidth (NFKC)
    ("ana", "𝐚𝐧𝐚", "APELIDO_EM_USO"),          # mathematical bold
    ("joão", "joao", "APELIDO_EM_USO"),        # accents
    ("joao", "JOÃO", "APELIDO_EM_USO"),
    ("ace", "асе", "APELIDO_EM_USO"),          # all Cyrillic, spelling a Latin name
    ("straße", "STRASSE", "APELIDO_EM_USO"),
])
def test_look_alike_nicknames_are_refused(server, connect, taken, attempt, code):
    owner = connect(server)
    owner.register(taken)
    client = connect(server)
    assert_error(client.request(f"REGISTRAR {attempt}"), code)
    if code == "APELIDO_EM_USO":  # the same key reaches the same person
        assert client.request(f"RETORNAR {attempt}") == f"ENCONTRADO 127.0.0.1 {owner.port}"
        client.register("outro")
        assert client.request(f"ENVIAR {attempt} oi") == "OK"
        assert owner.read_line() == f"MSG outro {taken} oi"


def test_a_look_alike_target_reaches_the_name_it_imitates(server, connect):
    """Look-ups use the key of the name given, even one that could not be registered."""
    owner = connect(server)
    owner.register("ana")
    client = connect(server)
    assert_error(client.request("REGISTRAR аna"), "APELIDO_INVALIDO")  # a Cyrillic а
    client.register("bob")
    assert client.request("RETORNAR аna") == f"ENCONTRADO 127.0.0.1 {owner.port}"
    assert client.request("ENVIAR аna oi") == "OK"
    assert owner.read_line() == "MSG bob ana oi"


def test_look_alike_room_names_are_one_room_or_refused(server, v2):
    ana = v2(server, "ana")
    assert ana.request("ENTRAR #geral") == "OK"
    assert ana.request("ENTRAR #ＧＥＲＡＬ") == "OK"
    assert ana.request("ENTRAR #Géral") == "OK"
    assert rooms_listing(ana) == ["SALA #geral 1"]
    assert_error(ana.request("ENTRAR #gеral"), "SALA_INVALIDA")  # a Cyrillic е


# --------------------------------------------------------------------------
# The text rule, on the wire

REFUSED_TEXTS = [
    "abc\u202edcba", "\u2066isolado\u2069", "invi\u200bsível", "linha\u2028falsa",
    "parágrafo\u2029falso", "\ufeffbom", "marca\u200fRTL", "etiqueta\U000e0041solta",
    "escape\x1b[2J",
]
KEPT_TEXTS = [
    "👨\u200d👩\u200d👧\u200d👦 família",        # ZWJ sequence
    "🇧🇷 e 🇵🇹",                                 # regional-indicator flags
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f escócia",  # tag sequence
    "❤\ufe0f coração",                          # variation selector
    "می\u200cخواهم",                             # ZWNJ in Persian
    "क्\u200dष",                                 # ZWJ in Devanagari
    "col1\tcol2",
]


@pytest.mark.parametrize("text", REFUSED_TEXTS)
def test_refused_texts_reach_nobody(server, v1, v2, text):
    ana = v2(server, "ana")
    bia = v1(server, "bia")
    for client in (ana, bia):
        assert client.request("ENTRAR #sala") == "OK"
    ana.barrier()
    for target in ("bia", "#sala"):
        ana.send(f"ENVIAR {target} {text}\n".encode())
        assert_error(ana.read_line(), "ARGUMENTOS")
    assert bia.barrier() == []


@pytest.mark.parametrize("text", KEPT_TEXTS)
def test_emoji_and_joiners_are_delivered_byte_for_byte(server, v1, v2, text):
    ana = v2(server, "ana")
    old = v1(server, "velho")
    new = v2(server, "novo")
    for client in (ana, old, new):
        assert client.request("ENTRAR #sala") == "OK"
    ana.barrier()
    old.barrier()
    raw = text.encode()
    for target in ("velho", "novo", "#sala"):
        ana.send(b"ENVIAR " + target.encode() + b" " + raw + b"\n")
        assert OK_V2.fullmatch(ana.read_line())
    assert old.barrier() == [f"MSG ana velho {text}", f"MSG ana #sala {text}"]
    assert [MSG_V2.fullmatch(line).group(5) for line in new.barrier()] == [text, text]
    assert old.transcript.count(raw) == 2 and new.transcript.count(raw) == 2
    [item] = history(ana, "HISTORICO #sala")
    assert ITEM.fullmatch(item).group(5) == text


# --------------------------------------------------------------------------
# The command line: accounts and the data path


def run_servidor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python3 servidor.py ARGS`` to completion, its output as text."""
    return subprocess.run(simulacao.python_command(REPO / "servidor.py", *args), cwd=REPO,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def make_accounts(path: Path, *nicks: str) -> None:
    with armazem.Store.open(str(path)) as store:
        for nick in nicks:
            assert store.create_account(protocolo.nick_key(nick), nick,
                                        armazem.hash_password(PASSWORD))


def test_contas_help_and_usage_errors_in_portuguese(tmp_path):
    result = run_servidor("contas", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("uso: servidor.py contas")
    assert "--listar" in result.stdout and "--remover APELIDO" in result.stdout
    result = run_servidor("contas", "--dados", str(tmp_path / "x.sqlite3"))
    assert result.returncode == 2
    assert "indique --listar ou --remover APELIDO" in result.stderr
    missing = tmp_path / "nao-existe.sqlite3"
    result = run_servidor("contas", "--listar", "--dados", str(missing))
    assert result.returncode == 2
    assert f"arquivo de dados não encontrado: {missing}" in result.stderr
    assert not missing.exists()  # the administrator's command creates nothing


def test_contas_lists_and_removes_accounts(tmp_path):
    path = tmp_path / "contas.sqlite3"
    make_accounts(path, "Bia", "ana")
    result = run_servidor("contas", "--listar", "--dados", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["apelido", "criada", "em", "pendentes"]
    assert [line.split()[0] for line in lines[1:3]] == ["ana", "Bia"]
    assert [line.split()[-1] for line in lines[1:3]] == ["0", "0"]
    assert lines[3] == "2 conta(s)"
    result = run_servidor("contas", "--remover", "BIA", "--dados", str(path))
    assert (result.returncode, result.stdout) == (0, "conta 'Bia' removida\n")
    result = run_servidor("contas", "--remover", "bia", "--dados", str(path))
    assert result.returncode == 1
    assert "não existe conta com o apelido 'bia'" in result.stderr
    result = run_servidor("contas", "--listar", "--dados", str(path))
    assert result.stdout.splitlines()[-1] == "1 conta(s)"


def test_contas_works_while_a_server_runs_on_the_same_file(tmp_path, connect):
    path = tmp_path / "vivo.sqlite3"
    with ServerProcess("--dados", str(path), "--taxa", "0", "--sem-descoberta") as process:
        target = types.SimpleNamespace(address=process.address)
        bia = connect(target)
        assert bia.request(f"REGISTRAR bia {PASSWORD}") == "OK"
        quit_(bia)
        ana = connect(target)
        ana.register("ana")
        for n in range(3):
            assert ana.request(f"ENVIAR bia espera {n}") == "OK"
        result = run_servidor("contas", "--listar", "--dados", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].split()[::3] == ["bia", "3"]
        result = run_servidor("contas", "--remover", "bia", "--dados", str(path))
        assert result.returncode == 0, result.stderr
        # The running server sees it at once: the nickname is free, and messages
        # to it are no longer kept.
        assert_error(ana.request("ENVIAR bia ainda?"), "NAO_ENCONTRADO")
        free = connect(target)
        assert free.request("REGISTRAR bia") == "OK"
        quit_(free)
        # A new account with that nickname does not inherit what waited for the old one.
        newcomer = connect(target)
        assert newcomer.request(f"REGISTRAR bia {PASSWORD}2") == "OK"
        assert newcomer.barrier() == []
    assert process.proc.returncode == 0, process.log


def test_the_server_logs_where_its_data_is_or_that_nothing_is_kept(tmp_path):
    path = tmp_path / "dados" / "chat.sqlite3"
    with ServerProcess("--dados", str(path), "--sem-descoberta") as process:
        pass
    assert any(f"dados (mensagens e contas) em {path}" in line for line in process.log), \
        process.log
    assert path.exists()
    with ServerProcess("--sem-descoberta") as process:  # ServerProcess adds --efemero
        pass
    assert any("modo efêmero: nada é guardado em disco e não há contas" in line
               for line in process.log), process.log


def test_without_options_the_data_goes_to_the_users_data_directory(tmp_path):
    """The README's ``python3 servidor.py``, with a home of its own (XDG on Linux)."""
    if sys.platform in ("win32", "darwin") or simulacao.active_mode():
        pytest.skip("o caminho XDG vale só no Linux")
    env = {**os.environ, "HOME": str(tmp_path / "casa"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    expected = tmp_path / "xdg" / "chat-redes" / "chat.sqlite3"
    log_path = tmp_path / "servidor.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            simulacao.python_command(REPO / "servidor.py", "--host", HOST, "--port", "0",
                                     "--sem-descoberta"),
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log_file)
    try:
        wait_until(lambda: "escutando" in log_path.read_text("utf-8", "replace")
                   or proc.poll() is not None, CLI_TIMEOUT, "the server to start")
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
    lines = log_path.read_text("utf-8").splitlines()
    assert any(f"dados (mensagens e contas) em {expected}" in line for line in lines), lines
    assert expected.exists()
    assert oct(expected.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(expected.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "casa").exists()
