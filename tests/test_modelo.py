"""Model-based test: random sessions of several clients against a real server.

Hypothesis drives a ``RuleBasedStateMachine`` whose rules are what clients
do (connect, register in either form, subscribe, send, cancel, list, quit,
vanish). Each step is checked against a small in-memory model of the
registry: the exact reply lines, and exactly which pushes (MSG, ENTROU,
SAIU) every live client must have received -- no more, no fewer, in order.
Pushes are collected with a PING barrier, so nothing is left to timing.

CI runs 100 examples of up to 30 steps (about 3 s; an example costs a few
milliseconds). For a longer local run set ``CHAT_MODELO_EXEMPLOS`` (and
optionally ``CHAT_MODELO_PASSOS``), e.g.
``CHAT_MODELO_EXEMPLOS=2000 python -m pytest tests/test_modelo.py``.
``--hypothesis-show-statistics`` shows how often each outcome was reached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from wire import WireClient, wait_until

import servidor

EXAMPLES = int(os.environ.get("CHAT_MODELO_EXEMPLOS", "100"))
STEPS = int(os.environ.get("CHAT_MODELO_PASSOS", "30"))
MAX_CLIENTS = 6

# Nicknames that collide case-insensitively (str.casefold: "Straße" is "strasse").
VALID_NICKS = ["ana", "Ana", "ANA", "bia", "João_2", "x.y-z", "Straße", "STRASSE"]
INVALID_NICKS = ["ana!", "a" * 33, "ç$", "<bia>"]
FIRST_NICKS = ["ana", "bia", "João_2", "Straße"]
nicks = st.one_of(st.sampled_from(VALID_NICKS), st.sampled_from(VALID_NICKS),
                  st.sampled_from(INVALID_NICKS))
"""Mostly valid nicknames, so registrations succeed or collide more often than not."""
LEGACY_ENDPOINTS = [("10.0.0.5", 5000), ("::1", 1), ("192.168.0.7", 65535)]
BAD_LEGACY = [("10.0.0.999", 5000), ("10.0.0.5", 0), ("10.0.0.5", 65536), ("ana", 80)]

PUSH_WORDS = ("MSG ", "ENTROU ", "SAIU ")

texts = st.text(
    alphabet=st.sampled_from(" \tabcxyzÁçã€😀.,!?-"), min_size=1, max_size=24)


def key(nick: str) -> str:
    return nick.casefold()


def outcome(reply: str) -> str:
    """``OK`` or the error code of a reply, for Hypothesis' statistics."""
    return reply.split(" ")[1] if reply.startswith("ERRO ") else reply


@dataclass
class Client:
    """The model of one connection, with the real socket that carries it."""

    name: str
    wire: WireClient
    nick: str | None = None
    relay: bool = False
    subscribed: bool = False
    ip: str = ""
    port: int = 0
    entry: tuple[str, str, int] | None = None
    """(nick, ip, port) as LISTAR must show this client's registration."""
    expected: list[str] = field(default_factory=list)
    """Pushes the model says this client must have received since the last check."""
    received: list[str] = field(default_factory=list)
    """Pushes it did receive (read before a reply, or at the barrier)."""


class ChatModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # No abuse limit may interfere with a model that knows nothing of time.
        config = servidor.ServerConfig(host="127.0.0.1", port=0, rate=0, max_per_ip=0,
                                       max_clients=0, register_timeout=0)
        self.server = servidor.Servidor(config)
        self.server.start()
        self.clients: list[Client] = []
        self.registry: dict[str, Client] = {}
        self.serial = 0

    def teardown(self) -> None:
        for client in self.clients:
            client.wire.close()
        self.server.stop()
        assert self.server.connection_count == 0

    # -- helpers --

    def pick(self, index: int) -> Client:
        return self.clients[index % len(self.clients)]

    def reply(self, client: Client, line: str) -> str:
        """Send ``line``; return its one-line reply, setting pushes aside."""
        client.wire.send_line(line)
        return self.read_reply(client)

    def read_reply(self, client: Client) -> str:
        while True:
            got = client.wire.read_line()
            assert got is not None, f"{client.name}: EOF inesperado"
            if not got.startswith(PUSH_WORDS):
                return got
            client.received.append(got)

    def push(self, line: str, to: list[Client]) -> None:
        for client in to:
            client.expected.append(line)

    def subscribers(self, leaving: Client | None = None) -> list[Client]:
        return [c for c in self.registry.values()
                if c.subscribed and c.relay and c is not leaving]

    def unregister(self, client: Client) -> None:
        """The model of a registration's removal: SAIU to the other subscribers."""
        del self.registry[key(client.nick)]
        self.push(f"SAIU {client.nick}", self.subscribers(leaving=client))
        client.nick, client.relay, client.subscribed = None, False, False

    def drop(self, client: Client) -> None:
        self.clients.remove(client)
        client.wire.close()
        wait_until(lambda: self.server.connection_count == len(self.clients),
                   what="o servidor esquecer a conexão fechada")

    def registered_nick(self, choice: int) -> str | None:
        names = [c.nick for c in self.registry.values()]
        return names[choice % len(names)] if names else None

    # -- rules --

    @initialize(count=st.integers(2, 4), subscribers=st.sets(st.integers(0, 3)),
                directory_only=st.sets(st.integers(0, 3), max_size=1))
    def first_clients(self, count: int, subscribers: set[int],
                      directory_only: set[int]) -> None:
        """Start from a populated room: a few registered clients, some subscribed."""
        for i in range(count):
            self.connect()
            form = "diretorio" if i in directory_only else "retransmissao"
            self.register(i, FIRST_NICKS[i], form, i, i in subscribers)

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule()
    def connect(self) -> None:
        wire = WireClient(self.server.address)
        ip, port = wire.local_address
        self.clients.append(Client(f"c{self.serial}", wire, ip=ip, port=port))
        self.serial += 1

    @rule(index=st.integers(0, 99), nick=nicks,
          form=st.sampled_from(["retransmissao"] * 3 + ["diretorio", "invalida"]),
          endpoint=st.integers(0, 99), then_subscribe=st.booleans())
    def register(self, index: int, nick: str, form: str, endpoint: int,
                 then_subscribe: bool) -> None:
        client = self.pick(index)
        if form == "retransmissao":
            line, ip, port = f"REGISTRAR {nick}", client.ip, client.port
        elif form == "diretorio":
            ip, port = LEGACY_ENDPOINTS[endpoint % len(LEGACY_ENDPOINTS)]
            line = f"REGISTRAR {nick} {ip} {port}"
        else:
            ip, port = BAD_LEGACY[endpoint % len(BAD_LEGACY)]
            line = f"REGISTRAR {nick} {ip} {port}"
        got = self.reply(client, line)
        event(f"REGISTRAR -> {outcome(got)}")
        if form == "invalida":
            assert got.startswith("ERRO ARGUMENTOS "), got
        elif client.nick is not None:
            assert got.startswith("ERRO JA_REGISTRADO "), got
        elif nick in INVALID_NICKS:
            assert got.startswith("ERRO APELIDO_INVALIDO "), got
        elif key(nick) in self.registry:
            assert got.startswith("ERRO APELIDO_EM_USO "), got
        else:
            assert got == "OK", got
            self.push(f"ENTROU {nick}", self.subscribers())
            client.nick, client.relay = nick, form == "retransmissao"
            client.entry = (nick, ip, port)
            self.registry[key(nick)] = client
        if then_subscribe:
            self.subscribe(index)

    @rule(index=st.integers(0, 99))
    def subscribe(self, index: int) -> None:
        client = self.pick(index)
        got = self.reply(client, "ASSINAR")
        if client.nick is None:
            assert got.startswith("ERRO NAO_REGISTRADO "), got
        else:
            assert got == "OK", got
            client.subscribed = client.relay  # directory-only: OK, and still no pushes

    @rule(index=st.integers(0, 99),
          kind=st.sampled_from(["registrado", "registrado_outra_caixa", "si_mesmo",
                                  "desconhecido", "invalido"]),
          choice=st.integers(0, 99), text=texts)
    def send(self, index: int, kind: str, choice: int, text: str) -> None:
        client = self.pick(index)
        nick = self.registered_nick(choice)
        if kind == "si_mesmo" and client.nick is not None:
            nick = client.nick
        elif kind == "desconhecido" or nick is None:
            nick = "ninguem"
        elif kind == "invalido":
            nick = INVALID_NICKS[choice % len(INVALID_NICKS)]
        elif kind == "registrado_outra_caixa":
            nick = nick.swapcase()
        got = self.reply(client, f"ENVIAR {nick} {text}")
        event(f"ENVIAR -> {outcome(got)}")
        recipient = self.registry.get(key(nick))
        if client.nick is None:
            assert got.startswith("ERRO NAO_REGISTRADO "), got
        elif recipient is None:
            assert got.startswith("ERRO NAO_ENCONTRADO "), got
        elif not recipient.relay:
            assert got.startswith("ERRO SO_DIRETO "), got
        else:
            assert got == "OK", got
            self.push(f"MSG {client.nick} {recipient.nick} {text}", [recipient])

    @rule(index=st.integers(0, 99), text=st.sampled_from(["a\x01b", "\x1b[2J", "x\x7f"]))
    def send_control_characters(self, index: int, text: str) -> None:
        client = self.pick(index)
        got = self.reply(client, f"ENVIAR ninguem {text}")
        assert got.startswith("ERRO ARGUMENTOS "), got

    @rule(index=st.integers(0, 99),
          whose=st.sampled_from(["nenhum", "proprio", "proprio_outra_caixa", "outro"]),
          other=nicks)
    def cancel(self, index: int, whose: str, other: str) -> None:
        client = self.pick(index)
        named = {"nenhum": None, "outro": other,
                 "proprio": client.nick or other,
                 "proprio_outra_caixa": (client.nick or other).swapcase()}[whose]
        got = self.reply(client, "CANCELAR_REGISTRO" + (f" {named}" if named else ""))
        if client.nick is None:
            assert got.startswith("ERRO NAO_REGISTRADO "), got
        elif named is not None and key(named) != key(client.nick):
            assert got.startswith("ERRO PROIBIDO "), got
        else:
            assert got == "OK", got
            self.unregister(client)

    @rule(index=st.integers(0, 99))
    def list_users(self, index: int) -> None:
        client = self.pick(index)
        header = self.reply(client, "LISTAR")
        entries = sorted(self.registry.items())
        assert header == f"USUARIOS {len(entries)}", header
        lines = [client.wire.read_line() for _ in range(len(entries) + 1)]
        assert lines == [f"USUARIO {c.entry[0]} {c.entry[1]} {c.entry[2]}"
                         for _, c in entries] + ["END"]

    @rule(index=st.integers(0, 99), nick=nicks)
    def lookup(self, index: int, nick: str) -> None:
        client = self.pick(index)
        got = self.reply(client, f"RETORNAR {nick}")
        found = self.registry.get(key(nick))
        if found is None:
            assert got == "NAO ENCONTRADO", got
        else:
            assert got == f"ENCONTRADO {found.entry[1]} {found.entry[2]}", got

    @precondition(lambda self: len(self.clients) > 1)
    @rule(index=st.integers(0, 99))
    def quit(self, index: int) -> None:
        client = self.pick(index)
        got = self.reply(client, "SAIR")
        assert got == "OK", got
        if client.nick is not None:
            self.unregister(client)
        assert client.wire.expect_eof() == []
        assert client.received == client.expected
        self.drop(client)

    @precondition(lambda self: len(self.clients) > 1)
    @rule(index=st.integers(0, 99), reset=st.booleans())
    def vanish(self, index: int, reset: bool) -> None:
        """Close without a word (a reset, with ``reset``): the server must notice alone."""
        client = self.pick(index)
        watchers = len(self.subscribers(leaving=client)) if client.nick else 0
        event(f"vanish: {'registered' if client.nick else 'unregistered'}, "
              f"{'with' if watchers else 'no'} subscribers")
        self.clients.remove(client)
        if reset:
            client.wire.reset()
        else:
            client.wire.close()
        if client.nick is not None:
            saiu = f"SAIU {client.nick}"
            for subscriber in self.subscribers(leaving=client):
                # Sent when the server notices the close: awaited, not assumed.
                while True:
                    got = subscriber.wire.read_line()
                    assert got is not None and got.startswith(PUSH_WORDS), got
                    subscriber.received.append(got)
                    if got == saiu:
                        break
            self.unregister(client)
        wait_until(lambda: self.server.connection_count == len(self.clients),
                   what="o servidor esquecer a conexão fechada")

    # -- the check after every step --

    @invariant()
    def every_client_got_exactly_its_pushes(self) -> None:
        for client in self.clients:
            client.received += client.wire.barrier()
            assert client.received == client.expected, client.name
            client.received.clear()
            client.expected.clear()

    @invariant()
    def server_registry_matches_the_model(self) -> None:
        expected = [c.entry for _, c in sorted(self.registry.items())]
        assert self.server.registry.listing() == expected


ChatModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestChatModel = ChatModel.TestCase
