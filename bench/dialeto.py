"""What the load generators say to a server: our chat protocol, or IRC (for ngircd).

The benchmarks measure the same load against our server and against ngircd,
so the few lines a generator needs -- register, join a room, send a message,
recognise a delivered one -- exist here in both forms. Only the generators'
side is here: the server's parser is ``protocolo.py``, and this module never
imports it, so a bug there cannot hide in the measurement.

The payload of every measured message is the same in both dialects
(``T<send time ns>Q<sequence>`` and, in rooms, ``K<sender index>``, then
``X`` and padding), so one regular expression per dialect finds who sent
it, when and in what order.

IRC has no acknowledgement of a PRIVMSG: a generator frees a window slot
when the message is *received* (by the receiver, or by a room's witness),
where our protocol frees it on the ``OK``. That is stated next to every
figure that compares the two.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

REGISTER_TIMEOUT = 30.0


class DialectError(ConnectionError):
    """The server refused a registration or a join, or closed the connection."""


@dataclass(frozen=True)
class Dialect:
    """The lines a generator sends, and how it reads what comes back, in one dialect."""

    name: str
    direct_re: re.Pattern[bytes]
    """A delivered direct message: groups (sender, send time, sequence)."""
    room_re: re.Pattern[bytes]
    """A delivered room message: groups (sender, send time, sequence, sender index)."""
    delivery_marker: bytes
    """Present in every line that delivers a message (to count malformed deliveries)."""

    @property
    def irc(self) -> bool:
        return self.name == "irc"

    def register_lines(self, nick: str) -> bytes:
        if self.irc:
            return f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode()
        return f"REGISTRAR {nick}\n".encode()

    def direct(self, target: str, text: str) -> str:
        if self.irc:
            return f"PRIVMSG {target} :{text}\r\n"
        return f"ENVIAR {target} {text}\n"

    def join_line(self, room: str) -> bytes:
        if self.irc:
            return f"JOIN {room}\r\n".encode()
        return f"ENTRAR {room}\n".encode()

    def register(self, sock: socket.socket, nick: str) -> bytes:
        """Register ``nick`` on a blocking socket; returns bytes read past the reply."""
        sock.sendall(self.register_lines(nick))
        if self.irc:
            # After 001 ngircd sends LUSERS and the MOTD; wait for its end (376, or
            # 422 when there is none) so that none of it is mistaken for traffic.
            return read_until(sock, lambda line: _numeric(line) in (b"376", b"422"),
                              _irc_refusal, f"registro de {nick}")
        return read_until(sock, lambda line: line == b"OK", _chat_refusal,
                          f"registro de {nick}")

    def join(self, sock: socket.socket, room: str) -> bytes:
        """Join ``room`` on a blocking socket; returns bytes read past the reply.

        Others' joins pushed meanwhile (``ENTROU``, IRC ``JOIN``) are skipped.
        """
        sock.sendall(self.join_line(room))
        if self.irc:
            return read_until(sock, lambda line: _numeric(line) == b"366", _irc_refusal,
                              f"entrada em {room}")
        return read_until(sock, lambda line: line == b"OK", _chat_refusal,
                          f"entrada em {room}")

    def pongs(self, data: bytes) -> bytes:
        """IRC: the PONG for every PING line in ``data`` (whole lines); chat: nothing."""
        if not self.irc or b"PING" not in data:
            return b""
        return b"".join(b"PONG" + line[4:] + b"\r\n" for line in data.splitlines()
                        if line.startswith(b"PING"))


def _numeric(line: bytes) -> bytes:
    """The command of an IRC line (``:prefix 001 nick ...`` -> ``001``)."""
    parts = line.split(b" ", 2)
    if line.startswith(b":") and len(parts) > 1:
        return parts[1]
    return parts[0]


def _chat_refusal(line: bytes) -> bool:
    return line.startswith(b"ERRO")


def _irc_refusal(line: bytes) -> bool:
    command = _numeric(line)
    return command == b"ERROR" or (len(command) == 3 and command.isdigit()
                                   and command[:1] in (b"4", b"5"))


def read_until(sock: socket.socket, done: Callable[[bytes], bool],
               refused: Callable[[bytes], bool], what: str,
               timeout: float = REGISTER_TIMEOUT) -> bytes:
    """Read whole lines until ``done`` accepts one; the bytes that came after it.

    A line that ``refused`` accepts, a closed connection or ``timeout``
    seconds raise ``DialectError`` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if done(line):
                return buffer
            if refused(line):
                raise DialectError(f"{what}: recusado: {line[:120].decode(errors='replace')}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DialectError(f"{what}: sem resposta em {timeout:g} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        if chunk is None:
            continue
        if not chunk:
            raise DialectError(f"{what}: o servidor fechou a conexão")
        buffer += chunk


CHAT = Dialect(
    "chat",
    direct_re=re.compile(rb"MSG (\S+) \S+ T(\d+)Q(\d+)X"),
    room_re=re.compile(rb"MSG (\S+) #\S+ T(\d+)Q(\d+)K(\d+)X"),
    delivery_marker=b"MSG ",
)
IRC = Dialect(
    "irc",
    direct_re=re.compile(rb":([^!\s]+)\S* PRIVMSG \S+ :T(\d+)Q(\d+)X"),
    room_re=re.compile(rb":([^!\s]+)\S* PRIVMSG #\S+ :T(\d+)Q(\d+)K(\d+)X"),
    delivery_marker=b" PRIVMSG ",
)
DIALECTS = {"chat": CHAT, "irc": IRC}


def payload(size: int, sequence: int, sender: int | None = None) -> str:
    """A message text of ``size`` characters carrying its send time and sequence number."""
    head = f"T{time.monotonic_ns()}Q{sequence}"
    if sender is not None:
        head += f"K{sender}"
    head += "X"
    return head + "x" * max(0, size - len(head))
