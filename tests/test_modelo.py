"""Model-based test: random sessions of several clients against a real server.

Hypothesis drives a ``RuleBasedStateMachine`` whose rules are what clients
do: connect, say ``OLA`` (version 1 or 2), register in every form (plain,
directory-only, with a password), subscribe, send to a nickname or a room,
join and leave rooms, list members and rooms, acknowledge with RECEBIDO,
read the history, change the password, cancel, list, quit, vanish. Each
step is checked against a small in-memory model of the registry, the rooms
and the message store: the exact reply lines, and exactly which pushes (MSG
in each version's form, ENTROU, SAIU, ENTREGUE) every live client must have
received -- no more, no fewer, in order. Pushes are collected with a PING
barrier, so nothing is left to timing.

The server keeps its messages and accounts in a real SQLite file (one per
example), so offline delivery, cursors and receipts are the real thing.
Two things are made cheap or deterministic for the model's sake: scrypt
runs with a tiny cost (the records still name their parameters), and the
server's periodic saving of version-1 cursors is pushed out of the run, so
a version-1 account's cursor moves exactly when it leaves (what was
written to it by then); ``test_duravel.py`` covers the periodic save.

Message ids are predictable: each example starts from an empty store, and
every accepted ENVIAR takes the next id. A version-2 line's ``<quando>`` is
checked for its form and against every other line that carries the same id.

CI runs 150 examples of up to 60 steps (about 15 s). For a longer local run set
``CHAT_MODELO_EXEMPLOS`` (and optionally ``CHAT_MODELO_PASSOS``), e.g.
``CHAT_MODELO_EXEMPLOS=2000 python -m pytest tests/test_modelo.py``.
``--hypothesis-show-statistics`` shows how often each outcome was reached.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from wire import UNLIMITED, WireClient, wait_until

import armazem
import servidor

EXAMPLES = int(os.environ.get("CHAT_MODELO_EXEMPLOS", "150"))
STEPS = int(os.environ.get("CHAT_MODELO_PASSOS", "60"))
MAX_CLIENTS = 6
FAILED_PASSWORDS_ALLOWED = 2
"""Lower than the default (5), so that a client that guesses gets blocked within a run."""
ACCOUNTS_PER_HOUR = 2
HISTORY_DEFAULT_LIMIT = 50

# Nicknames that collide: by case (str.casefold: "Straße" is "strasse"), by
# compatibility form (fullwidth "ａｎａ") and by accent ("João_2", "Joao_2").
VALID_NICKS = ["ana", "Ana", "ANA", "ａｎａ", "bia", "João_2", "Joao_2", "x.y-z", "Straße",
               "STRASSE"]
INVALID_NICKS = ["ana!", "a" * 33, "ç$", "<bia>", "x²"]
FIRST_NICKS = ["ana", "bia", "João_2", "Straße"]
nicks = st.one_of(st.sampled_from(VALID_NICKS), st.sampled_from(VALID_NICKS),
                  st.sampled_from(INVALID_NICKS))
"""Mostly valid nicknames, so registrations succeed or collide more often than not."""
LEGACY_ENDPOINTS = [("10.0.0.5", 5000), ("::1", 1), ("192.168.0.7", 65535)]
BAD_LEGACY = [("10.0.0.999", 5000), ("10.0.0.5", 0), ("10.0.0.5", 65536), ("ana", 80)]
PASSWORDS = ["segredo1", "outra-senha"]
BAD_PASSWORD = "curta"
ROOMS = ["#geral", "#Geral", "#GERAL", "#ｇｅｒａｌ", "#redes-2026", "#São", "#sao"]
INVALID_ROOMS = ["#", "#a!", "#" + "x" * 33, "##"]
rooms = st.one_of(st.sampled_from(ROOMS), st.sampled_from(ROOMS), st.sampled_from(INVALID_ROOMS))

PUSH_WORDS = ("MSG ", "ENTROU ", "SAIU ", "ENTREGUE ")
WHEN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
V2_LINE = re.compile(r"(MSG|ITEM) ([1-9]\d*) (\S+) (.*)", re.DOTALL)
VERSION_ERROR = "ERRO VERSAO versões suportadas: 1 2"

REFUSED_TEXTS = ["a\x01b", "\x1b[2J", "x\x7f", "abc\u202edcba", "zero\u200bwidth",
                 "linha\u2028"]
texts = st.text(
    alphabet=st.sampled_from(" \tabcxyzÁçã€😀.,!?-"), min_size=1, max_size=24)


def key(name: str) -> str:
    """The model's own key: compatibility forms, case and accents folded."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    return "".join(char for char in folded if not unicodedata.combining(char))


def room_key(name: str) -> str:
    return "#" + key(name[1:])


def valid_nick(nick: str) -> bool:
    """Every name the rules use is a case variant of a valid one or one of the invalid ones."""
    return nick not in INVALID_NICKS


def valid_room(name: str) -> bool:
    return name in ROOMS


def outcome(reply: str) -> str:
    """``OK`` or the error code of a reply, for Hypothesis' statistics."""
    return reply.split(" ")[1] if reply.startswith("ERRO ") else reply.split(" ")[0]


def is_error(reply: str, code: str) -> bool:
    return reply.startswith(f"ERRO {code} ") and len(reply) > len(code) + 6


@dataclass
class Client:
    """The model of one connection, with the real socket that carries it."""

    name: str
    wire: WireClient
    version: int = 1
    nick: str | None = None
    key: str | None = None
    relay: bool = False
    account: bool = False
    subscribed: bool = False
    ip: str = ""
    port: int = 0
    entry: tuple[str, str, int] | None = None
    """(nick, ip, port) as LISTAR must show this client's registration."""
    rooms: list[str] = field(default_factory=list)
    """Keys of the rooms it is in, in the order it joined them."""
    written: int = 0
    """Newest direct message id pushed to it (a version-1 account's cursor when it leaves)."""
    expected: list[str] = field(default_factory=list)
    """Pushes the model says this client must have received since the last check."""
    received: list[str] = field(default_factory=list)
    """Pushes it did receive (read before a reply, or at the barrier)."""


@dataclass
class Account:
    nick: str
    password: str
    first_id: int
    """The newest id when the account was created: its history starts after it."""
    cursor: int


@dataclass
class Stored:
    """One message in the store."""

    id: int
    sender_key: str
    sender: str
    target_key: str
    target: str
    text: str
    room: bool
    receipt: str = "none"  # none, awaited, due, sent


@dataclass
class Room:
    name: str
    members: list[Client] = field(default_factory=list)


@pytest.fixture(autouse=True, scope="module")
def cheap_and_deterministic():
    """Tiny scrypt cost; no periodic cursor saving during a run (see the module docstring)."""
    saved = armazem.SCRYPT_N, servidor.MAINTENANCE_INTERVAL
    armazem.SCRYPT_N, servidor.MAINTENANCE_INTERVAL = 2 ** 4, 3600.0
    yield
    armazem.SCRYPT_N, servidor.MAINTENANCE_INTERVAL = saved


class ChatModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert servidor.MAINTENANCE_INTERVAL == 3600.0, "the module fixture did not run"
        self.directory = tempfile.mkdtemp(prefix="chat-modelo-")
        self.store = armazem.Store.open(os.path.join(self.directory, "chat.sqlite3"))
        # No abuse limit may interfere with a model that knows nothing of time,
        # except the password limits, which the model follows.
        config = servidor.ServerConfig(
            host="127.0.0.1", port=0, max_per_ip=0, max_clients=0, register_timeout=0,
            discovery=False, store=self.store, failed_passwords=FAILED_PASSWORDS_ALLOWED,
            accounts_per_hour=ACCOUNTS_PER_HOUR, **UNLIMITED)
        self.server = servidor.Servidor(config)
        self.server.start()
        self.clients: list[Client] = []
        self.registry: dict[str, Client] = {}
        self.accounts: dict[str, Account] = {}
        self.messages: list[Stored] = []
        self.rooms: dict[str, Room] = {}
        self.times: dict[int, str] = {}
        self.failed_passwords: dict[str, int] = {}  # per client address
        self.accounts_created: dict[str, int] = {}
        self.serial = 0

    def teardown(self) -> None:
        for client in self.clients:
            client.wire.close()
        self.server.stop()
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        assert self.server.connection_count == 0

    # -- helpers --

    def pick(self, index: int, registered: bool = True) -> Client:
        """Mostly (index < 80) a registered client -- or an unregistered one, for registering.

        So most steps get past NAO_REGISTRADO (or JA_REGISTRADO), and the
        rest still check those answers.
        """
        preferred = [c for c in self.clients if (c.nick is not None) == registered]
        if index < 80 and preferred:
            return preferred[index % len(preferred)]
        return self.clients[index % len(self.clients)]

    def reply(self, client: Client, line: str) -> str:
        """Send ``line``; return its one-line reply, setting pushes aside."""
        client.wire.send_line(line)
        return self.read_reply(client)

    def read_reply(self, client: Client) -> str:
        while True:
            got = client.wire.read_line()
            if not got.startswith(PUSH_WORDS):
                return got
            client.received.append(self.normal(got))

    def normal(self, line: str) -> str:
        """A version-2 MSG or ITEM line with its ``<quando>`` checked and replaced by ``T``."""
        match = V2_LINE.fullmatch(line)
        if match is None or not WHEN.fullmatch(match.group(3)):
            return line
        message_id, when = int(match.group(2)), match.group(3)
        assert self.times.setdefault(message_id, when) == when, (line, self.times[message_id])
        return f"{match.group(1)} {message_id} T {match.group(4)}"

    def push(self, line: str, to: list[Client]) -> None:
        for client in to:
            client.expected.append(line)

    def subscribers(self, leaving: Client | None = None) -> list[Client]:
        return [c for c in self.registry.values()
                if c.subscribed and c.relay and c is not leaving]

    @property
    def newest_id(self) -> int:
        return len(self.messages)

    def store_message(self, sender: Client, target_key: str, target: str, text: str,
                      room: bool, receipt: bool = False) -> Stored:
        message = Stored(self.newest_id + 1, sender.key, sender.nick, target_key, target, text,
                         room, "awaited" if receipt else "none")
        self.messages.append(message)
        return message

    def msg_line(self, message: Stored, recipient: Client) -> str:
        if recipient.version >= 2:
            return (f"MSG {message.id} T {message.sender} {message.target} {message.text}")
        return f"MSG {message.sender} {message.target} {message.text}"

    def deliver_direct(self, message: Stored, recipient: Client) -> None:
        recipient.expected.append(self.msg_line(message, recipient))
        if recipient.account:
            recipient.written = max(recipient.written, message.id)

    def check_ok(self, client: Client, got: str, message_id: int) -> None:
        """The ENVIAR's success reply in the sender's version."""
        if client.version == 1:
            assert got == "OK", got
            return
        ok, number, when = got.split(" ")
        assert (ok, int(number)) == ("OK", message_id), got
        assert WHEN.fullmatch(when), got
        assert self.times.setdefault(message_id, when) == when, got

    def move_cursor(self, account_key: str, up_to: int) -> None:
        """The store's ``mark_received``, then the receipts pushed to online v2 senders."""
        account = self.accounts[account_key]
        new = min(up_to, self.newest_id)
        if new <= account.cursor:
            return
        due = [m for m in self.messages
               if m.target_key == account_key and not m.room and account.cursor < m.id <= new
               and m.receipt == "awaited"]
        account.cursor = new
        for message in due:
            message.receipt = "due"
            sender = self.registry.get(message.sender_key)
            if sender is not None and sender.account and sender.version >= 2:
                sender.expected.append(f"ENTREGUE {message.id} {message.target}")
                message.receipt = "sent"

    def catch_up(self, client: Client) -> None:
        """What an account gets right after its registration's OK."""
        account = self.accounts[client.key]
        for message in self.messages:
            if message.target_key == client.key and not message.room \
                    and message.id > account.cursor:
                self.deliver_direct(message, client)
        if client.version >= 2:
            for message in self.messages:
                if message.sender_key == client.key and message.receipt == "due":
                    client.expected.append(f"ENTREGUE {message.id} {message.target}")
                    message.receipt = "sent"

    def unregister(self, client: Client) -> None:
        """The model of leaving: the v1 cursor, every room, then the registration."""
        if client.account and client.version == 1:
            self.move_cursor(client.key, client.written)
        for key_ in client.rooms:
            self.leave_room(client, key_)
        del self.registry[client.key]
        self.push(f"SAIU {client.nick}", self.subscribers(leaving=client))
        client.nick = client.key = None
        client.relay = client.subscribed = client.account = False
        client.rooms, client.written = [], 0

    def leave_room(self, client: Client, key_: str) -> None:
        room = self.rooms[key_]
        room.members.remove(client)
        self.push(f"SAIU {room.name} {client.nick}", room.members)
        if not room.members:
            del self.rooms[key_]

    def drop(self, client: Client) -> None:
        self.clients.remove(client)
        client.wire.close()
        wait_until(lambda: self.server.connection_count == len(self.clients),
                   what="o servidor esquecer a conexão fechada")

    def registered_nick(self, choice: int) -> str | None:
        names = [c.nick for c in self.registry.values()]
        return names[choice % len(names)] if names else None

    def offline_account_nick(self, choice: int) -> str | None:
        names = [a.nick for k, a in self.accounts.items() if k not in self.registry]
        return names[choice % len(names)] if names else None

    def read_listing(self, client: Client, header: str, count_word: str) -> list[str]:
        word, count = header.split(" ")
        assert word == count_word, header
        lines = [client.wire.read_line() for _ in range(int(count) + 1)]
        assert lines[-1] == "END", lines
        return lines[:-1]

    # -- rules: connections, versions, registrations --

    @initialize(count=st.integers(2, 4), subscribers=st.sets(st.integers(0, 3)),
                versions=st.lists(st.sampled_from([1, 2]), min_size=4, max_size=4),
                forms=st.lists(st.sampled_from(["retransmissao", "senha", "senha",
                                                "diretorio"]), min_size=4, max_size=4))
    def first_clients(self, count: int, subscribers: set[int], versions: list[int],
                      forms: list[str]) -> None:
        """Start from a populated server: a few registered clients, some subscribed."""
        for i in range(count):
            self.connect()
            client = self.clients[-1]
            if versions[i] == 2:
                self.say_hello(client, 2)
            self.register_client(client, FIRST_NICKS[i], forms[i], i, i in subscribers)

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule()
    def connect(self) -> None:
        # Each client from its own loopback address: the password limits are per address.
        wire = WireClient(self.server.address,
                          source_ip=f"127.0.{self.serial // 200}.{self.serial % 200 + 1}")
        ip, port = wire.local_address
        self.clients.append(Client(f"c{self.serial}", wire, ip=ip, port=port))
        self.serial += 1

    @rule(index=st.integers(0, 99), version=st.sampled_from([2, 2, 1, 3]))
    def hello(self, index: int, version: int) -> None:
        self.say_hello(self.pick(index, registered=False), version)

    def say_hello(self, client: Client, version: int) -> None:
        got = self.reply(client, f"OLA {version}")
        event(f"OLA -> {outcome(got)}")
        if client.nick is not None:
            assert is_error(got, "JA_REGISTRADO"), got
        elif version in (1, 2):
            assert got == "OK", got
            client.version = version
        else:
            assert got == VERSION_ERROR, got

    @rule(index=st.integers(0, 99), nick=nicks,
          form=st.sampled_from(["retransmissao"] * 4 + ["diretorio", "invalida"]
                               + ["senha"] * 4 + ["senha_errada", "senha_invalida"]),
          endpoint=st.integers(0, 99), then_subscribe=st.booleans())
    def register(self, index: int, nick: str, form: str, endpoint: int,
                 then_subscribe: bool) -> None:
        self.register_client(self.pick(index, registered=False), nick, form, endpoint,
                             then_subscribe)

    def register_client(self, client: Client, nick: str, form: str, endpoint: int,
                        then_subscribe: bool) -> None:
        account = self.accounts.get(key(nick))
        password = None
        if form == "retransmissao":
            line, ip, port = f"REGISTRAR {nick}", client.ip, client.port
        elif form in ("diretorio", "invalida"):
            endpoints = LEGACY_ENDPOINTS if form == "diretorio" else BAD_LEGACY
            ip, port = endpoints[endpoint % len(endpoints)]
            line = f"REGISTRAR {nick} {ip} {port}"
        else:
            ip, port = client.ip, client.port
            right = account.password if account else PASSWORDS[endpoint % 2]
            password = {"senha": right, "senha_invalida": BAD_PASSWORD,
                        "senha_errada": PASSWORDS[(PASSWORDS.index(right) + 1) % 2]}[form]
            line = f"REGISTRAR {nick} {password}"
        got = self.reply(client, line)
        event(f"REGISTRAR {form} -> {outcome(got)}")
        expected = self.expected_registration(client, nick, form, password, account)
        if expected != "OK":
            assert is_error(got, expected), (line, got)
        else:
            assert got == "OK", (line, got)
            self.registered(client, nick, ip, port, relay=form != "diretorio",
                            with_account=password is not None, password=password)
        if then_subscribe:
            self.subscribe_client(client)

    def expected_registration(self, client: Client, nick: str, form: str,
                              password: str | None, account: Account | None) -> str:
        """The reply's code ("OK" on success), in the server's order of checks."""
        if form == "invalida":
            return "ARGUMENTOS"
        if client.nick is not None:
            return "JA_REGISTRADO"
        if not valid_nick(nick):
            return "APELIDO_INVALIDO"
        if password == BAD_PASSWORD:
            return "SENHA_INVALIDA"
        online = key(nick) in self.registry
        if password is None:
            return "APELIDO_RESERVADO" if account else "APELIDO_EM_USO" if online else "OK"
        if self.failed_passwords.get(client.ip, 0) >= FAILED_PASSWORDS_ALLOWED:
            return "LIMITE"
        if account is not None and password != account.password:
            self.failed_passwords[client.ip] = self.failed_passwords.get(client.ip, 0) + 1
            return "SENHA_INCORRETA"
        if account is None and self.accounts_created.get(client.ip, 0) >= ACCOUNTS_PER_HOUR:
            return "LIMITE"
        return "APELIDO_EM_USO" if online else "OK"

    def registered(self, client: Client, nick: str, ip: str, port: int, *, relay: bool,
                   with_account: bool, password: str | None) -> None:
        self.push(f"ENTROU {nick}", self.subscribers())
        client.nick, client.key, client.relay = nick, key(nick), relay
        client.entry = (nick, ip, port)
        self.registry[client.key] = client
        if with_account:
            if client.key not in self.accounts:
                self.accounts[client.key] = Account(nick, password, self.newest_id,
                                                    self.newest_id)
                self.accounts_created[client.ip] = self.accounts_created.get(client.ip, 0) + 1
            client.account = True
            self.catch_up(client)

    @rule(index=st.integers(0, 99))
    def subscribe(self, index: int) -> None:
        self.subscribe_client(self.pick(index))

    def subscribe_client(self, client: Client) -> None:
        got = self.reply(client, "ASSINAR")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        else:
            assert got == "OK", got
            client.subscribed = client.relay  # directory-only: OK, and still no pushes

    @precondition(lambda self: any(k not in self.registry for k in self.accounts))
    @rule(index=st.integers(0, 99), choice=st.integers(0, 99),
          password=st.sampled_from(["senha", "senha", "senha", "senha_errada"]),
          spelling=st.sampled_from(["igual", "maiusculas"]))
    def log_in(self, index: int, choice: int, password: str, spelling: str) -> None:
        """An account that is away comes back (on an unregistered connection, mostly)."""
        nick = self.offline_account_nick(choice)
        event("conta volta")
        if spelling == "maiusculas":
            nick = nick.upper()
        self.register_client(self.pick(index, registered=False), nick, password, endpoint=0,
                             then_subscribe=False)

    @rule(index=st.integers(0, 99), current=st.sampled_from(["certa", "errada"]),
          new=st.sampled_from([*PASSWORDS, BAD_PASSWORD]))
    def change_password(self, index: int, current: str, new: str) -> None:
        client = self.pick(index)
        account = self.accounts.get(client.key) if client.account else None
        right = account.password if account else PASSWORDS[0]
        given = right if current == "certa" else PASSWORDS[(PASSWORDS.index(right) + 1) % 2]
        got = self.reply(client, f"SENHA {given} {new}")
        event(f"SENHA -> {outcome(got)}")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif account is None:
            assert is_error(got, "SEM_CONTA"), got
        elif new == BAD_PASSWORD:
            assert is_error(got, "SENHA_INVALIDA"), got
        elif self.failed_passwords.get(client.ip, 0) >= FAILED_PASSWORDS_ALLOWED:
            assert is_error(got, "LIMITE"), got
        elif given != account.password:
            assert is_error(got, "SENHA_INCORRETA"), got
            self.failed_passwords[client.ip] = self.failed_passwords.get(client.ip, 0) + 1
        else:
            assert got == "OK", got
            account.password = new

    # -- rules: messages --

    @rule(index=st.integers(0, 99),
          kind=st.sampled_from(["registrado", "registrado", "registrado_outra_caixa",
                                "si_mesmo", "conta_fora", "conta_fora", "desconhecido",
                                "invalido", "texto_recusado"]),
          choice=st.integers(0, 99), text=texts)
    def send(self, index: int, kind: str, choice: int, text: str) -> None:
        client = self.pick(index)
        if kind == "texto_recusado":
            text = REFUSED_TEXTS[choice % len(REFUSED_TEXTS)]
            got = self.reply(client, f"ENVIAR {self.registered_nick(choice) or 'x'} {text}")
            assert is_error(got, "ARGUMENTOS"), got  # before anything else
            return
        nick = self.registered_nick(choice)
        if kind == "si_mesmo" and client.nick is not None:
            nick = client.nick
        elif kind == "conta_fora":
            nick = self.offline_account_nick(choice) or "ninguem"
        elif kind == "desconhecido" or nick is None:
            nick = "ninguem"
        elif kind == "invalido":
            nick = INVALID_NICKS[choice % len(INVALID_NICKS)]
        elif kind == "registrado_outra_caixa":
            nick = nick.swapcase()
        got = self.reply(client, f"ENVIAR {nick} {text}")
        event(f"ENVIAR {kind} -> {outcome(got)}")
        recipient = self.registry.get(key(nick))
        account = self.accounts.get(key(nick))
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif recipient is not None and not recipient.relay:
            assert is_error(got, "SO_DIRETO"), got
        elif recipient is None and account is None:
            assert is_error(got, "NAO_ENCONTRADO"), got
        else:
            target = recipient.nick if recipient else account.nick
            wants_receipt = client.version >= 2 and client.account and account is not None
            message = self.store_message(client, key(nick), target, text, False, wants_receipt)
            self.check_ok(client, got, message.id)
            if recipient is not None:
                self.deliver_direct(message, recipient)

    @rule(index=st.integers(0, 99), room=rooms, own=st.booleans(), text=texts)
    def send_to_room(self, index: int, room: str, own: bool, text: str) -> None:
        client = self.pick(index)
        if own and client.rooms:  # one of its rooms, in any spelling that has its key
            spellings = [r for r in ROOMS if room_key(r) in client.rooms]
            room = spellings[len(text) % len(spellings)]
        got = self.reply(client, f"ENVIAR {room} {text}")
        event(f"ENVIAR #sala -> {outcome(got)}")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif not client.relay:
            assert is_error(got, "SO_DIRETO"), got
        elif not valid_room(room):
            assert is_error(got, "SALA_INVALIDA"), got
        elif room_key(room) not in client.rooms:
            assert is_error(got, "NAO_MEMBRO"), got
        else:
            shown = self.rooms[room_key(room)]
            message = self.store_message(client, room_key(room), shown.name, text, True)
            self.check_ok(client, got, message.id)
            for member in shown.members:
                if member is not client:
                    member.expected.append(self.msg_line(message, member))

    @rule(index=st.integers(0, 99), how_far=st.integers(-2, 3))
    def acknowledge(self, index: int, how_far: int) -> None:
        client = self.pick(index)
        up_to = max(1, self.newest_id + how_far)
        got = self.reply(client, f"RECEBIDO {up_to}")
        event(f"RECEBIDO -> {outcome(got)}")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif not client.account:
            assert is_error(got, "SEM_CONTA"), got
        else:
            assert got == "OK", got
            self.move_cursor(client.key, up_to)

    @rule(index=st.integers(0, 99), kind=st.sampled_from(["sala", "apelido", "invalido"]),
          room=rooms, choice=st.integers(0, 99), before=st.integers(-1, 40),
          limit=st.sampled_from([None, 1, 2, 5, 60]))
    def read_history(self, index: int, kind: str, room: str, choice: int, before: int,
                     limit: int | None) -> None:
        client = self.pick(index)
        if kind == "sala":
            target = room
        elif kind == "apelido":
            target = self.registered_nick(choice) or "ninguem"
        else:
            target = INVALID_NICKS[choice % len(INVALID_NICKS)]
        arguments = [target]
        if before >= 0 or limit is not None:
            arguments.append(str(max(before, 0)))
        if limit is not None:
            arguments.append(str(limit))
        header = self.reply(client, "HISTORICO " + " ".join(arguments))
        event(f"HISTORICO {kind} -> {outcome(header)}")
        if client.nick is None:
            assert is_error(header, "NAO_REGISTRADO"), header
            return
        if kind == "sala":
            if not valid_room(room):
                assert is_error(header, "SALA_INVALIDA"), header
                return
            chosen = [m for m in self.messages if m.room and m.target_key == room_key(room)]
        else:
            if not client.account:
                assert is_error(header, "SEM_CONTA"), header
                return
            if not valid_nick(target) and target != "ninguem":
                assert is_error(header, "APELIDO_INVALIDO"), header
                return
            pair = sorted((client.key, key(target)))
            first_id = self.accounts[client.key].first_id
            chosen = [m for m in self.messages if not m.room and m.id > first_id
                      and sorted((m.sender_key, m.target_key)) == pair]
        if before > 0:
            chosen = [m for m in chosen if m.id < before]
        chosen = chosen[-(limit or HISTORY_DEFAULT_LIMIT):]
        items = self.read_listing(client, header, "HISTORICO")
        assert [self.normal(item) for item in items] == [
            f"ITEM {m.id} T {m.sender} {m.target} {m.text}" for m in chosen]

    # Sending, joining and coming back build the state everything else is
    # checked against, so each has a second rule that calls it: twice as often.

    @rule(index=st.integers(0, 99), kind=st.sampled_from(["registrado", "conta_fora"]),
          choice=st.integers(0, 99), text=texts)
    def send_more(self, index: int, kind: str, choice: int, text: str) -> None:
        self.send(index, kind, choice, text)

    @rule(index=st.integers(0, 99), room=rooms, text=texts)
    def send_to_room_more(self, index: int, room: str, text: str) -> None:
        self.send_to_room(index, room, True, text)

    @rule(index=st.integers(0, 99), room=st.sampled_from(ROOMS))
    def join_more(self, index: int, room: str) -> None:
        self.join(index, room)

    @precondition(lambda self: any(k not in self.registry for k in self.accounts))
    @rule(index=st.integers(0, 99), choice=st.integers(0, 99))
    def log_in_more(self, index: int, choice: int) -> None:
        self.log_in(index, choice, "senha", "igual")

    # -- rules: rooms --

    @rule(index=st.integers(0, 99), room=rooms)
    def join(self, index: int, room: str) -> None:
        client = self.pick(index)
        got = self.reply(client, f"ENTRAR {room}")
        event(f"ENTRAR -> {outcome(got)}")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif not client.relay:
            assert is_error(got, "SO_DIRETO"), got
        elif not valid_room(room):
            assert is_error(got, "SALA_INVALIDA"), got
        else:
            assert got == "OK", got
            key_ = room_key(room)
            if key_ in client.rooms:
                return  # already a member: no push
            shown = self.rooms.setdefault(key_, Room(room))
            self.push(f"ENTROU {shown.name} {client.nick}", shown.members)
            shown.members.append(client)
            client.rooms.append(key_)

    @rule(index=st.integers(0, 99), room=rooms)
    def leave(self, index: int, room: str) -> None:
        client = self.pick(index)
        got = self.reply(client, f"DEIXAR {room}")
        event(f"DEIXAR -> {outcome(got)}")
        if client.nick is None:
            assert is_error(got, "NAO_REGISTRADO"), got
        elif not client.relay:
            assert is_error(got, "SO_DIRETO"), got
        elif not valid_room(room):
            assert is_error(got, "SALA_INVALIDA"), got
        elif room_key(room) not in client.rooms:
            assert is_error(got, "NAO_MEMBRO"), got
        else:
            assert got == "OK", got
            client.rooms.remove(room_key(room))
            self.leave_room(client, room_key(room))

    # -- rules: the directory and leaving --

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
            assert is_error(got, "NAO_REGISTRADO"), got
        elif named is not None and key(named) != client.key:
            assert is_error(got, "PROIBIDO"), got
        else:
            assert got == "OK", got
            self.unregister(client)

    @rule(index=st.integers(0, 99), kind=st.sampled_from(["LISTAR", "RETORNAR", "MEMBROS",
                                                         "SALAS"]),
          nick=nicks, room=rooms)
    def query(self, index: int, kind: str, nick: str, room: str) -> None:
        """The read-only requests, which need no registration."""
        client = self.pick(index)
        if kind == "LISTAR":
            header = self.reply(client, "LISTAR")
            assert self.read_listing(client, header, "USUARIOS") == [
                "USUARIO {} {} {}".format(*c.entry) for _, c in sorted(self.registry.items())]
        elif kind == "RETORNAR":
            got = self.reply(client, f"RETORNAR {nick}")
            found = self.registry.get(key(nick))
            if found is None:
                assert got == "NAO ENCONTRADO", got
            else:
                assert got == f"ENCONTRADO {found.entry[1]} {found.entry[2]}", got
        elif kind == "MEMBROS":
            got = self.reply(client, f"MEMBROS {room}")
            if not valid_room(room):
                assert is_error(got, "SALA_INVALIDA"), got
                return
            shown = self.rooms.get(room_key(room))
            people = sorted(shown.members if shown else [], key=lambda member: member.key)
            assert self.read_listing(client, got, "USUARIOS") == [
                f"USUARIO {m.nick} {m.ip} {m.port}" for m in people]
        else:
            got = self.reply(client, "SALAS")
            assert self.read_listing(client, got, "SALAS") == [
                f"SALA {self.rooms[k].name} {len(self.rooms[k].members)}"
                for k in sorted(self.rooms)]

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
        """Close without a word (a reset, with ``reset``): the server must notice alone.

        The server forgets a connection only after it has left the registry
        and every room, so once the count drops every SAIU (and ENTREGUE)
        is queued, and the barrier of the next check collects it.
        """
        client = self.pick(index)
        event(f"vanish: {'registered' if client.nick else 'unregistered'}")
        self.clients.remove(client)
        if reset:
            client.wire.reset()
        else:
            client.wire.close()
        wait_until(lambda: self.server.connection_count == len(self.clients),
                   what="o servidor esquecer a conexão fechada")
        if client.nick is not None:
            self.unregister(client)

    # -- the checks after every step --

    @invariant()
    def every_client_got_exactly_its_pushes(self) -> None:
        for client in self.clients:
            client.received += [self.normal(line) for line in client.wire.barrier()]
            assert client.received == client.expected, client.name
            client.received.clear()
            client.expected.clear()

    @invariant()
    def server_registry_matches_the_model(self) -> None:
        expected = [c.entry for _, c in sorted(self.registry.items())]
        assert self.server.registry.listing() == expected

    @invariant()
    def server_rooms_match_the_model(self) -> None:
        expected = [(self.rooms[k].name, len(self.rooms[k].members)) for k in sorted(self.rooms)]
        assert self.server.rooms.listing() == expected


ChatModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestChatModel = ChatModel.TestCase
