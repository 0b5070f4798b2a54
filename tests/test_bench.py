"""The benchmarks' own checks: a bench that cannot see a loss or a reordering proves nothing.

``bench/`` is not a package: its directory goes at the *end* of
``sys.path`` (so ``bench/armazem.py`` never shadows the repository's
``armazem``), and its modules are imported by name. No server is started.
"""

from __future__ import annotations

import array
import socket
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

import comum  # noqa: E402
import dialeto  # noqa: E402
import salas  # noqa: E402

SETTINGS = salas.Settings("127.0.0.1", 1, "chat", rooms=1, members=4, senders=2, window=1,
                          size=64, duration=1.0, prefix="t")


def orders(**by_member: list[tuple[int, int]]) -> dict[int, bytes]:
    """Member index -> its deliveries (sender index, sequence), as the workers report them."""
    return {int(member[1:]): array.array(
        "Q", [g << salas.SEQ_BITS | seq for g, seq in deliveries]).tobytes()
        for member, deliveries in by_member.items()}


def test_one_order_holds_when_every_member_saw_the_witness_order():
    # Members 0 and 1 send (each skips its own messages); 2 listens; 3 is the witness.
    seen = orders(m0=[(1, 0), (1, 1)], m1=[(0, 0), (0, 1)],
                  m2=[(0, 0), (1, 0), (0, 1), (1, 1)], m3=[(0, 0), (1, 0), (0, 1), (1, 1)])
    assert salas.check_one_order(SETTINGS, seen) == (0, 0)


def test_one_order_sees_two_senders_interleaved_differently():
    # Each sender's own sequence is in order for member 2: only the cross-sender order differs.
    seen = orders(m0=[], m1=[], m2=[(1, 0), (0, 0), (0, 1), (1, 1)],
                  m3=[(0, 0), (1, 0), (0, 1), (1, 1)])
    assert salas.check_one_order(SETTINGS, seen) == (1, 0)


def test_a_delivery_the_witness_never_got_is_counted_apart():
    seen = orders(m0=[], m1=[], m2=[(0, 0), (0, 7)], m3=[(0, 0)])
    assert salas.check_one_order(SETTINGS, seen) == (0, 1)


def test_senders_and_witness_share_the_first_generator_process():
    settings = salas.Settings("127.0.0.1", 1, "irc", rooms=2, members=5, senders=2, window=1,
                              size=64, duration=1.0, prefix="t")
    shares = salas.assign_members(settings, 3)
    assert {0, 1, 4, 5, 6, 9} <= set(shares[0])
    assert sorted(i for share in shares for i in share) == list(range(10))


@pytest.mark.parametrize(("dialect", "line"), [
    (dialeto.CHAT, b"MSG ana bia T123Q5Xxxxx\n"),
    (dialeto.IRC, b":ana!~ana@localhost PRIVMSG bia :T123Q5Xxxxx\r\n"),
])
def test_a_direct_delivery_gives_sender_time_and_sequence(dialect, line):
    assert dialect.direct_re.findall(line) == [(b"ana", b"123", b"5")]


@pytest.mark.parametrize(("dialect", "line"), [
    (dialeto.CHAT, b"MSG ana #sala T123Q5K2Xxxxx\n"),
    (dialeto.IRC, b":ana!~ana@localhost PRIVMSG #sala :T123Q5K2Xxxxx\r\n"),
])
def test_a_room_delivery_also_gives_the_sender_index(dialect, line):
    assert dialect.room_re.findall(line) == [(b"ana", b"123", b"5", b"2")]


def test_payload_has_the_asked_size_and_parses_back():
    text = dialeto.payload(64, 41, sender=3)
    assert len(text) == 64
    ((_, _, seq, sender),) = dialeto.CHAT.room_re.findall(f"MSG a #s {text}\n".encode())
    assert (seq, sender) == (b"41", b"3")


def test_irc_pings_are_answered_and_chat_never_is():
    data = b":srv 372 x :motd\r\nPING :bench.localhost\r\n"
    assert dialeto.IRC.pongs(data) == b"PONG :bench.localhost\r\n"
    assert dialeto.CHAT.pongs(b"PING x\n") == b""


def test_a_refused_registration_is_an_error_not_a_hang():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"ERRO APELIDO_EM_USO ja existe\n")
        with pytest.raises(dialeto.DialectError, match="APELIDO_EM_USO"):
            dialeto.CHAT.register(ours, "ana")
        assert theirs.recv(100) == b"REGISTRAR ana\n"


def test_registration_returns_what_came_after_the_reply():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"OK\nENTROU #s bia\nMSG bi")
        assert dialeto.CHAT.register(ours, "ana") == b"ENTROU #s bia\nMSG bi"


def test_ratios_are_from_the_same_configuration_only():
    summaries = {(100, "disco"): {"v": 50.0}, (100, "memoria"): {"v": 100.0},
                 (100, "ngircd"): {"v": 200.0}, (500, "memoria"): {"v": 10.0}}
    rows = comum.ratio_rows(summaries, "v", [100, 500])
    assert rows == [{"config": 100, "disco_ngircd": 0.25, "memoria_ngircd": 0.5,
                     "disco_memoria": 0.5}]


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert comum.percentile(values, 0.99) == 99
    assert comum.percentile(values, 0.5) == 50
    assert comum.percentile([], 0.5) == 0
