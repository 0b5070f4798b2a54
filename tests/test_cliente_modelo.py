"""The client's Tk-free model: the connect form, cutting texts, dates, bounded conversations.

No display and no network: these are plain functions and objects.
"""

from __future__ import annotations

import datetime

import pytest

import cliente
import protocolo
from cliente import ConversationStore, split_for_sending, validate_connect_form
from protocolo import HistoryItem, Message

T0 = 1_764_511_387_000  # 2025-11-30, in milliseconds


def message(message_id: int, sender: str, target: str, text: str,
            time_ms: int | None = None) -> Message:
    return Message(sender, target, text, message_id, T0 + message_id if time_ms is None
                   else time_ms)


# --------------------------------------------------------------------------
# The connect form


@pytest.mark.parametrize(("address", "host", "port"), [
    ("192.168.0.10", "192.168.0.10", 1998),
    ("127.0.0.1:1998", "127.0.0.1", 1998),
    ("servidor.lab:2000", "servidor.lab", 2000),
    ("[::1]:2001", "::1", 2001),
    ("fe80::1", "fe80::1", 1998),
    ("  10.0.0.1  ", "10.0.0.1", 1998),
])
def test_the_form_understands_every_way_to_write_an_address(address, host, port):
    settings, errors = validate_connect_form(address, "ana", "", False)
    assert errors == {}
    assert (settings.host, settings.port, settings.nick, settings.password) == (
        host, port, "ana", None)


@pytest.mark.parametrize(("address", "nick", "password", "field", "text"), [
    ("", "ana", "", "servidor", "Informe o servidor"),
    ("host:0", "ana", "", "servidor", "Porta inválida"),
    ("host:abc", "ana", "", "servidor", "Porta inválida"),
    ("[::1]x", "ana", "", "servidor", "Texto inesperado"),
    ("host", "", "", "apelido", "Informe um apelido."),
    ("host", "аna", "", "apelido", "Apelido inválido"),  # Cyrillic а next to Latin
    ("host", "ana", "12345", "senha", "6 a 128 caracteres"),
    ("host", "ana", "com espaço", "senha", "sem espaços"),
])
def test_the_form_says_what_is_wrong_next_to_each_field(address, nick, password, field, text):
    settings, errors = validate_connect_form(address, nick, password, True)
    assert settings is None
    assert list(errors) == [field]
    assert text in errors[field]


def test_the_form_reports_every_wrong_field_at_once():
    _, errors = validate_connect_form("", "", "x", False)
    assert set(errors) == {"servidor", "apelido", "senha"}


# --------------------------------------------------------------------------
# Texts: one message per line, cut to fit the wire, repaired


def test_each_non_empty_line_is_one_message_and_blank_lines_go():
    assert split_for_sending("ana", "oi\n\n  \r\ntudo bem?\n") == ["oi", "tudo bem?"]
    assert split_for_sending("ana", "a\u2028b\u2029c") == ["a", "b", "c"]  # never on the wire


def test_invisible_and_direction_changing_characters_are_removed():
    pieces = split_for_sending("ana", "ol\u202ea\u200b \x1b[31mvermelho\tcom tab")
    assert pieces == ["ola  [31mvermelho\tcom tab"]
    assert all(protocolo.text_problem(piece) is None for piece in pieces)


def test_emoji_sequences_stay_whole():
    text = "família 👨‍👩‍👧 ok 👍🏽 🇧🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿"
    assert split_for_sending("ana", text) == [text]


@pytest.mark.parametrize("unit", ["palavra ", "ç", "👍🏽", "x"])
def test_long_lines_are_cut_to_fit_the_line_limit_without_losing_anything(unit):
    text = unit * (20_000 // len(unit.encode()))
    pieces = split_for_sending("#redes-2026", text)
    assert len(pieces) > 4
    for piece in pieces:
        line = protocolo.format_request(protocolo.Send("#redes-2026", piece))
        assert len(line) <= protocolo.MAX_REQUEST_BYTES
        assert protocolo.parse_request(line.decode().rstrip("\n")) == protocolo.Send(
            "#redes-2026", piece)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    if unit == "👍🏽":
        assert all(piece.startswith("👍") and piece.endswith("🏽") for piece in pieces)
    if unit == "palavra ":
        assert all(piece.endswith("palavra") for piece in pieces)  # cut between words


def test_a_text_too_long_for_one_send_is_refused_in_portuguese():
    with pytest.raises(ValueError, match="Texto longo demais"):
        split_for_sending("ana", "x\n" * (cliente.MAX_PIECES_PER_SEND + 1))
    assert len(split_for_sending("ana", "x\n" * cliente.MAX_PIECES_PER_SEND)) == (
        cliente.MAX_PIECES_PER_SEND)


def test_days_are_named_in_portuguese():
    today = datetime.date(2026, 11, 30)  # a Monday
    assert cliente.day_label(today, today) == "Hoje"
    assert cliente.day_label(datetime.date(2026, 11, 29), today) == "Ontem"
    assert cliente.day_label(datetime.date(2026, 11, 26), today) == "Quinta-feira"
    assert cliente.day_label(datetime.date(2026, 3, 2), today) == "2 de março"
    assert cliente.day_label(datetime.date(2025, 12, 25), today) == "25 de dezembro de 2025"


# --------------------------------------------------------------------------
# Conversations: order, repeats, receipts


@pytest.fixture
def store():
    made = ConversationStore()
    made.me = "eu"
    return made


def test_messages_go_to_the_right_conversation(store):
    store.add_incoming(message(1, "ana", "eu", "oi"))
    store.add_incoming(message(2, "bia", "#geral", "bom dia"))
    store.add_incoming(message(3, "Ana", "eu", "tudo bem?"))  # same key, other spelling
    assert list(store.conversations) == ["#geral", "ana"]  # least recently used first
    assert [e.text for e in store.get("ana").entries] == ["oi", "tudo bem?"]
    assert store.get("#geral").is_room and not store.get("ana").is_room


def test_a_repeated_message_is_kept_once_but_an_id_reused_after_a_restart_is_new(store):
    assert store.add_incoming(message(5, "ana", "eu", "oi")) is not None
    assert store.add_incoming(message(5, "ana", "eu", "oi")) is None  # at least once: a repeat
    # A server without disk restarted: id 5 again, later, is another message.
    assert store.add_incoming(message(5, "ana", "eu", "de novo", T0 + 60_000)) is not None
    assert [e.text for e in store.get("ana").entries] == ["oi", "de novo"]


def test_history_merges_by_time_without_repeats_and_redraws(store):
    conv = store.ensure("#geral")
    store.add_incoming(message(10, "ana", "#geral", "dez"))
    store.add_incoming(message(11, "bia", "#geral", "onze"))
    revision = conv.revision
    added = store.add_history(conv, [HistoryItem(i, T0 + i, "caio", "#geral", f"h{i}")
                                     for i in range(7, 12)])
    assert added == 3  # 10 and 11 were there
    assert [e.text for e in conv.entries] == ["h7", "h8", "h9", "dez", "onze"]
    assert conv.revision > revision  # lines came in above: the pane redraws
    assert conv.oldest_id == 7 and conv.newest_id == 11


def test_own_messages_go_from_pending_to_stored_to_delivered(store):
    conv, entry = store.add_own("ana", "oi", serial=7)
    assert entry.status == cliente.PENDING and entry.own
    store.set_stored(7, 42, T0 + 42, waiting=True)
    assert entry.status == cliente.WAITING and entry.message_id == 42
    found = store.set_delivered(42)
    assert found == (conv, entry) and entry.status == cliente.DELIVERED
    assert store.set_delivered(42) is None  # a receipt only once
    # The same message coming back with the history is not shown twice.
    assert store.add_history(conv, [HistoryItem(42, T0 + 42, "eu", "ana", "oi")]) == 0
    assert len(conv.entries) == 1


def test_an_unsent_message_can_be_dropped_to_be_sent_again(store):
    conv, entry = store.add_own("ana", "perdida", serial=3)
    store.set_failed(3, cliente.UNSENT, "não enviada")
    assert entry.status == cliente.UNSENT
    assert store.drop_own(3) is conv
    assert conv.entries == [] and store.own_entry(3) is None


def test_local_lines_come_right_after_the_newest_message_seen(store):
    conv = store.ensure("#geral")
    store.add_incoming(message(1, "ana", "#geral", "antes", T0 + 10_000))
    notice = store.add_notice(conv, "Conexão perdida.")
    _, own = store.add_own("#geral", "minha", serial=1)
    store.add_incoming(message(2, "bia", "#geral", "depois", T0 + 20_000))
    assert [e.text for e in conv.entries] == ["antes", "Conexão perdida.", "minha", "depois"]
    assert notice.order < own.order


# --------------------------------------------------------------------------
# Bounds


def test_a_conversation_keeps_its_newest_lines_within_its_bounds():
    store = ConversationStore(max_entries=100, max_chars=10_000)
    store.me = "eu"
    for i in range(1, 301):
        store.add_incoming(message(i, "ana", "eu", f"mensagem {i}"))
    conv = store.get("ana")
    assert len(conv.entries) == 100 and conv.dropped == 200
    assert conv.entries[0].text == "mensagem 201"
    for i in range(301, 311):
        store.add_incoming(message(i, "ana", "eu", "x" * 3000))
    assert conv.chars <= 10_000 and conv.entries[-1].message_id == 310


def test_strangers_beyond_the_bound_evict_the_least_recently_used_conversations():
    store = ConversationStore(max_conversations=50)
    store.me = "eu"
    store.ensure("#geral")
    store.selected = "#geral"
    for i in range(1, 2001):
        store.add_incoming(message(i, f"estranho{i}", "eu", "oi"))
    assert len(store.conversations) == 50
    assert "#geral" in store.conversations  # the one on screen is never evicted
    assert "estranho2000" in store.conversations and "estranho1" not in store.conversations
    assert len(store.evicted) == 2001 - 50


def test_all_conversations_together_stay_within_the_total_bounds():
    store = ConversationStore(max_total_entries=1000, max_total_chars=200_000)
    store.me = "eu"
    for i in range(1, 5001):
        store.add_incoming(message(i, f"p{i % 64}", "eu", "y" * 3900))
        assert store.total_entries <= 1000 and store.total_chars <= 200_000
    assert store.total_chars == sum(c.chars for c in store.conversations.values())
    assert store.total_entries == sum(len(c.entries) for c in store.conversations.values())


def test_receipt_and_send_indexes_forget_what_was_dropped():
    store = ConversationStore(max_entries=10)
    store.me = "eu"
    for serial in range(1, 31):
        store.add_own("ana", f"m{serial}", serial)
        store.set_stored(serial, serial, T0 + serial, waiting=False)
    assert len(store._by_serial) == 10 and len(store._by_id) == 10
    store.remove("ana")
    assert not store._by_serial and not store._by_id
    assert store.total_entries == 0 and store.total_chars == 0
