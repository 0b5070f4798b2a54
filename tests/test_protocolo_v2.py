"""Tests of protocolo.py's version-2 additions: pure functions, no sockets.

Names without look-alikes, the text rule against fake screens, ASCII verbs,
time stamps, every v2 request and server line in exact wire form, the
server's fast ENVIAR path against the general parser, and the discovery
datagrams; plus hypothesis properties (round trips, only protocol errors).
"""

from __future__ import annotations

import contextlib
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocolo
from protocolo import (
    BadServerLine,
    ChangePassword,
    Delivered,
    End,
    ErrorCode,
    Hello,
    History,
    HistoryHeader,
    HistoryItem,
    Join,
    Joined,
    Leave,
    Left,
    ListRooms,
    Members,
    Message,
    OkMessage,
    ProtocolError,
    Received,
    Register,
    RoomEntry,
    RoomsHeader,
    Send,
)


def parse_error(text: str) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        protocolo.parse_request(text)
    return info.value.code


# --------------------------------------------------------------------------
# Names: no look-alikes


LOOK_ALIKES_OF_ANA = {
    "аna": "Cyrillic a",
    "αna": "Greek alpha",
    "ａｎａ": "fullwidth",
    "𝐚𝐧𝐚": "mathematical bold",
    "ana\u3164": "Hangul filler (invisible)",
    "ANA": "capitals",
    "ána": "accent",
    "Ana\u0301": "decomposed accent",
}


@pytest.mark.parametrize("look_alike", LOOK_ALIKES_OF_ANA, ids=LOOK_ALIKES_OF_ANA.values())
def test_every_look_alike_of_ana_is_invalid_or_has_anas_key(look_alike):
    assert (not protocolo.valid_nick(look_alike)
            or protocolo.nick_key(look_alike) == protocolo.nick_key("ana"))


@pytest.mark.parametrize("nick", [
    "аna", "αna", "ana\u3164", "\u3164", "\u115f", "\u1160", "\uffa0", "a\u2800",
    "Ⅸ", "ana²", "ana١", "x\u0661", "１２", "ana\u200b", "an\u200da", "a\u034fb",
    "Joa\u0303\u0303\u0303\u0303o", "\u0301ana", "_\u0301", "a😀", "a b", "#ana",
])
def test_names_refused_by_the_v2_rules(nick):
    assert not protocolo.valid_nick(nick)


@pytest.mark.parametrize("nick", [
    "ana", "João", "José_2", "田中さん", "たなか", "タナカ", "김철수", "金哲洙", "王小明",
    "Ελένη", "Иван", "नमस्ते", "مريم", "שרה", "ａｎａ", "𝐚𝐧𝐚", "kıra", "Ærø", "straße",
    "ab-c.d_9", "0", "ﾀﾅｶ",
])
def test_real_names_in_many_scripts_are_valid(nick):
    assert protocolo.valid_nick(nick)


@pytest.mark.parametrize(("first", "second"), [
    ("kira", "kıra"), ("joão", "joao"), ("JOÃO", "joao"), ("ana", "ａｎａ"), ("ana", "𝐚𝐧𝐚"),
    ("ace", "асе"), ("straße", "STRASSE"), ("Zoë", "zoe"), ("café", "cafe\u0301"),
])
def test_nick_key_folds_what_a_reader_cannot_tell_apart(first, second):
    assert protocolo.nick_key(first) == protocolo.nick_key(second)


@pytest.mark.parametrize(("first", "second"), [
    ("ana", "ana_"), ("ana", "anna"), ("nemo", "nemo2"), ("नमस्ते", "नमसते"),
])
def test_nick_key_keeps_different_names_apart(first, second):
    assert protocolo.nick_key(first) != protocolo.nick_key(second)


def test_ascii_names_take_the_fast_path_with_the_same_key():
    for nick in ("Ana", "BOB_2", "x.y-z"):
        assert protocolo.nick_key(nick) == protocolo._folded_key(nick)


def test_mixed_scripts_allowed_only_where_a_language_writes_them():
    assert protocolo.valid_nick("田中さん")  # Han + Hiragana (Japanese)
    assert protocolo.valid_nick("한국漢字")  # Hangul + Han (Korean)
    assert not protocolo.valid_nick("한국さん")  # Hangul + Hiragana
    assert not protocolo.valid_nick("anaИван")  # Latin + Cyrillic


@pytest.mark.parametrize(("name", "valid"), [
    ("#geral", True), ("#redes-2026", True), ("#Geral", True), ("#São_Paulo", True),
    ("#", False), ("geral", False), ("##geral", False), ("#a b", False), ("#" + "x" * 33, False),
    ("#" + "x" * 32, True), ("#аna", False), ("#ge\u202eral", False),
])
def test_room_names(name, valid):
    assert protocolo.valid_room(name) is valid


def test_room_key_folds_like_nicknames_and_keeps_the_hash():
    assert protocolo.room_key("#Geral") == protocolo.room_key("#GERAL") == "#geral"
    assert protocolo.room_key("#São") == "#sao"
    assert protocolo.is_room("#x") and not protocolo.is_room("x")


@pytest.mark.parametrize(("password", "valid"), [
    ("segredo", True), ("123456", True), ("x" * 128, True), ("ã" * 128, True),
    ("12345", False), ("x" * 129, False), ("abc\x00def", False), ("abc\x1bdef", False),
    ("abc\x85def", False), ("abc def", False), ("abc\tdef", False),
])
def test_password_rules_count_characters(password, valid):
    assert protocolo.valid_password(password) is valid


def test_canonical_ip_shortens_padded_addresses():
    assert protocolo.canonical_ip("0000:0000:0000:0000:0000:0000:0000:0001") == "::1"
    assert protocolo.canonical_ip("10.0.0.5") == "10.0.0.5"
    assert protocolo.parse_request("REGISTRAR ana 0:0:0:0:0:0:0:1 5000") == \
        Register("ana", "::1", 5000)


# --------------------------------------------------------------------------
# Texts: nothing that can fake a screen


@pytest.mark.parametrize("char", [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
    "\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\ufeff", "\u200b", "\u2060", "\u00ad",
    "\U000e0041", "\U000e0001",
])
def test_send_refuses_invisible_and_direction_changing_characters(char):
    assert parse_error(f"ENVIAR bob a{char}b") is ErrorCode.ARGUMENTOS
    assert protocolo.text_problem(f"a{char}b")
    assert protocolo.text_problem(protocolo.clean_text(f"a{char}b")) is None


@pytest.mark.parametrize("text", [
    "👨\u200d👩\u200d👧 família", "❤\ufe0f", "👍🏽", "🇧🇷",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # Scotland's flag
    "می\u200cخواهم",  # ZWNJ in Persian
    "tab\there", "nbsp\u00a0ok", "名前 ôi", "\ue000 private use",
])
def test_send_keeps_what_emoji_and_scripts_need(text):
    assert protocolo.parse_request(f"ENVIAR bob {text}") == Send("bob", text)
    assert protocolo.clean_text(text) == text


def test_stray_tags_are_refused_even_next_to_a_valid_flag():
    flag = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    hidden = "\U000e0068\U000e0069"  # "hi", invisible
    assert protocolo.text_problem(flag + hidden)
    assert protocolo.clean_text(flag + "x" + hidden) == flag + "x"


def test_every_format_character_of_this_python_is_refused_or_deliberately_kept():
    kept = {"\u200c", "\u200d"}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char) != "Cf" or char in kept:
            continue
        if 0xE0020 <= code <= 0xE007F:
            continue  # tags: allowed only inside an emoji tag sequence (tested above)
        assert protocolo.text_problem(f"a{char}") is not None, f"U+{code:04X}"


def test_clean_text_turns_controls_into_spaces():
    assert protocolo.clean_text("a\nb\x1b[2Jc") == "a b [2Jc"


# --------------------------------------------------------------------------
# Verbs are ASCII


@pytest.mark.parametrize("line", ["envıar bob x", "ASſINAR", "ＬＩＳＴＡＲ", "ENVİAR bob x"])
def test_verbs_that_only_unicode_case_rules_would_match_are_unknown(line):
    assert parse_error(line) is ErrorCode.COMANDO_DESCONHECIDO


# --------------------------------------------------------------------------
# Time stamps


def test_timestamp_format_is_iso_utc_with_milliseconds():
    assert protocolo.format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert protocolo.format_timestamp(1_796_047_387_123) == "2026-11-30T14:03:07.123Z"
    assert protocolo.parse_timestamp("2026-11-30T14:03:07.123Z") == 1_796_047_387_123


@pytest.mark.parametrize("text", ["2026-11-30T14:03:07Z", "2026-11-30 14:03:07.123Z",
                                  "2026-11-30T14:03:07.123", "２026-11-30T14:03:07.123Z"])
def test_malformed_timestamps_are_refused(text):
    with pytest.raises(ValueError):
        protocolo.parse_timestamp(text)


@given(st.integers(0, 253402300799999))
def test_timestamp_round_trip(time_ms):
    assert protocolo.parse_timestamp(protocolo.format_timestamp(time_ms)) == time_ms


# --------------------------------------------------------------------------
# Version-2 requests


@pytest.mark.parametrize(("line", "expected", "wire"), [
    ("OLA 2", Hello(2), b"OLA 2\n"),
    ("ola 1", Hello(1), b"OLA 1\n"),
    ("OLA 7", Hello(7), b"OLA 7\n"),
    ("REGISTRAR ana segredo1", Register("ana", password="segredo1"),
     b"REGISTRAR ana segredo1\n"),
    ("ENTRAR #geral", Join("#geral"), b"ENTRAR #geral\n"),
    ("DEIXAR #geral", Leave("#geral"), b"DEIXAR #geral\n"),
    ("MEMBROS #geral", Members("#geral"), b"MEMBROS #geral\n"),
    ("SALAS", ListRooms(), b"SALAS\n"),
    ("ENVIAR #geral oi, turma", Send("#geral", "oi, turma"), b"ENVIAR #geral oi, turma\n"),
    ("RECEBIDO 42", Received(42), b"RECEBIDO 42\n"),
    ("HISTORICO ana", History("ana"), b"HISTORICO ana\n"),
    ("HISTORICO #geral 120", History("#geral", 120), b"HISTORICO #geral 120\n"),
    ("HISTORICO ana 120 30", History("ana", 120, 30), b"HISTORICO ana 120 30\n"),
    ("HISTORICO ana 0 30", History("ana", None, 30), b"HISTORICO ana 0 30\n"),
    ("SENHA velha123 nova456", ChangePassword("velha123", "nova456"),
     b"SENHA velha123 nova456\n"),
])
def test_each_v2_request_parses_and_formats_exactly(line, expected, wire):
    assert protocolo.parse_request(line) == expected
    assert protocolo.format_request(expected) == wire


def test_ola_with_a_word_is_a_version_the_server_does_not_speak():
    assert protocolo.parse_request("OLA dois") == Hello(None)
    assert protocolo.parse_request("OLA " + "9" * 40) == Hello(None)


@pytest.mark.parametrize("line", [
    "OLA", "OLA 2 3", "ENTRAR", "ENTRAR #a #b", "DEIXAR", "MEMBROS", "MEMBROS #a b", "SALAS x",
    "RECEBIDO", "RECEBIDO 0", "RECEBIDO -1", "RECEBIDO x", "RECEBIDO 1 2", "RECEBIDO ５",
    "RECEBIDO " + "9" * 19, "HISTORICO", "HISTORICO ana x", "HISTORICO ana 1 0",
    "HISTORICO ana 1 x", "HISTORICO ana 1 2 3", "HISTORICO ana -1", "SENHA", "SENHA a",
    "SENHA a b c", "ENVIAR #geral", "REGISTRAR a b c d e",
])
def test_v2_wrong_arguments(line):
    assert parse_error(line) is ErrorCode.ARGUMENTOS


def test_passwords_never_show_in_repr():
    assert "segredo1" not in repr(protocolo.parse_request("REGISTRAR ana segredo1"))
    assert "nova456" not in repr(protocolo.parse_request("SENHA velha123 nova456"))


# --------------------------------------------------------------------------
# Version-2 server lines


def test_v2_server_lines_exact_wire_form():
    t = 1_796_047_387_123
    assert protocolo.format_ok_message(7, t) == b"OK 7 2026-11-30T14:03:07.123Z\n"
    assert protocolo.format_msg_v2(7, t, "ana", "#geral", "oi") == \
        b"MSG 7 2026-11-30T14:03:07.123Z ana #geral oi\n"
    assert protocolo.format_delivered(7, "bob") == b"ENTREGUE 7 bob\n"
    assert protocolo.format_joined("ana", "#geral") == b"ENTROU #geral ana\n"
    assert protocolo.format_left("ana", "#geral") == b"SAIU #geral ana\n"
    assert protocolo.format_rooms([("#geral", 12), ("#redes", 1)]) == \
        b"SALAS 2\nSALA #geral 12\nSALA #redes 1\nEND\n"
    assert protocolo.format_rooms([]) == b"SALAS 0\nEND\n"
    assert protocolo.format_history([(3, t, "ana", "bob", "oi"), (5, t + 1, "bob", "ana", "olá")]) \
        == ("HISTORICO 2\nITEM 3 2026-11-30T14:03:07.123Z ana bob oi\n"
            "ITEM 5 2026-11-30T14:03:07.124Z bob ana olá\nEND\n").encode()
    assert protocolo.format_version_error() == b"ERRO VERSAO vers\xc3\xb5es suportadas: 1 2\n"
    assert protocolo.format_msg_bytes(b"ana", b"bob", b"oi") == b"MSG ana bob oi\n"


@pytest.mark.parametrize(("line", "version", "value"), [
    ("OK 7 2026-11-30T14:03:07.123Z", 2, OkMessage(7, 1_796_047_387_123)),
    ("MSG 7 2026-11-30T14:03:07.123Z ana #geral oi  gente", 2,
     Message("ana", "#geral", "oi  gente", 7, 1_796_047_387_123)),
    ("MSG ana #geral oi", 1, Message("ana", "#geral", "oi")),
    ("ENTREGUE 7 bob", 2, Delivered(7, "bob")),
    ("ENTROU #geral ana", 1, Joined("ana", "#geral")),
    ("SAIU #geral ana", 1, Left("ana", "#geral")),
    ("SALAS 2", 1, RoomsHeader(2)),
    ("SALA #geral 12", 1, RoomEntry("#geral", 12)),
    ("HISTORICO 1", 2, HistoryHeader(1)),
    ("ITEM 3 2026-11-30T14:03:07.123Z ana bob oi", 2,
     HistoryItem(3, 1_796_047_387_123, "ana", "bob", "oi")),
])
def test_parse_v2_server_lines(line, version, value):
    assert protocolo.parse_server_line(line, version) == value


@pytest.mark.parametrize("line", [
    "MSG ana bob oi", "MSG x 2026-11-30T14:03:07.123Z ana bob oi", "MSG 7 ontem ana bob oi",
    "OK 7", "OK x 2026-11-30T14:03:07.123Z", "ENTREGUE 7", "ENTREGUE x bob",
    "ENTROU #geral", "SAIU #geral a b", "SALA #geral", "SALA #geral x", "ITEM 3 ana bob oi",
    "SALAS -1", "HISTORICO x",
])
def test_v2_server_lines_that_do_not_parse(line):
    with pytest.raises(BadServerLine):
        protocolo.parse_server_line(line, 2)


# --------------------------------------------------------------------------
# The server's fast ENVIAR path agrees with the general parser


def test_plain_send_fast_path_examples():
    assert protocolo.parse_plain_send(b"ENVIAR bob oi") == ("bob", "oi", b"oi")
    assert protocolo.parse_plain_send("ENVIAR #geral olá".encode()) == \
        ("#geral", "olá", "olá".encode())
    for line in (b"enviar bob oi", b"ENVIAR  bob oi", b"ENVIAR bob", b"ENVIAR bob ",
                 b"ENVIAR bob a\x1bb", b"ENVIAR bob \xff", "ENVIAR bob a\u202eb".encode(),
                 "ENVIAR jos\u00e9 oi".encode(), b"PING"):
        assert protocolo.parse_plain_send(line) is None


lines_like_sends = st.one_of(
    st.binary(max_size=80).map(lambda b: b"ENVIAR " + b),
    st.text(max_size=60).map(lambda t: ("ENVIAR " + t).encode("utf-8", "surrogatepass")),
    st.tuples(st.text(max_size=12), st.text(max_size=40)).map(
        lambda p: f"ENVIAR {p[0]} {p[1]}".encode("utf-8", "surrogatepass")),
)


@settings(max_examples=500, deadline=None)
@given(lines_like_sends)
def test_fast_path_agrees_with_the_general_parser(raw):
    if b"\n" in raw:
        return
    fast = protocolo.parse_plain_send(raw)
    if fast is None:
        return
    target, text, raw_text = fast
    assert protocolo.parse_request(protocolo.decode_line(raw)) == Send(target, text)
    assert raw_text == text.encode()


# --------------------------------------------------------------------------
# Discovery datagrams


@pytest.mark.parametrize(("data", "answered"), [
    (b"DESCOBRIR 1", True), (b"DESCOBRIR 1\n", True), (b"descobrir  1\r\n", True),
    (b"DESCOBRIR 2", False), (b"DESCOBRIR", False), (b"DESCOBRIR 1 x", False),
    (b"DESCOBRIR 1" + b" " * 600, False), ("DESCOBRİR 1".encode(), False), (b"", False),
])
def test_discovery_probe(data, answered):
    assert protocolo.parse_discovery_probe(data) is answered


def test_discovery_answer_exact_form_and_hostile_names():
    assert protocolo.format_discovery_answer(1998, True, "Lab 3") == b"SERVIDOR 1998 1 Lab 3\n"
    answer = protocolo.parse_discovery_answer("SERVIDOR 1998 0 a\u202eb\x1b[2J\n".encode())
    assert answer == protocolo.ServerAnnouncement(1998, False, "ab [2J")
    long_name = protocolo.parse_discovery_answer(b"SERVIDOR 1 1 " + b"x" * 200)
    assert long_name is not None and len(long_name.name) == protocolo.MAX_SERVER_NAME_CHARS
    for bad in (b"SERVIDOR 0 1 x", b"SERVIDOR 70000 1 x", b"SERVIDOR 1998 2 x", b"SERVIDO 1 1 x",
                b"SERVIDOR x 1 y", b"\xff", b"SERVIDOR 1998 1 " + b"x" * 600):
        assert protocolo.parse_discovery_answer(bad) is None


# --------------------------------------------------------------------------
# Properties over everything


nicks = st.text(st.characters(categories=["L", "Nd"], include_characters="_.-"),
                min_size=1, max_size=32).filter(protocolo.valid_nick)
rooms = nicks.map(lambda n: "#" + n)
targets = st.one_of(nicks, rooms)
texts = st.text(st.characters(exclude_categories=["Cs", "Cf", "Zl", "Zp"], exclude_characters=[
    *(chr(c) for c in range(0x20) if c != 0x09), *(chr(c) for c in range(0x7f, 0xa0))]),
    min_size=1, max_size=100)
passwords = st.text(st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
                    min_size=6, max_size=128).filter(protocolo.valid_password)
ids = st.integers(1, 10**18 - 1)
times = st.integers(0, 253402300799999)

v2_requests = st.one_of(
    st.builds(Hello, st.integers(0, 10**9 - 1)),
    st.builds(lambda n, p: Register(n, password=p), nicks, passwords),
    st.builds(Join, rooms), st.builds(Leave, rooms), st.builds(Members, rooms),
    st.just(ListRooms()), st.builds(Send, targets, texts), st.builds(Received, ids),
    st.builds(History, targets, st.none() | ids, st.none() | st.integers(1, 10**9 - 1)),
    st.builds(ChangePassword, passwords, passwords),
)


@settings(max_examples=300, deadline=None)
@given(v2_requests)
def test_every_v2_request_round_trips(value):
    wire = protocolo.format_request(value)
    assert wire.count(b"\n") == 1
    assert protocolo.parse_request(protocolo.decode_line(wire[:-1])) == value


v2_server_values = st.one_of(
    st.builds(OkMessage, ids, times),
    st.builds(Message, nicks, targets, texts, ids, times),
    st.builds(Delivered, ids, nicks),
    st.builds(Joined, nicks, rooms),
    st.builds(Left, nicks, rooms),
    st.builds(RoomEntry, rooms, st.integers(0, 10**9 - 1)),
)


def format_v2(value) -> bytes:
    if isinstance(value, OkMessage):
        return protocolo.format_ok_message(value.message_id, value.time_ms)
    if isinstance(value, Message):
        return protocolo.format_msg_v2(value.message_id, value.time_ms, value.sender,
                                       value.target, value.text)
    if isinstance(value, Delivered):
        return protocolo.format_delivered(value.message_id, value.recipient)
    if isinstance(value, Joined):
        return protocolo.format_joined(value.nick, value.room)
    if isinstance(value, Left):
        return protocolo.format_left(value.nick, value.room)
    return protocolo.format_rooms([(value.room, value.members)]).split(b"\n")[1] + b"\n"


@settings(max_examples=300, deadline=None)
@given(v2_server_values)
def test_every_v2_server_line_round_trips(value):
    wire = format_v2(value)
    assert wire.count(b"\n") == 1
    assert protocolo.parse_server_line(wire[:-1].decode(), 2) == value


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(ids, times, nicks, targets, texts), max_size=10))
def test_history_reply_round_trips(items):
    lines = protocolo.format_history(items).decode().split("\n")[:-1]
    values = [protocolo.parse_server_line(line, 2) for line in lines]
    assert values == [HistoryHeader(len(items)), *(HistoryItem(*item) for item in items), End()]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors_in_both_directions(data):
    with contextlib.suppress(ProtocolError):
        protocolo.parse_request(protocolo.decode_line(data.replace(b"\n", b"")))
    for version in (1, 2):
        with contextlib.suppress(BadServerLine):
            protocolo.parse_server_line(data.decode("utf-8", "replace"), version)
    protocolo.parse_discovery_probe(data)
    protocolo.parse_discovery_answer(data)
    protocolo.parse_plain_send(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_names_never_raise_and_valid_ones_have_a_stable_key(name):
    if protocolo.valid_nick(name):
        key = protocolo.nick_key(name)
        assert protocolo.nick_key(name) == key and key
    protocolo.valid_room("#" + name)
