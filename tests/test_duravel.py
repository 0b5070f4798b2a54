"""Durability of what the server said OK to: crashes, and a store that fails.

* Crash durability: a real ``servidor.py`` process on a data file; several
  senders stream ENVIAR to accounts that are online, offline, or online in
  some rounds only; the server is killed (SIGKILL on POSIX) at random
  moments -- also while many connections pipeline at once, so a group
  commit is under way -- and restarted on the same file. Every message that
  got an ``OK`` must reach its recipient exactly once after the client drops
  the ids it has already seen (what RECEBIDO-based clients do), in the order
  its sender sent it; nothing is ever invented.
* Store faults through the server: a disk that fills up for real (a small
  tmpfs, as root), the data file deleted under a running server, a slow
  store, a corrupted or read-only data file at start.

The random choices come from a seed printed on failure
(``CHAT_DURAVEL_SEMENTE`` repeats a run). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import discos
import pytest
import simulacao
from wire import HOST, REPO, TIMEOUT, UNLIMITED, ServerProcess, WireClient, wait_until

import armazem
import servidor

SEED = int(os.environ.get("CHAT_DURAVEL_SEMENTE", str(random.randrange(1 << 30))))
PASSWORD = "segredo1"
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
OK_V2 = re.compile(rf"OK ([1-9]\d*) {WHEN}")
MSG_V2 = re.compile(rf"MSG ([1-9]\d*) {WHEN} (\S+) (\S+) (.*)")
ERROR_LINE = re.compile(r"ERRO ([A-Z_]+) (\S.*)")
SERVER_OPTIONS = ("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip", "0",
                  "--max-pendentes", "0", "--sem-descoberta")
"""No limit may refuse the test's own traffic, all from 127.0.0.1."""
CLI_TIMEOUT = 30.0


@pytest.fixture
def rng() -> random.Random:
    print(f"semente: CHAT_DURAVEL_SEMENTE={SEED}")
    return random.Random(SEED)


def assert_error(line: str, code: str) -> None:
    match = ERROR_LINE.fullmatch(line)
    assert match and match.group(1) == code, f"expected ERRO {code}, got {line!r}"


def start(path: Path) -> ServerProcess:
    return ServerProcess("--dados", str(path), *SERVER_OPTIONS)


def crash(process: ServerProcess) -> None:
    """Kill the server without warning (SIGKILL on POSIX), then reap it."""
    process.proc.kill()
    process.proc.wait(TIMEOUT)
    process.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# The clients of the crash tests


@dataclass
class Inbox:
    """What one account has received across every round, deduplicated by id.

    Messages to one account arrive in id order (what waited, oldest first,
    then the newer ones), so "seen" is simply the newest id so far.
    """

    nick: str
    newest: int = 0
    received: list[tuple[str, int]] = field(default_factory=list)
    """(sender, sequence number) in the order they arrived, duplicates dropped."""
    duplicates: int = 0

    def take(self, line: str) -> bool:
        """Record a MSG line; False for anything else."""
        match = MSG_V2.fullmatch(line)
        if not match:
            return False
        message_id = int(match.group(1))
        assert match.group(3).casefold() == self.nick, line
        if message_id <= self.newest:
            self.duplicates += 1  # pushed again: the cursor had not reached it
            return True
        self.newest = message_id
        sender, number = match.group(4).split(":")
        assert sender == match.group(2), line
        self.received.append((sender, int(number)))
        return True


class Reader:
    """An account online for one round: reads everything, acknowledges now and then."""

    def __init__(self, address: tuple[str, int], inbox: Inbox, ack_every: int) -> None:
        self.inbox = inbox
        self.ack_every = ack_every
        self.client = WireClient(address, timeout=10.0)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"leitor-{inbox.nick}")
        self.thread.start()

    def _run(self) -> None:
        client, inbox = self.client, self.inbox
        try:
            client.send(f"OLA 2\nREGISTRAR {inbox.nick} {PASSWORD}\n".encode())
            unacknowledged = 0
            while True:
                raw = client.read_raw_line(30.0)
                if raw is None:
                    return  # the server was killed
                line = raw.decode()
                if inbox.take(line):
                    unacknowledged += 1
                    if unacknowledged >= self.ack_every:
                        client.send_line(f"RECEBIDO {inbox.newest}")
                        unacknowledged = 0
                else:
                    assert line == "OK", line
        except (OSError, TimeoutError):
            return  # killed mid-write or mid-read
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(20)
        self.client.close()
        assert not self.thread.is_alive(), f"{self.inbox.nick} still reading"
        assert not self.errors, self.errors


class Sender:
    """A version-2 connection without account that pipelines ENVIAR until the server dies.

    The n-th reply answers the n-th ENVIAR, so an ``OK`` tells exactly which
    message was stored; ENVIARs without a reply may or may not have been.
    """

    def __init__(self, nick: str, targets: list[str], first_number: int, count: int,
                 batch: int = 10) -> None:
        self.nick = nick
        self.targets = targets
        self.next_number = first_number
        self.count = count
        self.batch = batch
        self.acknowledged: list[tuple[str, int]] = []  # (recipient, number)
        self.unanswered: list[tuple[str, int]] = []
        self.errors: list[BaseException] = []
        self.client: WireClient | None = None
        self.thread: threading.Thread | None = None

    def target_of(self, number: int) -> str:
        return self.targets[number % len(self.targets)]

    def start(self, address: tuple[str, int], go: threading.Event | None = None) -> None:
        self.client = WireClient(address, timeout=10.0)
        self.thread = threading.Thread(target=self._run, args=(go,), daemon=True,
                                       name=f"remetente-{self.nick}")
        self.thread.start()

    def _run(self, go: threading.Event | None) -> None:
        client = self.client
        try:
            for line in ("OLA 2", f"REGISTRAR {self.nick}"):
                reply = request_or_eof(client, line)
                if reply is None:
                    return
                assert reply == "OK", reply
            if go is not None:
                assert go.wait(10)
            end = self.next_number + self.count
            while self.next_number < end:
                numbers = range(self.next_number, min(end, self.next_number + self.batch))
                self.unanswered = [(self.target_of(n), n) for n in numbers]
                self.next_number = numbers[-1] + 1
                client.send("".join(f"ENVIAR {target} {self.nick}:{n}\n"
                                    for target, n in self.unanswered).encode())
                while self.unanswered:
                    raw = client.read_raw_line(30.0)
                    if raw is None:
                        return
                    assert OK_V2.fullmatch(raw.decode()), raw
                    self.acknowledged.append(self.unanswered.pop(0))
        except (OSError, TimeoutError):
            return
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(20)
        self.client.close()
        assert not self.thread.is_alive(), f"{self.nick} still sending"
        assert not self.errors, self.errors


def request_or_eof(client: WireClient, line: str) -> str | None:
    """``client.request``, but None when the (killed) server closed the connection."""
    client.send_line(line)
    raw = client.read_raw_line(30.0)
    return None if raw is None else raw.decode()


def register_accounts(address: tuple[str, int], nicks: list[str]) -> None:
    for nick in nicks:
        with WireClient(address) as client:
            assert client.request(f"REGISTRAR {nick} {PASSWORD}") == "OK"
            client.send_line("SAIR")
            assert client.expect_eof() == ["OK"]


def collect_everything(address: tuple[str, int], inbox: Inbox) -> None:
    """Register ``inbox``'s account and take all that waits for it.

    What waits is pushed right after the OK, before the next request is
    read, so the barrier's PONG comes after the last of it.
    """
    with WireClient(address, timeout=10.0) as client:
        assert client.request("OLA 2") == "OK"
        assert client.request(f"REGISTRAR {inbox.nick} {PASSWORD}") == "OK"
        for line in client.barrier(timeout=30.0):
            assert inbox.take(line), line
        client.send_line(f"RECEBIDO {inbox.newest}" if inbox.newest else "PING")
        assert client.read_line() in ("OK", "PONG")


def check_delivery(inbox: Inbox, acknowledged: set[tuple[str, str, int]],
                   maybe: set[tuple[str, str, int]]) -> None:
    """Every OK'd message once, nothing invented, each sender's messages in order."""
    got = [(inbox.nick, sender, number) for sender, number in inbox.received]
    assert len(got) == len(set(got)), f"{inbox.nick}: a message arrived twice under two ids"
    mine = {item for item in acknowledged if item[0] == inbox.nick}
    missing = mine - set(got)
    assert not missing, f"{inbox.nick}: {len(missing)} OK'd messages lost, e.g. " \
                        f"{sorted(missing)[:5]} (semente {SEED})"
    invented = set(got) - acknowledged - maybe
    assert not invented, f"{inbox.nick}: messages nobody sent: {sorted(invented)[:5]}"
    by_sender: dict[str, list[int]] = {}
    for _, sender, number in got:
        by_sender.setdefault(sender, []).append(number)
    for sender, numbers in by_sender.items():
        assert numbers == sorted(numbers), f"{inbox.nick}: {sender}'s messages out of order"


# --------------------------------------------------------------------------
# Crash durability


def test_every_ok_survives_sigkill_at_random_moments(tmp_path, rng):
    """24 rounds: stream, kill at a random moment, restart on the same file."""
    path = tmp_path / "chat.sqlite3"
    online = ["sempre1", "sempre2"]  # connected in every round
    sometimes = "asvezes"  # connected in odd rounds only
    offline = "ausente"  # connected only at the end
    inboxes = {nick: Inbox(nick) for nick in [*online, sometimes, offline]}
    targets = list(inboxes)
    next_numbers = dict.fromkeys((f"s{n}" for n in range(3)), 0)
    acknowledged: set[tuple[str, str, int]] = set()
    maybe: set[tuple[str, str, int]] = set()
    rounds = 24
    with start(path) as process:
        register_accounts(process.address, targets)
    for round_number in range(rounds):
        with start(path) as process:
            readers = [Reader(process.address, inboxes[nick], ack_every=rng.choice([1, 7, 50]))
                       for nick in online + ([sometimes] if round_number % 2 else [])]
            senders = [Sender(nick, targets, number, count=rng.randint(50, 400),
                              batch=rng.choice([1, 10, 40]))
                       for nick, number in next_numbers.items()]
            for sender in senders:
                sender.start(process.address)
            # Kill at a random moment: sometimes before anyone has an OK
            # (registrations, catch-up), mostly in the middle of the stream.
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.5)]))
            crash(process)
        for client in (*senders, *readers):
            client.join()
        for sender in senders:
            next_numbers[sender.nick] = sender.next_number
            acknowledged.update((target, sender.nick, n) for target, n in sender.acknowledged)
            maybe.update((target, sender.nick, n) for target, n in sender.unanswered)
    print(f"{len(acknowledged)} OK, {len(maybe)} sem resposta; pushed again: "
          f"{ {nick: inbox.duplicates for nick, inbox in inboxes.items()} }")
    assert len(acknowledged) > 300, "too few messages got an OK to prove anything"
    with start(path) as process:
        for inbox in inboxes.values():
            collect_everything(process.address, inbox)
    for inbox in inboxes.values():
        print(f"{inbox.nick}: {len(inbox.received)} received, {inbox.duplicates} pushed again")
        check_delivery(inbox, acknowledged, maybe)


def test_sigkill_during_group_commits_from_many_connections(tmp_path, rng):
    """16 connections pipeline 200 ENVIARs each at once; killed after a random number of OKs."""
    path = tmp_path / "chat.sqlite3"
    inbox = Inbox("caixa")
    acknowledged: set[tuple[str, str, int]] = set()
    maybe: set[tuple[str, str, int]] = set()
    with start(path) as process:
        register_accounts(process.address, [inbox.nick])
    for round_number in range(3):
        with start(path) as process:
            go = threading.Event()
            senders = [Sender(f"g{round_number}x{n}", [inbox.nick], 0, count=200, batch=200)
                       for n in range(16)]
            for sender in senders:
                sender.start(process.address, go)
            go.set()
            threshold = rng.randint(1, 1500)

            def enough(senders: list[Sender] = senders, threshold: int = threshold) -> bool:
                return (sum(len(s.acknowledged) for s in senders) >= threshold
                        or all(not s.thread.is_alive() for s in senders))

            wait_until(enough, 20.0, "OKs from the group commits")
            crash(process)
        for sender in senders:
            sender.join()
            acknowledged.update((inbox.nick, sender.nick, n) for _, n in sender.acknowledged)
            maybe.update((inbox.nick, sender.nick, n) for _, n in sender.unanswered)
    with start(path) as process:
        collect_everything(process.address, inbox)
    print(f"{len(acknowledged)} OK, {len(maybe)} sem resposta, {len(inbox.received)} recebidas")
    check_delivery(inbox, acknowledged, maybe)


def test_a_v1_accounts_cursor_is_saved_while_it_is_online(tmp_path, rng):
    """What was written to a v1 account is received: saved every 0.5 s, so a crash keeps it."""
    path = tmp_path / "chat.sqlite3"
    with start(path) as process:
        old = WireClient(process.address)
        assert old.request(f"REGISTRAR velho {PASSWORD}") == "OK"  # version 1
        ana = WireClient(process.address)
        ana.register("ana")
        for n in range(5):
            assert ana.request(f"ENVIAR velho m{n}") == "OK"
        assert old.read_lines(5) == [f"MSG ana velho m{n}" for n in range(5)]

        def pending() -> str:
            result = subprocess.run(
                simulacao.python_command(REPO / "servidor.py", "contas", "--listar",
                                         "--dados", str(path)),
                capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
            assert result.returncode == 0, result.stderr
            return result.stdout.splitlines()[1].split()[-1]

        wait_until(lambda: pending() == "0", 10.0, "the cursor saved by the server")
        crash(process)
        old.close()
        ana.close()
    with start(path) as process, WireClient(process.address) as back:
        assert back.request(f"REGISTRAR velho {PASSWORD}") == "OK"
        assert back.barrier() == []


# --------------------------------------------------------------------------
# Store faults through the server


def test_a_full_disk_refuses_enviar_keeps_the_rest_and_loses_nothing(tmp_path):
    with discos.mounted_tmpfs(tmp_path / "disco", "8m") as disk:
        path = disk / "chat.sqlite3"
        with start(path) as process:
            target = types.SimpleNamespace(address=process.address)
            register_accounts(target.address, ["fora"])
            online = WireClient(target.address)
            assert online.request("OLA 2") == "OK"
            assert online.request(f"REGISTRAR dentro {PASSWORD}") == "OK"
            ana = WireClient(target.address)
            assert ana.request("OLA 2") == "OK"
            ana.register("ana")
            for client in (ana, online):
                assert client.request("ENTRAR #sala") == "OK"
            ana.barrier()
            text = "d" * 2000
            acknowledged: list[tuple[str, int]] = []
            refused = 0
            filler = None
            for n in range(3000):
                if n == 20:
                    filler = discos.fill(disk)
                recipient = ("fora", "dentro", "#sala")[n % 3]
                reply = ana.request(f"ENVIAR {recipient} {n}:{text}")
                if OK_V2.fullmatch(reply):
                    acknowledged.append((recipient, n))
                else:
                    assert reply.startswith("ERRO ARMAZENAMENTO o servidor não conseguiu "
                                            "guardar a mensagem (disco cheio"), reply
                    refused += 1
                    if refused >= 6:
                        break
            assert refused >= 6, "the disk never filled up"
            assert any("disco cheio" in line for line in process.log)
            # Everything else keeps working, reads included.
            assert ana.request("PING vivo") == "PONG vivo"
            assert ana.request("LISTAR") == "USUARIOS 2"
            ana.read_lines(3)
            assert ana.request("RETORNAR dentro").startswith("ENCONTRADO ")
            assert ana.request("ENTRAR #outra") == "OK"
            assert ana.request("SALAS") == "SALAS 2"
            ana.read_lines(3)
            assert ana.request("MEMBROS #sala") == "USUARIOS 2"
            ana.read_lines(3)
            assert ana.request("HISTORICO #sala 0 1").startswith("HISTORICO 1")
            ana.read_lines(2)
            with WireClient(target.address) as newcomer:
                assert newcomer.request("REGISTRAR novato") == "OK"
            # The online recipient got exactly what was acknowledged, nothing refused.
            expected_live = [n for recipient, n in acknowledged if recipient != "fora"]
            lines = online.barrier()
            assert [int(MSG_V2.fullmatch(line).group(4).split(":")[0]) for line in lines] \
                == expected_live
            # Space freed: ENVIAR works again.
            filler.unlink()
            reply = ana.request("ENVIAR fora depois:" + text)
            assert OK_V2.fullmatch(reply), reply
            acknowledged.append(("fora", -1))
            online.close()
            ana.close()
        assert process.proc.returncode == 0, process.log[-5:]
        with start(path) as process:
            for nick in ("fora", "dentro"):
                with WireClient(process.address) as client:
                    assert client.request("OLA 2") == "OK"
                    assert client.request(f"REGISTRAR {nick} {PASSWORD}") == "OK"
                    texts = [MSG_V2.fullmatch(line).group(4).split(":")[0]
                             for line in client.barrier()]
                    assert texts == [str(n) if n >= 0 else "depois"
                                     for recipient, n in acknowledged if recipient == nick]


@pytest.mark.parametrize("deleted", ["arquivo", "arquivo-wal-shm"])
def test_the_data_file_deleted_under_a_running_server(tmp_path, deleted):
    path = tmp_path / "chat.sqlite3"
    with start(path) as process:
        register_accounts(process.address, ["fora"])
        bia, ana = WireClient(process.address), WireClient(process.address)
        bia.register("bia")
        ana.register("ana")
        for client in (ana, bia):
            assert client.request("ENTRAR #sala") == "OK"
        ana.barrier()
        assert ana.request("ENVIAR bia antes") == "OK"
        assert bia.read_line() == "MSG ana bia antes"
        path.unlink()
        if deleted == "arquivo-wal-shm":
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        for n in range(6):  # every time, to every kind of recipient
            reply = ana.request(f"ENVIAR {('bia', 'fora', '#sala')[n % 3]} depois {n}")
            assert_error(reply, "ARMAZENAMENTO")
        assert bia.barrier() == []
        assert ana.request("PING vivo") == "PONG vivo"
        assert process.proc.poll() is None
        process.wait_for_log("removido ou substituído")
        bia.close()
        ana.close()
    assert process.proc.returncode == 0, process.log[-5:]


def test_a_slow_store_look_up_in_a_registration_loses_no_message(tmp_path):
    """A registration whose account look-up stalls (a slow disk) is already in the registry.

    A message sent to it meanwhile gets ``OK``, so it must arrive. (The
    connections take turns; a thread that waits longer than the turn's
    patience goes ahead, which is what a stalled look-up makes happen.)
    """
    store = armazem.Store.open(str(tmp_path / "chat.sqlite3"))
    entered, release = threading.Event(), threading.Event()
    look_ups = []
    real_get_account = store.get_account

    def get_account(key: str) -> armazem.Account | None:
        look_ups.append(key)
        if key == "bob" and look_ups.count("bob") == 1:
            # As if another connection created an account meanwhile: the
            # registration then looks again after entering the registry.
            server.accounts_created += 1
        if key == "bob" and server.registry.get("bob") is not None \
                and not entered.is_set():  # the check after entering
            entered.set()
            release.wait(10)
        return real_get_account(key)

    store.get_account = get_account
    server = servidor.Servidor(servidor.ServerConfig(host=HOST, port=0, store=store,
                                                     discovery=False, **UNLIMITED))
    server.account_keys.add("bob")  # as for an account the administrator removed: the
    # set keeps the nickname, so every look-up of it reaches the (slow) store
    server.turn.patience = 0.05
    server.start()
    try:
        with WireClient(server.address) as ana, WireClient(server.address) as bob:
            ana.register("ana")
            bob.send_line("REGISTRAR bob")
            assert entered.wait(TIMEOUT)
            assert ana.request("ENVIAR bob chegou?") == "OK"
            release.set()
            assert sorted(bob.read_lines(2)) == ["MSG ana bob chegou?", "OK"]
    finally:
        release.set()
        server.stop()
        store.close()


# --------------------------------------------------------------------------
# A data file the server cannot use at start


def run_servidor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        simulacao.python_command(REPO / "servidor.py", "--host", HOST, "--port", "0",
                                 "--sem-descoberta", *args),
        cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
        stdin=subprocess.DEVNULL)


def _chat_database(path: Path) -> None:
    with armazem.Store.open(str(path)) as store:
        store.append_messages([armazem.NewMessage("ana", "ana", "#s", "#s", f"m{n}" * 200,
                                                  True, False) for n in range(200)])


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(16384))


def _text(path: Path) -> None:
    path.write_text("isto não é um banco de dados\n" * 100)


def _truncated(path: Path) -> None:
    _chat_database(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 100])


def _other_program(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notas (texto TEXT)")
        conn.execute("INSERT INTO notas VALUES ('minhas notas')")
        conn.commit()


def _broken_header(path: Path) -> None:
    _chat_database(path)
    data = bytearray(path.read_bytes())
    data[:16] = b"\0" * 16
    path.write_bytes(bytes(data))


def _from_the_future(path: Path) -> None:
    _chat_database(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()


@pytest.mark.parametrize(("make", "reason"), [
    (_garbage, "não é um banco de dados do chat utilizável"),
    (_text, "não é um banco de dados do chat utilizável"),
    (_truncated, "não é um banco de dados do chat utilizável: arquivo truncado"),
    (_other_program, "pertence a outro programa"),
    (_broken_header, "não é um banco de dados do chat utilizável"),
    (_from_the_future, "foi criado por uma versão mais nova do servidor"),
], ids=["lixo", "texto", "truncado", "outro-programa", "cabecalho", "versao-futura"])
def test_an_unusable_data_file_stops_the_server_and_is_left_untouched(tmp_path, make, reason):
    path = tmp_path / "chat.sqlite3"
    make(path)
    before = sha256(path)
    result = run_servidor("--dados", str(path))
    assert result.returncode == 2, result.stderr
    assert "não foi possível abrir os dados" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3"]


def test_a_read_only_data_directory_at_start(tmp_path):
    """Linux cannot remount read-only under open files: the tmpfs goes read-only first."""
    with discos.mounted_tmpfs(tmp_path / "ro", "4m") as disk:
        path = disk / "chat.sqlite3"
        _chat_database(path)
        before = sha256(path)
        assert discos.run("mount", "-o", "remount,ro", str(disk)).returncode == 0
        result = run_servidor("--dados", str(path))
        assert result.returncode == 2, result.stderr
        assert f"o diretório de dados não permite gravação: {disk}" in result.stderr
        result = run_servidor("--dados", str(disk / "novo" / "chat.sqlite3"))
        assert result.returncode == 2, result.stderr
        assert "não foi possível criar o arquivo de dados" in result.stderr
        assert "Traceback" not in result.stderr
        assert sha256(path) == before
        assert discos.run("mount", "-o", "remount,rw", str(disk)).returncode == 0
        with start(path) as process, WireClient(process.address) as client:
            assert client.request("REGISTRAR ana") == "OK"
            assert client.request("ENTRAR #s") == "OK"
            assert client.request("ENVIAR #s de volta") == "OK"


@pytest.mark.parametrize("light_waiting", [True, False], ids=["com-leve", "so-ocupados"])
def test_a_commit_group_takes_the_light_batches_and_a_bounded_share_of_the_busy_ones(
        light_waiting):
    """A group is one transaction, and everyone in it waits for all of it: with thousands
    of busy messages queued, a group stops near MAX_GROUP_MESSAGES (without a light batch
    waiting, it once took them all)."""
    log = servidor.MessageLog(armazem.MemoryStore(), lambda *args: None)
    batch = 32  # a busy client's window of unanswered messages

    def ticket() -> servidor.Ticket:
        return servidor.Ticket(None, [b"ERRO x\n"] * batch)  # type: ignore[arg-type]

    busy = [ticket() for _ in range(100)]  # 100 pairs' windows: 3,200 messages
    log._queue.extend(busy)
    light = [ticket()] if light_waiting else []
    log._urgent.extend(light)
    with log._cond:
        group = log._next_group_locked()
    assert group[:len(light)] == light  # the light batch first
    taken = group[len(light):]
    assert servidor.MAX_GROUP_MESSAGES <= sum(len(t.slots) for t in taken) < (
        servidor.MAX_GROUP_MESSAGES + batch)
    assert taken == busy[:len(taken)]  # oldest first, none skipped
    with log._cond:
        assert log._next_group_locked()[0] is busy[len(taken)]  # the next group goes on
