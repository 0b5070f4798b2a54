"""The message store (armazem.py): real SQLite files, real faults, real crashes.

Every test opens its own file under ``tmp_path``. The fault tests that need
root (a full tmpfs, a read-only mount, an ext4 image that the kernel turns
read-only) skip with the reason when this machine does not allow them, and
always unmount in a ``finally``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import discos
import pytest
from wire import wait_until

import armazem
import protocolo
from armazem import Account, MemoryStore, NewMessage, Receipt, Store, StoreCorruptError, StoreError

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 10.0
"""Bound on every wait for a child process or a thread."""


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    opened = Store.open(str(tmp_path / "chat.sqlite3"), clock=clock)
    try:
        yield opened
    finally:
        opened.close()


def dm(sender: str, target: str, text: str = "oi", *, receipt: bool = False) -> NewMessage:
    """A direct message; keys are the casefolded nicknames."""
    return NewMessage(sender.casefold(), sender, target.casefold(), target, text, False, receipt)


def room(sender: str, name: str, text: str = "oi") -> NewMessage:
    return NewMessage(sender.casefold(), sender, name.casefold(), name, text, True, False)


def ids_of(messages: list[armazem.StoredMessage]) -> list[int]:
    return [message.id for message in messages]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# --------------------------------------------------------------------------
# Appending


def test_append_assigns_increasing_ids_and_the_clock_time(store: Store, clock: FakeClock):
    first = store.append_messages([room("Ana", "#geral", "um"), dm("Ana", "Bia", "dois")])
    clock.now += 1.5
    second = store.append_messages([room("Bia", "#geral", "três")])
    assert first == [(1, 1_800_000_000_000), (2, 1_800_000_000_000)]
    assert second == [(3, 1_800_000_001_500)]
    assert store.newest_id() == 3
    assert store.append_messages([]) == []


def test_appended_messages_survive_reopening_with_every_field(tmp_path: Path, clock: FakeClock):
    path = str(tmp_path / "chat.sqlite3")
    with Store.open(path, clock=clock) as first:
        [(message_id, when)] = first.append_messages([room("João", "#Redes", "olá, ção 😀")])
    with Store.open(path, clock=clock) as second:
        [stored] = second.history_room("#redes")
    assert stored == armazem.StoredMessage(message_id, when, "João", "#Redes", "olá, ção 😀",
                                           "joão", "#redes", True)


def test_ids_are_never_reused_after_messages_are_deleted(tmp_path: Path, clock: FakeClock):
    path = str(tmp_path / "chat.sqlite3")
    with Store.open(path, clock=clock, retention_days=1) as store:
        store.append_messages([room("ana", "#a")] * 5)
        clock.now += 2 * 86400
        assert store.prune() == 5
        assert store.history_room("#a") == []
        assert store.newest_id() == 5
    with Store.open(path, clock=clock) as store:
        assert store.append_messages([room("ana", "#a")])[0][0] == 6


def test_fsync_option_selects_full_synchronous_mode(tmp_path: Path):
    with Store.open(str(tmp_path / "a.sqlite3")) as normal, \
            Store.open(str(tmp_path / "b.sqlite3"), fsync=True) as full:
        assert normal._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert full._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert normal._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------------------
# Pending messages, cursors and receipts


def test_pending_holds_direct_messages_after_the_account_exists_only(store: Store):
    store.append_messages([dm("ana", "bia", "antes da conta")])
    assert store.create_account("bia", "Bia", "registro")
    store.append_messages([dm("ana", "bia", "1"), room("ana", "#bia", "sala"),
                           dm("ana", "carla", "outra"), dm("carla", "Bia", "2")])
    pending = store.pending_messages("bia")
    assert [m.text for m in pending] == ["1", "2"]
    assert [m.sender for m in pending] == ["ana", "carla"]
    assert all(not m.room and m.target_key == "bia" for m in pending)
    assert store.pending_count("bia") == 2
    assert store.pending_messages("carla") == []  # no account: nothing waits
    assert store.pending_count("carla") == 0


def test_pending_pages_with_after_id_and_limit(store: Store):
    store.create_account("bia", "Bia", "registro")
    ids = [i for i, _ in store.append_messages([dm("ana", "bia", str(n)) for n in range(10)])]
    assert ids_of(store.pending_messages("bia", limit=3)) == ids[:3]
    assert ids_of(store.pending_messages("bia", after_id=ids[2], limit=3)) == ids[3:6]
    assert ids_of(store.pending_messages("bia", after_id=ids[-1])) == []
    assert store.pending_messages("bia", limit=0) == []
    store.mark_received("bia", ids[4])
    # The cursor wins over a smaller after_id.
    assert ids_of(store.pending_messages("bia", after_id=ids[1])) == ids[5:]
    assert store.pending_count("bia") == 5


def test_cursor_never_moves_back_and_is_clamped_to_the_newest_id(store: Store):
    store.create_account("bia", "Bia", "registro")
    ids = [i for i, _ in store.append_messages([dm("ana", "bia", str(n)) for n in range(4)])]
    store.mark_received("bia", ids[2])
    store.mark_received("bia", ids[0])
    assert store.get_account("bia").received_id == ids[2]
    store.mark_received("bia", 10**12)
    assert store.get_account("bia").received_id == ids[3] == store.newest_id()
    later = store.append_messages([dm("ana", "bia", "depois")])[0][0]
    assert ids_of(store.pending_messages("bia")) == [later]
    assert store.mark_received("ninguem", 5) == []


def test_receipts_become_due_once_and_only_for_messages_that_want_them(store: Store):
    store.create_account("ana", "Ana", "r")
    store.create_account("bia", "Bia", "r")
    sent = store.append_messages([dm("Ana", "Bia", "com recibo", receipt=True),
                                  dm("Ana", "Bia", "sem recibo"),
                                  dm("Ana", "Bia", "com recibo 2", receipt=True)])
    ids = [i for i, _ in sent]
    assert store.receipts_due("ana") == []
    due = store.mark_received("bia", ids[1])
    assert due == [Receipt(ids[0], "ana", "Bia")]
    assert store.mark_received("bia", ids[1]) == []
    assert store.mark_received("bia", ids[2]) == [Receipt(ids[2], "ana", "Bia")]
    assert store.receipts_due("ana") == [Receipt(ids[0], "ana", "Bia"),
                                         Receipt(ids[2], "ana", "Bia")]
    assert store.receipts_due("ana", limit=1) == [Receipt(ids[0], "ana", "Bia")]
    store.mark_receipts_sent([ids[0]])
    assert store.receipts_due("ana") == [Receipt(ids[2], "ana", "Bia")]
    store.mark_receipts_sent([ids[2], ids[1]])
    assert store.receipts_due("ana") == []
    assert store.receipts_due("bia") == []


def test_no_receipts_for_rooms(store: Store):
    store.create_account("ana", "Ana", "r")
    store.create_account("bia", "Bia", "r")
    store.append_messages([NewMessage("ana", "Ana", "#s", "#s", "x", True, True)])
    assert store.mark_received("bia", store.newest_id()) == []
    assert store.receipts_due("ana") == []


def test_a_removed_sender_gets_no_receipts_nor_does_the_next_owner_of_the_nick(store: Store):
    store.create_account("ana", "Ana", "r")
    store.create_account("bia", "Bia", "r")
    first = store.append_messages([dm("Ana", "Bia", "1", receipt=True)])[0][0]
    store.mark_received("bia", first)  # due to ana, who never comes back for it
    second = store.append_messages([dm("Ana", "Bia", "2", receipt=True)])[0][0]
    assert store.remove_account("ana")
    assert store.create_account("ana", "Ana", "outra pessoa")
    assert store.mark_received("bia", second) == []
    assert store.receipts_due("ana") == []


# --------------------------------------------------------------------------
# History


def test_history_room_pages_back_oldest_first(store: Store):
    ids = [i for i, _ in store.append_messages(
        [room("ana", "#geral", str(n)) for n in range(10)] + [room("ana", "#outra", "x")])]
    geral = ids[:10]
    assert ids_of(store.history_room("#geral")) == geral
    assert ids_of(store.history_room("#geral", limit=3)) == geral[-3:]
    assert ids_of(store.history_room("#geral", before_id=geral[7], limit=3)) == geral[4:7]
    assert ids_of(store.history_room("#geral", before_id=geral[1], limit=3)) == geral[:1]
    assert store.history_room("#geral", before_id=geral[0]) == []
    assert store.history_room("#geral", limit=0) == []
    assert store.history_room("#vazia") == []


def test_history_pair_covers_both_directions_and_notes_to_self(store: Store):
    sent = store.append_messages([dm("ana", "bia", "1"), dm("bia", "ana", "2"),
                                  dm("ana", "carla", "3"), room("ana", "#bia", "4"),
                                  dm("ana", "ana", "5"), dm("bia", "ana", "6")])
    ids = [i for i, _ in sent]
    assert ids_of(store.history_pair("ana", "bia")) == [ids[0], ids[1], ids[5]]
    assert ids_of(store.history_pair("bia", "ana")) == [ids[0], ids[1], ids[5]]
    assert ids_of(store.history_pair("ana", "bia", before_id=ids[5], limit=1)) == [ids[1]]
    assert ids_of(store.history_pair("ana", "ana")) == [ids[4]]
    assert store.history_pair("ana", "bia", limit=0) == []


def test_history_pair_of_an_account_starts_when_it_was_created(store: Store):
    old = store.append_messages([dm("bia", "ana", "para a ana de antes")])[0][0]
    store.create_account("ana", "Ana", "r")
    new = store.append_messages([dm("bia", "ana", "para a dona da conta")])[0][0]
    assert ids_of(store.history_pair("ana", "bia")) == [new]
    assert ids_of(store.history_pair("bia", "ana")) == [old, new]  # bia has no account


def test_hot_queries_use_their_indexes(store: Store):
    plans = {
        "history": armazem._HISTORY_ROOM,
        "pair": armazem._HISTORY_PAIR,
        "pending": armazem._PENDING,
        "count": armazem._PENDING_COUNT,
        "receipts": armazem._RECEIPTS_DUE,
    }
    parameters = {"conversation": "#a", "before": 9, "limit": 5, "reader": "a", "key": "a",
                  "after": 0}
    for name, sql in plans.items():
        plan = " ".join(row[3] for row in store._writer.execute(
            f"EXPLAIN QUERY PLAN {sql}", parameters))
        assert "SCAN messages" not in plan, (name, plan)
        assert "USING INDEX messages_" in plan, (name, plan)


# --------------------------------------------------------------------------
# Accounts


def test_accounts_create_look_up_change_list_and_remove(store: Store, clock: FakeClock):
    store.append_messages([room("x", "#a")] * 3)
    assert store.create_account("bia", "Bia", "registro-b")
    assert not store.create_account("bia", "BIA", "outro")
    assert store.create_account("ana", "Ana", "registro-a")
    assert store.get_account("bia") == Account("bia", "Bia", 1_800_000_000_000, 3, 3)
    assert store.get_account("nao") is None
    assert store.password_record("bia") == "registro-b"
    assert store.password_record("nao") is None
    assert store.set_password_record("bia", "novo")
    assert not store.set_password_record("nao", "novo")
    assert store.password_record("bia") == "novo"
    assert [a.key for a in store.list_accounts()] == ["ana", "bia"]
    assert store.remove_account("bia")
    assert not store.remove_account("bia")
    assert store.get_account("bia") is None
    assert [a.key for a in store.list_accounts()] == ["ana"]


def test_a_recreated_account_does_not_inherit_pending_messages(store: Store):
    store.create_account("bia", "Bia", "r")
    store.append_messages([dm("ana", "bia", "para a primeira bia")])
    assert store.pending_count("bia") == 1
    store.remove_account("bia")
    store.create_account("bia", "Bia", "r2")
    assert store.pending_messages("bia") == []


def test_no_password_record_or_message_text_in_any_repr(store: Store):
    record = armazem.hash_password("segredo-123")
    store.create_account("ana", "Ana", record)
    message = dm("ana", "bia", "texto secreto")
    store.append_messages([message])
    shown = " ".join(repr(value) for value in (
        store, store.get_account("ana"), store.list_accounts(), message,
        store.history_pair("bia", "ana")))
    assert "segredo" not in shown and record not in shown
    assert record.split("$")[-1] not in shown
    assert "texto secreto" not in shown


# --------------------------------------------------------------------------
# Retention


def test_prune_deletes_old_messages_but_keeps_what_is_still_owed(tmp_path: Path,
                                                                 clock: FakeClock):
    with Store.open(str(tmp_path / "c.sqlite3"), clock=clock, retention_days=7) as store:
        store.create_account("bia", "Bia", "r")
        store.create_account("ana", "Ana", "r")
        old = [i for i, _ in store.append_messages([
            room("ana", "#s", "sala velha"),
            dm("ana", "bia", "pendente para bia"),
            dm("ana", "carla", "para quem não tem conta"),
            dm("ana", "Bia", "recibo devido", receipt=True),
        ])]
        clock.now += 3 * 86400
        store.mark_received("bia", old[1] - 1)  # bia has not received old[1] yet
        recent = store.append_messages([room("ana", "#s", "recente")])[0][0]
        clock.now += 5 * 86400  # the old ones are 8 days old, the recent one 5
        assert store.prune() == 2  # the room message and the one to carla
        assert ids_of(store.history_room("#s")) == [recent]
        assert ids_of(store.pending_messages("bia")) == [old[1], old[3]]
        # Received now: old[3]'s receipt is due to ana, so it stays until sent.
        assert store.mark_received("bia", old[3]) == [Receipt(old[3], "ana", "Bia")]
        assert store.prune() == 1  # old[1]: received, nothing owed
        store.mark_receipts_sent([old[3]])
        assert store.prune() == 1
        assert ids_of(store.history_pair("ana", "bia")) == []
        assert ids_of(store.history_room("#s")) == [recent]


def test_prune_spares_pending_messages_only_for_existing_accounts(tmp_path: Path,
                                                                 clock: FakeClock):
    with Store.open(str(tmp_path / "c.sqlite3"), clock=clock, retention_days=0.5) as store:
        store.create_account("bia", "Bia", "r")
        store.append_messages([dm("ana", "bia", str(n)) for n in range(3)])
        clock.now += 86400
        assert store.prune() == 0
        store.remove_account("bia")
        assert store.prune() == 3


def test_retention_zero_keeps_everything(store: Store, clock: FakeClock):
    store.append_messages([room("ana", "#s")] * 3)
    clock.now += 10 * 365 * 86400
    assert store.prune() == 0
    assert len(store.history_room("#s")) == 3


def test_prune_works_in_chunks(tmp_path: Path, clock: FakeClock, monkeypatch):
    monkeypatch.setattr(armazem, "PRUNE_CHUNK_IDS", 7)
    with Store.open(str(tmp_path / "c.sqlite3"), clock=clock, retention_days=1) as store:
        store.append_messages([room("ana", "#s", str(n)) for n in range(50)])
        clock.now += 2 * 86400
        kept = store.append_messages([room("ana", "#s", "novo")])[0][0]
        assert store.prune() == 50
        assert ids_of(store.history_room("#s")) == [kept]


# --------------------------------------------------------------------------
# The ephemeral store


def test_memory_store_numbers_everything_and_keeps_room_history_only():
    clock = FakeClock()
    memory = MemoryStore(clock=clock)
    assert (memory.durable, memory.accounts_enabled, memory.path) == (False, False, None)
    assigned = memory.append_messages([room("ana", "#geral", "a"), dm("ana", "bia", "b"),
                                       room("bia", "#geral", "c")])
    # Ids start from the clock in microseconds: they keep growing across restarts.
    first = 1_800_000_000_000_000 + 1
    assert assigned == [(first, 1_800_000_000_000), (first + 1, 1_800_000_000_000),
                        (first + 2, 1_800_000_000_000)]
    assert [m.text for m in memory.history_room("#geral")] == ["a", "c"]
    assert ids_of(memory.history_room("#geral", before_id=first + 2)) == [first]
    assert ids_of(memory.history_room("#geral", limit=1)) == [first + 2]
    assert memory.history_room("#geral", limit=0) == []
    assert memory.newest_id() == first + 2
    assert MemoryStore(clock=FakeClock()).append_messages([dm("a", "b", "x")])[0][0] >= first
    assert memory.history_pair("ana", "bia") == []
    assert memory.pending_messages("bia") == [] and memory.pending_count("bia") == 0
    assert not memory.create_account("ana", "Ana", "r")
    assert memory.get_account("ana") is None and memory.password_record("ana") is None
    assert memory.list_accounts() == [] and not memory.remove_account("ana")
    assert not memory.set_password_record("ana", "r")
    assert memory.mark_received("ana", first) == [] and memory.receipts_due("ana") == []
    memory.mark_receipts_sent([first])
    assert memory.prune() == 0
    memory.close()


def test_memory_store_bounds_rooms_and_messages_per_room():
    memory = MemoryStore()
    memory.append_messages([room("ana", "#cheia", str(n))
                            for n in range(armazem.ROOM_HISTORY_LIMIT + 5)])
    kept = memory.history_room("#cheia", limit=10**6)
    assert len(kept) == armazem.ROOM_HISTORY_LIMIT
    assert kept[0].text == "5" and kept[-1].text == str(armazem.ROOM_HISTORY_LIMIT + 4)
    memory.append_messages([room("ana", f"#s{n}") for n in range(armazem.MAX_MEMORY_ROOMS - 1)])
    memory.append_messages([room("ana", "#cheia", "ainda viva")])  # now the most recent
    memory.append_messages([room("ana", "#nova")])
    assert memory.history_room("#s0") == []  # least recently written, dropped
    assert memory.history_room("#cheia")[-1].text == "ainda viva"
    assert len(memory._rooms) == armazem.MAX_MEMORY_ROOMS


# --------------------------------------------------------------------------
# Where the data lives


def test_default_data_path_per_platform():
    assert armazem.default_data_path("linux", {}, "/home/ana") == \
        "/home/ana/.local/share/chat-redes/chat.sqlite3"
    assert armazem.default_data_path("linux", {"XDG_DATA_HOME": "/dados"}, "/home/ana") == \
        "/dados/chat-redes/chat.sqlite3"
    # The XDG spec says a relative value is to be ignored.
    assert armazem.default_data_path("freebsd14", {"XDG_DATA_HOME": "rel"}, "/home/ana") == \
        "/home/ana/.local/share/chat-redes/chat.sqlite3"
    assert armazem.default_data_path("darwin", {"XDG_DATA_HOME": "/x"}, "/Users/ana") == \
        "/Users/ana/Library/Application Support/chat-redes/chat.sqlite3"
    assert armazem.default_data_path(
        "win32", {"APPDATA": r"C:\Users\ana\AppData\Roaming"}, r"C:\Users\ana") == \
        r"C:\Users\ana\AppData\Roaming\chat-redes\chat.sqlite3"
    assert armazem.default_data_path("win32", {}, r"C:\Users\ana") == \
        r"C:\Users\ana\AppData\Roaming\chat-redes\chat.sqlite3"


def test_default_data_path_creates_nothing(tmp_path: Path):
    armazem.default_data_path("linux", {}, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="permissões POSIX")
def test_open_creates_private_directories_and_file(tmp_path: Path):
    path = tmp_path / "a" / "b" / "chat.sqlite3"
    with Store.open(str(path)) as store:
        assert store.path == str(path)
        assert store.durable and store.accounts_enabled
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_open_without_create_refuses_a_missing_file(tmp_path: Path):
    with pytest.raises(StoreError, match="não encontrado"):
        Store.open(str(tmp_path / "nao.sqlite3"), create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_not_a_data_file(tmp_path: Path):
    with pytest.raises(StoreError, match="diretório"):
        Store.open(str(tmp_path))


@pytest.mark.parametrize(("message", "expected"), [
    ("database or disk is full", "disco cheio"),
    ("attempt to write a readonly database", "somente leitura"),
    ("disk I/O error", "entrada/saída"),
    ("database is locked", "ocupado"),
    ("something else", "falha no armazenamento"),
])
def test_sqlite_errors_read_in_portuguese_without_an_error_name(message: str, expected: str):
    """Python 3.10 has no ``sqlite_errorname``: the message text decides."""
    assert expected in str(armazem._store_error(sqlite3.OperationalError(message)))


def test_an_empty_file_becomes_a_chat_database(tmp_path: Path):
    path = tmp_path / "vazio.sqlite3"
    path.touch()
    with Store.open(str(path)) as store:
        assert store.append_messages([room("a", "#a")])[0][0] == 1


# --------------------------------------------------------------------------
# Files that are not a usable chat database


def _make_store_file(path: Path, messages: int = 0) -> None:
    with Store.open(str(path)) as store:
        for start in range(0, messages, 500):
            store.append_messages([room("ana", "#s", f"mensagem {n} " + "x" * 100)
                                   for n in range(start, min(start + 500, messages))])


def _foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('x')")
    conn.commit()
    conn.close()


def _foreign_wal_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE messages (id, text)")
    conn.execute("CREATE TABLE accounts (key)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))


def _truncated_at_page_boundary(path: Path) -> None:
    _make_store_file(path, messages=2000)
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as data:
        data.truncate(size // 2 // 4096 * 4096)


def _truncated_mid_page(path: Path) -> None:
    _make_store_file(path, messages=200)
    with open(path, "r+b") as data:
        data.truncate(path.stat().st_size - 1000)


def _sqlite_header_then_garbage(path: Path) -> None:
    _make_store_file(path, messages=200)
    with open(path, "r+b") as data:
        data.seek(4096)
        data.write(random.Random(3).randbytes(path.stat().st_size - 4096))


def _newer_version(path: Path) -> None:
    _make_store_file(path, messages=3)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("make", "reason"), [
    (_random_bytes, "conteúdo não reconhecido"),
    (_truncated_at_page_boundary, "truncado"),
    (_truncated_mid_page, "truncado"),
    (_sqlite_header_then_garbage, "danificado"),
    (_foreign_database, "outro programa"),
    (_foreign_wal_database, "outro programa"),
    (_newer_version, "criado por uma versão mais nova do servidor"),
])
def test_unusable_files_are_refused_and_left_untouched(tmp_path: Path, make, reason: str):
    path = tmp_path / "chat.sqlite3"
    make(path)
    before = sha256(path)
    others = side_files(path)
    with pytest.raises(StoreCorruptError, match=reason) as caught:
        Store.open(str(path))
    assert str(path) in str(caught.value)
    assert sha256(path) == before
    assert side_files(path) == others  # no -wal or -shm created


def test_a_crashed_chat_database_with_its_wal_is_not_mistaken_for_a_broken_one(tmp_path: Path):
    """A checkpoint can leave the main file shorter than its header says: the -wal has the rest."""
    path = tmp_path / "chat.sqlite3"
    source = Store.open(str(path))
    source.append_messages([room("ana", "#s", "x" * 500) for _ in range(300)])
    shutil.copy(path, tmp_path / "copia.sqlite3")
    shutil.copy(str(path) + "-wal", tmp_path / "copia.sqlite3-wal")  # as a crash leaves it
    source.close()
    with Store.open(str(tmp_path / "copia.sqlite3")) as copy:
        assert len(copy.history_room("#s", limit=1000)) == 300


# --------------------------------------------------------------------------
# Migrations


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_a_new_migration_step_runs_once_and_advances_the_version(tmp_path: Path, monkeypatch):
    path = tmp_path / "chat.sqlite3"
    _make_store_file(path, messages=3)
    assert _user_version(path) == 1
    calls = []

    def add_reactions(conn: sqlite3.Connection) -> None:
        calls.append(conn)
        conn.execute("CREATE TABLE reactions (message_id INTEGER, emoji TEXT)")

    monkeypatch.setattr(armazem, "MIGRATIONS", [*armazem.MIGRATIONS, add_reactions])
    with Store.open(str(path)) as store:
        assert len(store.history_room("#s")) == 3
        store._writer.execute("INSERT INTO reactions VALUES (1, '👍')")
    assert len(calls) == 1 and _user_version(path) == 2
    Store.open(str(path)).close()
    assert len(calls) == 1


def test_a_failed_migration_leaves_the_previous_version(tmp_path: Path, monkeypatch):
    path = tmp_path / "chat.sqlite3"
    _make_store_file(path, messages=3)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("THIS IS NOT SQL")

    monkeypatch.setattr(armazem, "MIGRATIONS", [*armazem.MIGRATIONS, broken])
    with pytest.raises(StoreError):
        Store.open(str(path))
    monkeypatch.undo()
    assert _user_version(path) == 1
    with Store.open(str(path)) as store:
        assert len(store.history_room("#s")) == 3
        assert store._writer.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0


# --------------------------------------------------------------------------
# The data file deleted or replaced under a running store


WINDOWS_KEEPS_OPEN_FILES = pytest.mark.skipif(
    os.name == "nt", reason="o Windows não apaga nem substitui um arquivo aberto")


@WINDOWS_KEEPS_OPEN_FILES
def test_a_deleted_data_file_fails_every_write_and_reads_go_on(store: Store):
    kept = store.append_messages([room("ana", "#s", "antes")])[0][0]
    os.unlink(store.path)
    for _ in range(3):
        with pytest.raises(StoreError, match="arquivo de dados removido ou substituído"):
            store.append_messages([room("ana", "#s", "depois")])
    with pytest.raises(StoreError, match="removido"):
        store.create_account("ana", "Ana", "r")
    assert ids_of(store.history_room("#s")) == [kept]


@WINDOWS_KEEPS_OPEN_FILES
def test_a_replaced_data_file_fails_every_write(tmp_path: Path):
    path = tmp_path / "chat.sqlite3"
    _make_store_file(tmp_path / "outro.sqlite3", messages=1)
    with Store.open(str(path)) as store:
        store.append_messages([room("ana", "#s", "antes")])
        os.replace(tmp_path / "outro.sqlite3", path)
        replaced = sha256(path)
        for _ in range(3):
            with pytest.raises(StoreError, match="substituído"):
                store.append_messages([room("ana", "#s", "depois")])
        assert sha256(path) == replaced


# --------------------------------------------------------------------------
# Disks that fill up or turn read-only (need root to mount)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test only."""
    with discos.mounted_tmpfs(tmp_path / "mnt", "2m") as mount_point:
        yield mount_point


def test_a_full_disk_refuses_the_batch_whole_and_recovers(small_tmpfs: Path):
    store = Store.open(str(small_tmpfs / "chat.sqlite3"))
    try:
        before = [i for i, _ in store.append_messages(
            [room("ana", "#s", f"antes {n}") for n in range(10)])]
        filler = discos.fill(small_tmpfs)
        accepted = list(before)
        failures = 0
        for attempt in range(200):
            batch = [room("ana", "#s", f"cheio {attempt}-{n} " + "x" * 2000) for n in range(32)]
            try:
                accepted += [i for i, _ in store.append_messages(batch)]
            except StoreError as exc:
                failures += 1
                assert "disco cheio" in str(exc) or "entrada/saída" in str(exc), str(exc)
                if failures == 3:
                    break
        assert failures == 3, "o disco cheio nunca recusou uma gravação"
        stored = store.history_room("#s", limit=10**6)
        assert ids_of(stored) == accepted  # nothing partial, nothing lost
        assert [m.text for m in stored[:10]] == [f"antes {n}" for n in range(10)]
        assert store.newest_id() == accepted[-1]
        filler.unlink()
        after = store.append_messages([room("ana", "#s", "de novo")])[0][0]
        assert after > accepted[-1]
    finally:
        store.close()
    with Store.open(str(small_tmpfs / "chat.sqlite3")) as reopened:
        assert ids_of(reopened.history_room("#s", limit=10**6)) == [*accepted, after]


def test_a_read_only_file_system(small_tmpfs: Path):
    """Linux refuses ``remount,ro`` while any file on it is open for writing (EBUSY), as a
    running store's are; so the store is closed, the tmpfs remounted read-only, and opened
    again: it refuses clearly (SQLite cannot even read a WAL database it cannot lock) and
    touches nothing; remounted read-write, everything is there and appends work.
    The read-only switch under a running store is the ext4 test below.
    """
    path = small_tmpfs / "chat.sqlite3"
    with Store.open(str(path)) as store:
        stored = store.append_messages([room("ana", "#s", "guardada")])[0][0]
        busy = discos.run("mount", "-o", "remount,ro", str(small_tmpfs))
        assert busy.returncode != 0  # EBUSY: the store holds its files open for writing
    assert discos.run("mount", "-o", "remount,ro", str(small_tmpfs)).returncode == 0
    try:
        before = sha256(path)
        with pytest.raises(StoreError, match="não permite gravação") as caught:
            Store.open(str(path))
        assert not isinstance(caught.value, StoreCorruptError)
        assert sha256(path) == before
    finally:
        assert discos.run("mount", "-o", "remount,rw", str(small_tmpfs)).returncode == 0
    with Store.open(str(path)) as store:
        assert ids_of(store.history_room("#s")) == [stored]
        assert store.append_messages([room("ana", "#s", "nova")])[0][0] == stored + 1


@pytest.fixture
def ext4_image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An 8 MiB ext4 image (no journal) mounted with errors=remount-ro; yields (mount, image)."""
    discos.require_root()
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        pytest.skip("mkfs.ext4 não encontrado (pacote e2fsprogs)")
    image = tmp_path / "disco.img"
    with open(image, "wb") as data:
        data.truncate(8 * 1024 * 1024)
    if discos.run(mkfs, "-q", "-O", "^has_journal", str(image)).returncode != 0:
        pytest.skip("mkfs.ext4 falhou")
    mount_point = tmp_path / "ext4"
    mount_point.mkdir()
    result = discos.run("mount", "-o", "loop,errors=remount-ro", str(image), str(mount_point))
    if result.returncode != 0:
        pytest.skip(f"mount -o loop não permitido aqui: {result.stderr.strip()}")
    try:
        yield mount_point, image
    finally:
        discos.unmount(mount_point)


def test_the_disk_turning_read_only_under_a_running_store(ext4_image: tuple[Path, Path]):
    """The kernel remounts ext4 read-only after an error, open files or not.

    Every later append fails, reads of what was stored go on, and with
    fsync=True every acknowledged message is still there after a remount.
    """
    mount_point, image = ext4_image
    device = discos.run("findmnt", "-n", "-o", "SOURCE", str(mount_point)).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip("este kernel não tem /sys/fs/ext4/*/trigger_fs_error")
    path = mount_point / "chat.sqlite3"
    store = Store.open(str(path), fsync=True)
    try:
        accepted = [i for i, _ in store.append_messages(
            [room("ana", "#s", f"antes {n}") for n in range(20)])]
        trigger.write_text("teste do armazenamento\n")
        for _ in range(3):
            with pytest.raises(StoreError):
                store.append_messages([room("ana", "#s", "depois")])
        assert ids_of(store.history_room("#s", limit=100)) == accepted
    finally:
        store.close()
    discos.unmount(mount_point)
    assert discos.run("mount", "-o", "loop", str(image), str(mount_point)).returncode == 0
    with Store.open(str(path)) as reopened:
        assert [m.text for m in reopened.history_room("#s", limit=100)] == \
            [f"antes {n}" for n in range(20)]
        assert reopened.append_messages([room("ana", "#s", "nova")])[0][0] == accepted[-1] + 1


# --------------------------------------------------------------------------
# A process killed right after an append returned

_CHILD = """
import random, sys
sys.path.insert(0, {repo!r})
import armazem
store = armazem.Store.open({path!r})
rnd = random.Random({seed})
n = 0
while True:
    size = rnd.choice((1, 1, 3, 32))
    batch = [armazem.NewMessage("ana", "Ana", "#s", "#s", f"r{round}-{{n + i}}", True, False)
             for i in range(size)]
    assigned = store.append_messages(batch)
    sys.stdout.write("".join(f"{{mid}} {{m.text}}\\n" for (mid, _), m in zip(assigned, batch)))
    sys.stdout.flush()
    n += size
"""


def _read_until_killed(child: subprocess.Popen, kill_after_lines: int, rnd: random.Random) -> str:
    """Read the child's output; SIGKILL it at a random moment after ``kill_after_lines``."""
    deadline = time.monotonic() + WAIT_S
    output = b""
    killed = False
    fd = child.stdout.fileno()
    while time.monotonic() < deadline:
        if not killed and output.count(b"\n") >= kill_after_lines:
            time.sleep(rnd.uniform(0, 0.02))  # a random moment in the child's loop
            os.kill(child.pid, signal.SIGKILL)
            killed = True
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            output += chunk
    assert killed, f"o processo filho não escreveu {kill_after_lines} linhas a tempo"
    child.wait(WAIT_S)
    return output.decode()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="precisa de SIGKILL")
def test_every_acknowledged_message_survives_sigkill(tmp_path: Path):
    path = tmp_path / "chat.sqlite3"
    rnd = random.Random(2026)
    acknowledged: dict[int, str] = {}
    for round_number in range(12):
        code = _CHILD.format(repo=str(REPO), path=str(path), seed=round_number,
                             round=round_number)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
        try:
            output = _read_until_killed(child, rnd.randint(1, 300), rnd)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(WAIT_S)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        complete_lines = output.split("\n")[:-1]  # the last one may be cut
        for line in complete_lines:
            message_id, text = line.split(" ", 1)
            acknowledged[int(message_id)] = text
        with Store.open(str(path)) as store:
            stored = {m.id: m.text for m in store.history_room("#s", limit=10**7)}
        missing = {i: t for i, t in acknowledged.items() if stored.get(i) != t}
        assert not missing, f"rodada {round_number}: mensagens confirmadas perdidas: {missing}"
    assert len(acknowledged) > 12


# --------------------------------------------------------------------------
# Threads


def test_concurrent_appends_and_reads_from_many_threads(store: Store):
    store.create_account("bia", "Bia", "r")
    writers, batches = 4, 60
    assigned: dict[int, list[int]] = {n: [] for n in range(writers)}
    errors: list[BaseException] = []
    done = threading.Event()

    def write(number: int) -> None:
        rnd = random.Random(number)
        try:
            for batch in range(batches):
                size = rnd.randint(1, 8)
                messages = [dm(f"w{number}", "bia", f"{number}-{batch}-{i}")
                            if i % 2 else room(f"w{number}", "#s", f"{number}-{batch}-{i}")
                            for i in range(size)]
                assigned[number] += [i for i, _ in store.append_messages(messages)]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        seen = 0
        try:
            for _ in range(10_000):
                if done.is_set():
                    break
                newest = store.newest_id()
                assert newest >= seen
                seen = newest
                history = store.history_room("#s", limit=100)
                assert ids_of(history) == sorted(ids_of(history))
                store.pending_messages("bia", limit=50)
                store.pending_count("bia")
                store.get_account("bia")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads + readers:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    done.set()
    for thread in readers:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads + readers)
    assert errors == []
    every_id = [i for ids in assigned.values() for i in ids]
    assert len(set(every_id)) == len(every_id)
    for ids in assigned.values():
        assert ids == sorted(ids)
    assert sorted(every_id) == list(range(1, len(every_id) + 1))
    assert len(store._reads._free) == armazem.READ_POOL_SIZE  # all returned


def test_reads_go_on_while_a_write_transaction_is_open(store: Store):
    store.append_messages([room("ana", "#s", "antes")])
    inside = threading.Event()
    release = threading.Event()

    def hold_write() -> None:
        with store._write() as conn:
            conn.execute(armazem._insert_statement(1),
                         (0, "x", "x", "#s", "#s", "t", 1, 0, 0))
            inside.set()
            release.wait(WAIT_S)

    holder = threading.Thread(target=hold_write)
    holder.start()
    try:
        assert inside.wait(WAIT_S)
        started = time.monotonic()
        assert [m.text for m in store.history_room("#s")] == ["antes"]  # not the uncommitted
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        holder.join(WAIT_S)
    assert len(store.history_room("#s")) == 2


def test_a_closed_store_refuses_everything(tmp_path: Path):
    store = Store.open(str(tmp_path / "chat.sqlite3"))
    store.append_messages([room("ana", "#s")])
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="fechado"):
        store.append_messages([room("ana", "#s")])
    with pytest.raises(StoreError, match="fechado"):
        store.history_room("#s")
    assert side_files(tmp_path / "chat.sqlite3") == []  # checkpointed, -wal removed


# --------------------------------------------------------------------------
# Checkpoints, on the store's own thread


def _checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "armazem-checkpoint"]


def test_commits_reach_the_data_file_in_the_background_not_at_close(tmp_path: Path):
    """Copying the -wal is not any commit's job: the file grows while the store stays open."""
    path = tmp_path / "chat.sqlite3"
    with Store.open(str(path)) as store:
        empty_size = path.stat().st_size
        for _ in range(4):
            store.append_messages([room("ana", "#s", "x" * 200) for _ in range(100)])
        # ~100 KB, well under the ~4 MB after which SQLite's own checkpoint would copy it.
        wait_until(lambda: path.stat().st_size > empty_size + 50_000, WAIT_S,
                   what="o arquivo crescer")
        assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert len(store.history_room("#s", limit=1000)) == 400


def _wal_frames(path: Path) -> int:
    """Frames in the -wal now (a PASSIVE checkpoint from a connection of the test's own)."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        conn.close()


def test_a_long_wal_is_caught_up_so_that_it_starts_over(tmp_path: Path, monkeypatch):
    """Past the catch-up mark a pass copies the rest with writes held: the next write restarts.

    Under writes that never pause, every background pass ends with new
    frames behind it and the -wal would never start over (measured in a
    tight loop: 23.6 MB for 12 MB of texts). Here the pass is called by
    hand, so the test does not depend on how fast this machine's disk is.
    """
    monkeypatch.setattr(armazem, "CHECKPOINT_CATCH_UP_FRAMES", 300)
    monkeypatch.setattr(armazem, "CHECKPOINT_INTERVAL_S", 3600.0)  # the thread stays out of it
    path = tmp_path / "chat.sqlite3"
    with Store.open(str(path)) as store:
        store.append_messages([room("ana", "#s", "x" * 400) for _ in range(100)])
        frames, copied = store._checkpointer.checkpoint()
        assert 0 < frames < 300 and store._checkpointer.catch_ups == 0  # no lock when short
        for _ in range(30):
            store.append_messages([room("ana", "#s", "x" * 400) for _ in range(100)])
        frames, copied = store._checkpointer.checkpoint()
        assert frames >= 300 and copied == frames
        assert store._checkpointer.catch_ups == 1
        store.append_messages([room("ana", "#s", "depois")])
        assert _wal_frames(path) < 20  # started over from its beginning
        assert len(store.history_room("#s", limit=5000)) == 3101


def test_steady_writes_beside_background_catch_ups_lose_nothing(tmp_path: Path, monkeypatch):
    """Writes that never pause, catch-ups under the write lock: every row there, in order."""
    monkeypatch.setattr(armazem, "CHECKPOINT_CATCH_UP_FRAMES", 300)
    monkeypatch.setattr(armazem, "CHECKPOINT_INTERVAL_S", 0.005)
    path = tmp_path / "chat.sqlite3"
    batch = [room("ana", "#s", "x" * 400) for _ in range(100)]
    with Store.open(str(path)) as store:
        prepared = store.prepare(batch)
        ids = [message_id for _ in range(300) for message_id, _ in store.write(prepared)]
        catch_ups = store._checkpointer.catch_ups
    assert ids == list(range(1, 30_001))
    assert catch_ups >= 1
    with Store.open(str(path)) as reopened:
        assert reopened.newest_id() == 30_000
        assert ids_of(reopened.history_room("#s", limit=1000)) == list(range(29_001, 30_001))


def test_a_failed_checkpoint_is_logged_and_loses_nothing(tmp_path: Path, caplog):
    path = tmp_path / "chat.sqlite3"
    with Store.open(str(path)) as store:
        checkpointer = store._checkpointer
        real = checkpointer._conn

        class FailingConnection:
            def execute(self, sql: str) -> None:
                raise sqlite3.OperationalError("disk I/O error")

            def close(self) -> None:
                real.close()

        checkpointer._conn = FailingConnection()
        with caplog.at_level("WARNING", logger="armazem"):
            for text in ("antes", "de novo", "mais uma"):
                runs_before = checkpointer.runs
                store.append_messages([room("ana", "#s", text)])
                wait_until(lambda before=runs_before: checkpointer.runs > before, WAIT_S,
                           what="mais uma passada")
        warnings = [r for r in caplog.records if "checkpoint" in r.getMessage()]
        assert len(warnings) == 1 and "SQLITE_IOERR" in warnings[0].getMessage()  # not one a pass
        assert checkpointer._thread.is_alive()  # still there, for the next write
        checkpointer._conn = real
        size = path.stat().st_size
        store.append_messages([room("ana", "#s", "x" * 300) for _ in range(200)])
        wait_until(lambda: path.stat().st_size > size, WAIT_S, what="o checkpoint voltar a copiar")
    with Store.open(str(path)) as reopened:
        texts = [m.text for m in reopened.history_room("#s", limit=1000)]
    assert texts[:3] == ["antes", "de novo", "mais uma"] and len(texts) == 203


def test_a_checkpoint_stuck_past_the_bound_closes_its_file_when_it_ends(tmp_path: Path,
                                                                        monkeypatch, caplog):
    monkeypatch.setattr(armazem, "CHECKPOINT_STOP_WAIT_S", 0.2)
    path = tmp_path / "chat.sqlite3"
    store = Store.open(str(path))
    checkpointer = store._checkpointer
    real = checkpointer._conn
    inside, release = threading.Event(), threading.Event()

    class StuckConnection:
        def execute(self, sql: str):
            inside.set()
            release.wait(WAIT_S)
            return real.execute(sql)

        def close(self) -> None:
            real.close()

    checkpointer._conn = StuckConnection()
    store.append_messages([room("ana", "#s", "x" * 300) for _ in range(50)])
    assert inside.wait(WAIT_S)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="armazem"):
        store.close()
    assert time.monotonic() - started < 0.2 + 2.0  # the bound, not the stuck disk
    assert "não terminou" in caplog.text
    release.set()
    checkpointer._thread.join(WAIT_S)
    assert not checkpointer._thread.is_alive()
    assert side_files(path) == []  # its connection, the last one, removed the -wal
    with Store.open(str(path)) as reopened:
        assert len(reopened.history_room("#s")) == 50


def test_closing_ends_the_checkpointer_and_leaves_no_wal(tmp_path: Path):
    before = len(_checkpointer_threads())
    store = Store.open(str(tmp_path / "chat.sqlite3"))
    assert len(_checkpointer_threads()) == before + 1
    store.append_messages([room("ana", "#s", "x" * 300) for _ in range(500)])
    store.close()
    assert len(_checkpointer_threads()) == before
    assert side_files(tmp_path / "chat.sqlite3") == []


# --------------------------------------------------------------------------
# Passwords


def test_password_hash_verifies_and_is_salted():
    record = armazem.hash_password("correta-123")
    assert record.startswith(f"scrypt${armazem.SCRYPT_N}${armazem.SCRYPT_R}${armazem.SCRYPT_P}$")
    assert "correta-123" not in record
    assert armazem.verify_password("correta-123", record)
    assert not armazem.verify_password("errada-123", record)
    assert not armazem.verify_password("", record)
    assert armazem.hash_password("correta-123") != record


def test_a_record_with_other_parameters_still_verifies():
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"senha-antiga", salt=salt, n=1024, r=4, p=2, dklen=64)
    record = f"scrypt$1024$4$2${armazem._b64(salt)}${armazem._b64(digest)}"
    assert armazem.verify_password("senha-antiga", record)
    assert not armazem.verify_password("senha-nova", record)


@pytest.mark.parametrize("record", [
    "", "scrypt", "bcrypt$16384$8$1$c2FsdA==$aGFzaA==", "scrypt$16384$8$1$c2FsdA==",
    "scrypt$1000$8$1$c2FsdGZvcm9uZQ==$" + "A" * 44,  # N not a power of two
    "scrypt$1073741824$8$1$c2FsdA==$" + "A" * 44,  # N far too large
    "scrypt$16384$8$1$não-base64$" + "A" * 44,
    "scrypt$16384$8$1$c2FsdA==$aGFzaA==",  # hash too short
    "scrypt$16384$x$1$c2FsdA==$" + "A" * 44,
    "scrypt$１６３８４$8$1$c2FsdA==$" + "A" * 44,  # fullwidth digits
    None,
])
def test_a_malformed_record_never_verifies_nor_raises(record):
    assert armazem.verify_password("qualquer-uma", record) is False


def test_verification_compares_in_constant_time(monkeypatch):
    record = armazem.hash_password("correta-123")
    calls = []
    real = armazem.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(armazem.hmac, "compare_digest", spy)
    assert armazem.verify_password("correta-123", record)
    assert calls == [(armazem.SCRYPT_DKLEN, armazem.SCRYPT_DKLEN)]


# --------------------------------------------------------------------------
# The administrator's command line


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = armazem.run_accounts_command(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def server_store(tmp_path: Path) -> Iterator[Store]:
    """A store left open while the command runs, as a running server's would be."""
    store = Store.open(str(tmp_path / "chat.sqlite3"))
    store.create_account(protocolo.nick_key("Ana"), "Ana", armazem.hash_password("segredo-1"))
    store.create_account(protocolo.nick_key("bia"), "bia", "registro")
    store.append_messages([dm("carla", "Ana", "1"), dm("carla", "Ana", "2")])
    try:
        yield store
    finally:
        store.close()


def test_cli_lists_accounts_while_the_server_runs(server_store: Store):
    status, out, err = _cli("--dados", server_store.path, "--listar")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["apelido", "criada", "em", "pendentes"]
    assert lines[1].startswith("Ana ") and lines[1].split()[-1] == "2"
    assert lines[2].startswith("bia ") and lines[2].split()[-1] == "0"
    assert lines[-1] == "2 conta(s)"
    assert "segredo" not in out and "scrypt" not in out


def test_cli_removes_an_account_by_nickname_while_the_server_runs(server_store: Store):
    status, out, err = _cli("--dados", server_store.path, "--remover", "ANA")
    assert (status, err) == (0, "")
    assert "removida" in out
    assert server_store.get_account("ana") is None  # the running server sees it at once
    status, out, err = _cli("--dados", server_store.path, "--remover", "ana")
    assert status == 1 and "não existe conta" in err


def test_cli_lists_no_accounts(tmp_path: Path):
    _make_store_file(tmp_path / "chat.sqlite3")
    assert _cli("--dados", str(tmp_path / "chat.sqlite3"), "--listar") == (0, "nenhuma conta\n",
                                                                           "")


def test_cli_help_is_in_portuguese():
    status, out, err = _cli("--help")
    assert status == 0 and err == ""
    assert out.startswith("uso: servidor.py contas")
    for text in ("opções:", "--dados CAMINHO", "--listar", "--remover APELIDO",
                 "mostra esta ajuda e sai"):
        assert text in out
    for english in ("usage:", "options:", "show this help"):
        assert english not in out


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "indique --listar ou --remover APELIDO"),
    (["--listar", "--remover", "ana"], "não pode ser usado com o argumento"),
    (["--remover"], "falta o valor"),
    (["--listar", "--xyz"], "argumentos não reconhecidos: --xyz"),
])
def test_cli_bad_usage_exits_2_in_portuguese(tmp_path: Path, argv: list[str], expected: str):
    status, out, err = _cli("--dados", str(tmp_path / "c.sqlite3"), *argv)
    assert status == 2 and out == ""
    assert err.startswith("uso: servidor.py contas")
    assert "servidor.py contas: erro: " in err and expected in err


def test_cli_unusable_data_file_exits_2(tmp_path: Path):
    garbage = tmp_path / "lixo.sqlite3"
    garbage.write_bytes(b"isto nao e um banco de dados" * 100)
    status, out, err = _cli("--dados", str(garbage), "--listar")
    assert status == 2 and out == ""
    assert "não é um banco de dados do chat" in err
    missing = tmp_path / "nao-existe.sqlite3"
    status, out, err = _cli("--dados", str(missing), "--remover", "ana")
    assert status == 2 and "não encontrado" in err
    assert not missing.exists()


def test_a_batch_larger_than_one_insert_statement_is_stored_whole_and_in_order(store: Store):
    count = 2 * armazem.INSERT_CHUNK + 7
    stamps = store.append_messages([room("ana", "#s", f"m{n}") for n in range(count)])
    ids = [message_id for message_id, _ in stamps]
    assert ids == list(range(ids[0], ids[0] + count))
    stored = store.history_room("#s", limit=count)
    assert [m.text for m in stored] == [f"m{n}" for n in range(count)]
    assert [m.id for m in stored] == ids


def test_a_batch_over_one_statement_goes_in_one_transaction(store: Store):
    """Where SQLite's parameter limit is small, a batch spans several INSERTs: one commit."""
    store._rows_per_insert = 10
    stamps = store.append_messages([room("ana", "#s", f"m{n}") for n in range(37)])
    ids = [message_id for message_id, _ in stamps]
    assert ids == list(range(ids[0], ids[0] + 37))
    assert [m.text for m in store.history_room("#s", limit=100)] == [f"m{n}" for n in range(37)]


def test_the_rows_per_insert_follow_sqlites_parameter_limit(store: Store):
    conn = store._writer
    if not hasattr(conn, "getlimit"):
        assert store._rows_per_insert == armazem.INSERT_CHUNK
        return
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert store._rows_per_insert == min(armazem.MAX_ROWS_PER_INSERT, limit // 9)
