"""Tests of protocolo.py: pure functions and classes, no sockets.

Nickname rules, framing (``LineSplitter``), request parsing and formatting,
reply and push formatting and parsing, plus hypothesis properties: arbitrary
bytes in arbitrary chunkings never raise anything but the protocol's own
errors and agree with a simple reference split, and every formatted line
parses back to the value it came from.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocolo
from protocolo import (
    LINE_TOO_LONG,
    BadServerLine,
    End,
    Error,
    ErrorCode,
    Found,
    Joined,
    Left,
    LineSplitter,
    ListUsers,
    Lookup,
    Message,
    NotFound,
    Ok,
    Ping,
    Pong,
    ProtocolError,
    Quit,
    Register,
    Send,
    Subscribe,
    Unregister,
    UserEntry,
    UsersHeader,
)

# --------------------------------------------------------------------------
# Helpers


def parse(text: str):
    return protocolo.parse_request(text)


def parse_error(text: str) -> ErrorCode:
    """The code of the ProtocolError that parsing ``text`` raises."""
    with pytest.raises(ProtocolError) as info:
        protocolo.parse_request(text)
    return info.value.code


def reference_split(data: bytes, max_bytes: int) -> list[bytes | protocolo.LineTooLong]:
    """What LineSplitter must yield for ``data``, computed the obvious way.

    Every LF ends a line; a line over the limit (LF included) is reported as
    LINE_TOO_LONG; one CR before the LF is dropped; bytes after the last LF
    are not a line.
    """
    pieces = data.split(b"\n")[:-1]
    lines: list[bytes | protocolo.LineTooLong] = []
    for piece in pieces:
        if len(piece) + 1 > max_bytes:
            lines.append(LINE_TOO_LONG)
        else:
            lines.append(piece[:-1] if piece.endswith(b"\r") else piece)
    return lines


def feed_in_chunks(splitter: LineSplitter, data: bytes, cuts: list[int]) -> list:
    """Feed ``data`` cut at ``cuts``; check the buffering bound after every feed."""
    lines = []
    start = 0
    for end in [*sorted(cuts), len(data)]:
        lines.extend(splitter.feed(data[start:end]))
        assert splitter.buffered < splitter.max_bytes
        start = end
    return lines


# --------------------------------------------------------------------------
# Nicknames


@pytest.mark.parametrize("nick", [
    "ana", "João_2", "a", "x" * 32, "ã" * 32, "名前", "Ωμέγα", "Москва", "ana.b-c_d",
    "ß", "_", "-", ".", "2024", "Joa\u0303o",
])
def test_valid_nicknames(nick):
    assert protocolo.valid_nick(nick)


@pytest.mark.parametrize("nick", [
    "", "x" * 33, "ã" * 33, "ana maria", " ana", "ana ", "ana!", "a\x00b", "a\tb", "a/b",
    "a\nb", "a\rb", "😀", "a@b", "a,b", "a:b", "١٢٣",
])
def test_invalid_nicknames(nick):
    assert not protocolo.valid_nick(nick)


def test_nickname_length_counts_characters_not_bytes():
    assert len(("ã" * 32).encode()) == 64
    assert protocolo.valid_nick("ã" * 32)


@pytest.mark.parametrize(("first", "second"), [
    ("Ana", "ANA"), ("ana", "aNa"), ("straße", "STRASSE"), ("JOÃO", "joão"), ("ΣΊΣΥΦΟΣ", "σίσυφος"),
])
def test_nick_key_is_case_insensitive(first, second):
    assert protocolo.nick_key(first) == protocolo.nick_key(second)


def test_nick_key_keeps_distinct_nicknames_distinct():
    assert protocolo.nick_key("ana") != protocolo.nick_key("ana_")


@pytest.mark.parametrize(("text", "valid"), [
    ("127.0.0.1", True), ("10.0.0.5", True), ("::1", True), ("2001:db8::7", True),
    ("1.2.3", False), ("256.1.1.1", False), ("localhost", False), ("", False),
    ("１.２.３.４", False), ("1.2.3.4 ", False),
    # A scope id is meaningless to other hosts, and its text is free-form:
    # it could carry terminal escapes into everybody's LISTAR.
    ("fe80::1%eth0", False), ("fe80::1%\x1b[2J", False),
])
def test_valid_ip(text, valid):
    assert protocolo.valid_ip(text) is valid


# --------------------------------------------------------------------------
# Framing: LineSplitter


def test_splitter_yields_complete_lines_without_lf():
    assert LineSplitter().feed(b"a\nbc\n\n") == [b"a", b"bc", b""]


def test_splitter_drops_one_cr_before_lf_only():
    splitter = LineSplitter()
    assert splitter.feed(b"a\r\nb\r\r\nc\rd\n\r\n") == [b"a", b"b\r", b"c\rd", b""]


def test_splitter_lone_cr_does_not_end_a_line():
    splitter = LineSplitter()
    assert splitter.feed(b"a\rb\r") == []
    assert splitter.feed(b"\n") == [b"a\rb"]


def test_splitter_joins_a_line_split_over_many_feeds():
    splitter = LineSplitter()
    data = "ENVIAR bob olá\r\n".encode()
    lines = []
    for i in range(len(data)):
        lines += splitter.feed(data[i:i + 1])
    assert lines == ["ENVIAR bob olá".encode()]
    assert splitter.buffered == 0


def test_splitter_many_lines_in_one_feed_keeps_the_tail():
    splitter = LineSplitter()
    assert splitter.feed(b"".join(b"PING %d\n" % i for i in range(50)) + b"PI") == [
        b"PING %d" % i for i in range(50)]
    assert splitter.buffered == 2
    assert splitter.feed(b"NG\n") == [b"PING"]


def test_splitter_empty_feed():
    splitter = LineSplitter()
    assert splitter.feed(b"") == []
    assert splitter.buffered == 0


def test_splitter_limit_counts_the_lf():
    splitter = LineSplitter(8)
    assert splitter.feed(b"1234567\n") == [b"1234567"]
    assert splitter.feed(b"12345678\n") == [LINE_TOO_LONG]
    assert splitter.feed(b"ok\n") == [b"ok"]


def test_splitter_limit_counts_the_cr():
    splitter = LineSplitter(8)
    assert splitter.feed(b"123456\r\n") == [b"123456"]
    assert splitter.feed(b"1234567\r\n") == [LINE_TOO_LONG]


def test_splitter_limit_counts_bytes_not_characters():
    splitter = LineSplitter(8)
    assert splitter.feed("ããã\n".encode()) == ["ããã".encode()]  # 6 bytes + LF
    assert splitter.feed("ãããã\n".encode()) == [LINE_TOO_LONG]  # 8 bytes + LF


def test_splitter_default_limit_is_the_contracts():
    splitter = LineSplitter()
    assert splitter.max_bytes == protocolo.MAX_REQUEST_BYTES == 4096
    assert splitter.feed(b"x" * 4095 + b"\n") == [b"x" * 4095]
    assert splitter.feed(b"x" * 4096 + b"\n") == [LINE_TOO_LONG]


def test_splitter_reports_a_long_line_once_when_its_lf_arrives():
    splitter = LineSplitter(16)
    for _ in range(100):
        assert splitter.feed(b"y" * 10) == []
        assert splitter.buffered < 16
    assert splitter.feed(b"tail\n") == [LINE_TOO_LONG]
    assert splitter.buffered == 0
    assert splitter.feed(b"PING\n") == [b"PING"]


def test_splitter_long_line_and_valid_line_in_one_feed():
    splitter = LineSplitter(16)
    assert splitter.feed(b"z" * 40 + b"\nPING a\n") == [LINE_TOO_LONG, b"PING a"]


def test_splitter_long_line_whose_lf_comes_in_a_later_feed_with_more_lines():
    splitter = LineSplitter(16)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"z" * 20) == []
    assert splitter.buffered == 0
    assert splitter.feed(b"zz\nok\nnext") == [LINE_TOO_LONG, b"ok"]
    assert splitter.buffered == 4


def test_splitter_rejects_a_limit_without_room_for_a_byte():
    with pytest.raises(ValueError):
        LineSplitter(1)
    assert LineSplitter(2).feed(b"a\n\n") == [b"a", b""]


def test_read_lines_drops_a_line_cut_by_eof():
    stream = io.BytesIO(b"PING a\nPING b\r\nPING c")
    assert list(protocolo.read_lines(stream.read, chunk_size=3)) == [b"PING a", b"PING b"]


def test_read_lines_enforces_its_limit():
    stream = io.BytesIO(b"x" * 100 + b"\nok\n")
    assert list(protocolo.read_lines(stream.read, max_bytes=10, chunk_size=7)) == [
        LINE_TOO_LONG, b"ok"]


def test_decode_line_accepts_utf8():
    assert protocolo.decode_line("ENVIAR ana ôi 😀".encode()) == "ENVIAR ana ôi 😀"


@pytest.mark.parametrize("raw", [
    b"\xff", b"PING \xc3", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b",
])
def test_decode_line_refuses_invalid_utf8(raw):
    with pytest.raises(ProtocolError) as info:
        protocolo.decode_line(raw)
    assert info.value.code is ErrorCode.CODIFICACAO
    assert info.value.to_line().startswith(b"ERRO CODIFICACAO ")


# --------------------------------------------------------------------------
# Requests: parsing


@pytest.mark.parametrize(("line", "expected"), [
    ("REGISTRAR ana", Register("ana")),
    ("REGISTRAR João_2", Register("João_2")),
    ("REGISTRAR ana 10.0.0.5 5000", Register("ana", "10.0.0.5", 5000)),
    ("REGISTRAR ana ::1 1", Register("ana", "::1", 1)),
    ("REGISTRAR ana 192.168.0.1 65535", Register("ana", "192.168.0.1", 65535)),
    ("LISTAR", ListUsers()),
    ("RETORNAR bruno", Lookup("bruno")),
    ("CANCELAR_REGISTRO", Unregister()),
    ("CANCELAR_REGISTRO ana", Unregister("ana")),
    ("ENVIAR bruno oi, tudo bem?", Send("bruno", "oi, tudo bem?")),
    ("ASSINAR", Subscribe()),
    ("PING", Ping()),
    ("PING abc", Ping("abc")),
    ("SAIR", Quit()),
])
def test_parse_each_request(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize(("line", "expected"), [
    ("registrar ana", Register("ana")),
    ("Listar", ListUsers()),
    ("retornar Bruno", Lookup("Bruno")),
    ("cancelar_registro", Unregister()),
    ("eNvIaR bob x", Send("bob", "x")),
    ("assinar", Subscribe()),
    ("ping t", Ping("t")),
    ("sair", Quit()),
])
def test_verbs_are_case_insensitive_arguments_are_not(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize(("line", "expected"), [
    ("  LISTAR", ListUsers()),
    ("LISTAR   ", ListUsers()),
    ("RETORNAR    bob   ", Lookup("bob")),
    ("REGISTRAR   ana   10.0.0.5    5000  ", Register("ana", "10.0.0.5", 5000)),
    ("CANCELAR_REGISTRO   ", Unregister()),
    ("ENVIAR   bob x", Send("bob", "x")),
])
def test_runs_of_spaces_separate_arguments(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize("line", ["", " ", "     "])
def test_blank_lines_parse_to_none(line):
    assert parse(line) is None


@pytest.mark.parametrize(("line", "text"), [
    ("ENVIAR bob  two leading spaces", " two leading spaces"),
    ("ENVIAR bob trailing  ", "trailing  "),
    ("ENVIAR bob a  b   c", "a  b   c"),
    ("ENVIAR bob \ttab", "\ttab"),
    ("ENVIAR bob  ", " "),
    ("ENVIAR bob ôi 😀 名前", "ôi 😀 名前"),
    ("ENVIAR bob ENVIAR carla x", "ENVIAR carla x"),
])
def test_send_text_is_kept_byte_for_byte(line, text):
    assert parse(line) == Send("bob", text)


@pytest.mark.parametrize(("line", "token"), [
    ("PING", ""), ("PING ", ""), ("PING   ", ""), ("PING a b  c ", "a b  c "), ("PING   x", "x"),
])
def test_ping_token_is_the_rest_of_the_line(line, token):
    assert parse(line) == Ping(token)


@pytest.mark.parametrize("line", ["FOO", "MSG ana bob oi", "OK", "PONG", "REGISTRAR_ ana",
                                  "\x00", "LISTAR\tx", "ENVIAR\tbob x", "SAIR\x00"])
def test_unknown_verbs(line):
    assert parse_error(line) is ErrorCode.COMANDO_DESCONHECIDO


def test_unknown_verb_error_text_is_bounded():
    with pytest.raises(ProtocolError) as info:
        parse("X" * 4000)
    assert len(info.value.to_line()) < 200


@pytest.mark.parametrize("line", [
    "REGISTRAR", "REGISTRAR a b c d",
    "REGISTRAR ana 10.0.0.5 0", "REGISTRAR ana 10.0.0.5 65536", "REGISTRAR ana 10.0.0.5 -1",
    "REGISTRAR ana 10.0.0.5 x", "REGISTRAR ana 10.0.0.5 ５０００", "REGISTRAR ana 10.0.0.5 ٥٠",
    "REGISTRAR ana 1.2.3 5000", "REGISTRAR ana host 5000", "REGISTRAR ana fe80::1%eth0 5000",
    pytest.param("REGISTRAR ana 10.0.0.5 " + "9" * 5000, id="port-of-5000-digits"),
    pytest.param("REGISTRAR ana 10.0.0.5 " + "0" * 4000 + "1", id="port-of-4001-digits"),
    "LISTAR x", "RETORNAR", "RETORNAR a b", "CANCELAR_REGISTRO a b",
    "ENVIAR", "ENVIAR bob", "ENVIAR bob ", "ASSINAR x", "SAIR now",
])
def test_wrong_arguments(line):
    assert parse_error(line) is ErrorCode.ARGUMENTOS


@pytest.mark.parametrize("char", [
    "\x00", "\x01", "\x07", "\x08", "\x0a", "\x0b", "\x0c", "\x0d", "\x1b", "\x1f", "\x7f",
    "\x80", "\x9b", "\x9f",
])
def test_send_refuses_control_characters(char):
    assert parse_error(f"ENVIAR bob a{char}b") is ErrorCode.ARGUMENTOS


def test_parser_leaves_nickname_form_to_the_server():
    # Registration state is checked before nickname form, and only the
    # server knows it; so the parser accepts any nickname-shaped token.
    assert parse("REGISTRAR ana!") == Register("ana!")
    assert parse("ENVIAR b@d oi") == Send("b@d", "oi")


# --------------------------------------------------------------------------
# Requests: formatting


@pytest.mark.parametrize(("request_", "wire"), [
    (Register("ana"), b"REGISTRAR ana\n"),
    (Register("ana", "10.0.0.5", 5000), b"REGISTRAR ana 10.0.0.5 5000\n"),
    (ListUsers(), b"LISTAR\n"),
    (Lookup("bob"), b"RETORNAR bob\n"),
    (Unregister(), b"CANCELAR_REGISTRO\n"),
    (Unregister("ana"), b"CANCELAR_REGISTRO ana\n"),
    (Send("bob", "oi, tudo bem?"), b"ENVIAR bob oi, tudo bem?\n"),
    (Send("bob", " ôi "), "ENVIAR bob  ôi \n".encode()),
    (Subscribe(), b"ASSINAR\n"),
    (Ping(), b"PING\n"),
    (Ping("t 1"), b"PING t 1\n"),
    (Quit(), b"SAIR\n"),
])
def test_format_request(request_, wire):
    assert protocolo.format_request(request_) == wire


def test_format_request_refuses_other_values():
    with pytest.raises(TypeError):
        protocolo.format_request(Ok())


# --------------------------------------------------------------------------
# Replies and pushes: exact wire form


def test_reply_constants():
    assert protocolo.OK_LINE == b"OK\n"
    assert protocolo.END_LINE == b"END\n"
    assert protocolo.NOT_FOUND_LINE == b"NAO ENCONTRADO\n"


def test_format_error_every_code():
    for code in ErrorCode:
        assert protocolo.format_error(code, "texto legível") == \
            f"ERRO {code.name} texto legível\n".encode()


def test_error_codes_are_exactly_the_contracts():
    assert {code.value for code in ErrorCode} == {
        "COMANDO_DESCONHECIDO", "ARGUMENTOS", "APELIDO_INVALIDO", "APELIDO_EM_USO",
        "JA_REGISTRADO", "NAO_REGISTRADO", "NAO_ENCONTRADO", "PROIBIDO", "SO_DIRETO",
        "DESTINATARIO_LENTO", "LINHA_LONGA", "CODIFICACAO", "LOTADO", "LIMITE", "TEMPO",
        # version 2
        "VERSAO", "SALA_INVALIDA", "NAO_MEMBRO", "APELIDO_RESERVADO", "SENHA_INCORRETA",
        "SENHA_INVALIDA", "SEM_CONTA", "ARMAZENAMENTO"}


def test_protocol_error_to_line():
    error = ProtocolError(ErrorCode.NAO_ENCONTRADO, "carla não está conectada")
    assert error.to_line() == "ERRO NAO_ENCONTRADO carla não está conectada\n".encode()


def test_format_users():
    assert protocolo.format_users([]) == b"USUARIOS 0\nEND\n"
    assert protocolo.format_users([("ana", "127.0.0.1", 53012), ("bruno", "::1", 53020)]) == (
        b"USUARIOS 2\nUSUARIO ana 127.0.0.1 53012\nUSUARIO bruno ::1 53020\nEND\n")


def test_format_other_lines():
    assert protocolo.format_found("10.0.0.5", 5000) == b"ENCONTRADO 10.0.0.5 5000\n"
    assert protocolo.format_msg("bruno", "ana", "tudo ótimo!") == \
        "MSG bruno ana tudo ótimo!\n".encode()
    assert protocolo.format_joined("João_2") == "ENTROU João_2\n".encode()
    assert protocolo.format_left("ana") == b"SAIU ana\n"
    assert protocolo.format_pong("") == b"PONG\n"
    assert protocolo.format_pong("a b") == b"PONG a b\n"


# --------------------------------------------------------------------------
# Replies and pushes: parsing


@pytest.mark.parametrize(("line", "value"), [
    ("OK", Ok()),
    ("ERRO NAO_ENCONTRADO carla não está conectada",
     Error(ErrorCode.NAO_ENCONTRADO, "carla não está conectada", "NAO_ENCONTRADO")),
    ("ERRO NOVO_CODIGO algo", Error(None, "algo", "NOVO_CODIGO")),
    ("USUARIOS 2", UsersHeader(2)),
    ("USUARIO ana 127.0.0.1 53012", UserEntry("ana", "127.0.0.1", 53012)),
    ("END", End()),
    ("ENCONTRADO ::1 5000", Found("::1", 5000)),
    ("NAO ENCONTRADO", NotFound()),
    ("MSG bruno ana tudo ótimo!", Message("bruno", "ana", "tudo ótimo!")),
    ("MSG bruno ana  spaced  ", Message("bruno", "ana", " spaced  ")),
    ("ENTROU João_2", Joined("João_2")),
    ("SAIU ana", Left("ana")),
    ("PONG", Pong()),
    ("PONG a b", Pong("a b")),
])
def test_parse_server_line(line, value):
    assert protocolo.parse_server_line(line) == value


@pytest.mark.parametrize("line", [
    "", "ok", "OK x", "END x", "USUARIOS", "USUARIOS x", "USUARIOS -1", "USUARIOS ٣",
    "USUARIO ana 1.2.3.4", "USUARIO ana 1.2.3.4 x", "USUARIO a b c d", "ENCONTRADO 1.2.3.4",
    "ENCONTRADO 1.2.3.4 ５", "NAO", "NAO ENCONTRADA", "MSG", "MSG ana", "MSG ana bob",
    "ENTROU", "SAIU", "HELLO",
    pytest.param("USUARIOS " + "9" * 5000, id="count-of-5000-digits"),
    pytest.param("USUARIO ana 1.2.3.4 " + "9" * 5000, id="entry-port-of-5000-digits"),
    pytest.param("ENCONTRADO 1.2.3.4 " + "9" * 5000, id="found-port-of-5000-digits"),
])
def test_parse_server_line_refuses_unreadable_lines(line):
    with pytest.raises(BadServerLine):
        protocolo.parse_server_line(line)


def test_pushes_are_the_unsolicited_lines():
    assert set(protocolo.PUSHES) == {Message, Joined, Left, protocolo.Delivered}


# --------------------------------------------------------------------------
# Properties (hypothesis)

# Bytes rich in the characters that matter for framing and parsing.
interesting_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"  ", b"\x00", b"\t", b"\xff", b"\xc3",
                         "ã".encode(), b"ENVIAR ", b"REGISTRAR ", b"PING", b"LISTAR",
                         b"CANCELAR_REGISTRO ", b"RETORNAR ", b"a", b"1.2.3.4 ", b"80"]),
        st.binary(max_size=8),
    ),
    max_size=80,
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=600), interesting_bytes)


@settings(max_examples=300, deadline=None)
@given(data=any_bytes, max_bytes=st.integers(2, 40), chunking=st.data())
def test_splitter_agrees_with_reference_in_any_chunking(data, max_bytes, chunking):
    cuts = chunking.draw(st.lists(st.integers(0, len(data)), max_size=20))
    splitter = LineSplitter(max_bytes)
    assert feed_in_chunks(splitter, data, cuts) == reference_split(data, max_bytes)


@settings(max_examples=200, deadline=None)
@given(data=any_bytes, chunking=st.data())
def test_splitter_at_the_default_limit_agrees_with_reference(data, chunking):
    data = data * chunking.draw(st.integers(1, 20))
    cuts = chunking.draw(st.lists(st.integers(0, len(data)), max_size=20))
    expected = reference_split(data, protocolo.MAX_REQUEST_BYTES)
    assert feed_in_chunks(LineSplitter(), data, cuts) == expected


@settings(max_examples=300, deadline=None)
@given(data=any_bytes, max_bytes=st.integers(2, 200))
def test_arbitrary_bytes_raise_only_protocol_errors(data, max_bytes):
    for line in LineSplitter(max_bytes).feed(data):
        if line is LINE_TOO_LONG:
            continue
        try:
            request = protocolo.parse_request(protocolo.decode_line(line))
        except ProtocolError as exc:
            assert exc.to_line().count(b"\n") == 1
            assert exc.to_line().startswith(f"ERRO {exc.code.value} ".encode())
        else:
            if request is not None:
                protocolo.format_request(request)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200).filter(lambda text: "\n" not in text))
def test_any_parsed_request_formats_back_to_itself(text):
    try:
        request = protocolo.parse_request(text)
    except ProtocolError:
        return
    if request is None:
        assert text.strip(" ") == ""
        return
    wire = protocolo.format_request(request)
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert protocolo.parse_request(wire[:-1].decode()) == request


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), any_bytes.map(lambda b: b.decode("utf-8", "replace"))))
def test_arbitrary_server_lines_raise_only_bad_server_line(text):
    with contextlib.suppress(BadServerLine):
        protocolo.parse_server_line(text)


# Strategies for well-formed values.
nicks = st.text(st.characters(categories=["L", "Nd"], include_characters="_.-"),
                min_size=1, max_size=32).filter(protocolo.valid_nick)
# Text the contract lets through in ENVIAR: anything but C0 controls (TAB
# aside), DEL, C1 controls, the LF and the invisible or direction-changing
# characters, not empty; surrogates cannot be encoded.
texts = st.text(st.characters(exclude_categories=["Cs", "Cf", "Zl", "Zp"], exclude_characters=[
    *(chr(c) for c in range(0x20) if c != 0x09), *(chr(c) for c in range(0x7f, 0xa0))]),
    min_size=1, max_size=100)
tokens = st.one_of(st.just(""), texts.filter(lambda t: not t.startswith(" ")))
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
ports = st.integers(1, 65535)
requests = st.one_of(
    st.builds(Register, nicks),
    st.builds(Register, nicks, ips, ports),
    st.just(ListUsers()),
    st.builds(Lookup, nicks),
    st.builds(Unregister, st.none() | nicks),
    st.builds(Send, nicks, texts),
    st.just(Subscribe()),
    st.builds(Ping, tokens),
    st.just(Quit()),
)


@settings(max_examples=300, deadline=None)
@given(value=requests, chunking=st.data())
def test_request_round_trip_through_the_wire(value, chunking):
    wire = protocolo.format_request(value)
    cuts = chunking.draw(st.lists(st.integers(0, len(wire)), max_size=5))
    lines = feed_in_chunks(LineSplitter(), wire, cuts)
    assert len(lines) == 1
    assert protocolo.parse_request(protocolo.decode_line(lines[0])) == value


server_values = st.one_of(
    st.just(Ok()),
    st.builds(lambda code, text: Error(code, text, code.value), st.sampled_from(ErrorCode), texts),
    st.builds(Found, ips, ports),
    st.just(NotFound()),
    st.builds(Message, nicks, nicks, texts),
    st.builds(Joined, nicks),
    st.builds(Left, nicks),
    st.builds(Pong, tokens),
)


def format_server_value(value) -> bytes:
    """The formatter the server uses for ``value``."""
    if isinstance(value, Ok):
        return protocolo.OK_LINE
    if isinstance(value, Error):
        return protocolo.format_error(value.code, value.text)
    if isinstance(value, Found):
        return protocolo.format_found(value.ip, value.port)
    if isinstance(value, NotFound):
        return protocolo.NOT_FOUND_LINE
    if isinstance(value, Message):
        return protocolo.format_msg(value.sender, value.target, value.text)
    if isinstance(value, Joined):
        return protocolo.format_joined(value.nick)
    if isinstance(value, Left):
        return protocolo.format_left(value.nick)
    return protocolo.format_pong(value.token)


def parse_server_bytes(wire: bytes) -> list:
    splitter = LineSplitter(protocolo.MAX_SERVER_LINE_BYTES)
    lines = splitter.feed(wire)
    assert splitter.buffered == 0
    return [protocolo.parse_server_line(line.decode()) for line in lines]


@settings(max_examples=300, deadline=None)
@given(server_values)
def test_server_line_round_trip(value):
    assert parse_server_bytes(format_server_value(value)) == [value]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(nicks, ips, ports), max_size=20))
def test_listing_round_trip(users):
    values = parse_server_bytes(protocolo.format_users(users))
    assert values == [UsersHeader(len(users)), *(UserEntry(*user) for user in users), End()]
