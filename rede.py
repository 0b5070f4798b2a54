"""Portable socket helpers shared by the server and the client (no Tk, no threads).

Everything here works on Linux, Windows and macOS with the standard library
only. Where an operating system offers something better, it is used, and the
choice is made at *call* time from two module-level switches, so a test can
force the other path on Linux (``tests/simulacao.py`` does):

* ``PLATFORM`` -- ``sys.platform`` unless a test says otherwise;
* ``USE_POLL`` -- None (use ``select.poll`` when the ``select`` module has
  it), True or False.

What is here:

* ``wait_readable`` / ``wait_writable`` (and ``readable_sockets`` for a
  few at once): a bounded wait (no ``SO_RCVTIMEO``, which is not portable);
  ``send_nowait``, a send that never blocks (``MSG_DONTWAIT`` where it
  exists, a non-blocking socket elsewhere: ``reads_may_block`` says which),
  and ``send_all``, a ``sendall`` bounded by a stall timeout;
* ``enable_keepalive``: TCP keepalive with our timings, by whatever means
  the OS has;
* ``lan_addresses`` / ``broadcast_addresses``: this machine's addresses, for
  the server's start-up log and for LAN discovery;
* ``format_host_port`` / ``parse_host_port``: ``host:porta`` as people type
  it, IPv6 in brackets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import select
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import protocolo

PLATFORM: str = sys.platform
"""The platform whose socket API is used; tests override it to simulate another."""
USE_POLL: bool | None = None
"""None: ``select.poll`` when it exists, else ``select.select``; True/False force it."""

_POLL_READ = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)
_POLL_WRITE = getattr(select, "POLLOUT", 4)


# --------------------------------------------------------------------------
# Waiting for a socket


def _uses_poll() -> bool:
    """Which mechanism the next wait uses (decided now, not at import)."""
    has_poll = hasattr(select, "poll")
    if USE_POLL is None:
        return has_poll
    return USE_POLL and has_poll


def _fileno(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _ready(socks: Sequence[socket.socket | int], for_writing: bool,
           timeout: float | None) -> list[socket.socket | int]:
    """The members of ``socks`` ready in one direction, waiting up to ``timeout`` s.

    ``poll`` has no limit on descriptor numbers (``select`` on Linux stops at
    1024, and the server holds thousands of sockets). Windows has no
    ``poll``, but its ``select`` takes socket handles of any value. Both are
    retried after EINTR with the time that is left. A closed socket (fileno
    -1) counts as ready, so the caller's next call reports the error.
    """
    by_fd: dict[int, socket.socket | int] = {}
    for sock in socks:
        fd = _fileno(sock)
        if fd < 0:
            return [sock]
        by_fd[fd] = sock
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if _uses_poll():
                poller = select.poll()
                for fd in by_fd:
                    poller.register(fd, _POLL_WRITE if for_writing else _POLL_READ)
                millis = None if remaining is None else math.ceil(remaining * 1000)
                return [by_fd[fd] for fd, _ in poller.poll(millis)]
            watched = list(by_fd)
            readable, writable, failed = select.select(
                [] if for_writing else watched, watched if for_writing else [],
                watched, remaining)
            ready = set(readable) | set(writable) | set(failed)
            return [by_fd[fd] for fd in watched if fd in ready]
        except InterruptedError:
            continue


def wait_readable(sock: socket.socket | int, timeout: float | None) -> bool:
    """True when ``recv``/``accept`` on ``sock`` will not block; False after ``timeout`` s.

    "Ready" includes EOF and a pending error: the next call reports those.
    ``timeout`` None waits without bound. A TLS socket that already holds
    decrypted bytes counts as ready, since the kernel cannot know about them.
    """
    pending = getattr(sock, "pending", None)
    if pending is not None and pending() > 0:
        return True
    return bool(_ready([sock], False, timeout))


def wait_writable(sock: socket.socket | int, timeout: float | None) -> bool:
    """True when ``send`` on ``sock`` will take some bytes (or fail at once); False on timeout."""
    return bool(_ready([sock], True, timeout))


def readable_sockets(socks: Sequence[socket.socket | int], timeout: float | None
                     ) -> list[socket.socket | int]:
    """Those of ``socks`` that are readable, waiting up to ``timeout`` s for one to be.

    For the few callers that watch more than one socket (LAN discovery
    listens on IPv4 and IPv6 at once). Empty after a timeout.
    """
    return _ready(socks, False, timeout)


def reads_may_block() -> bool:
    """True when a socket can stay blocking for its reader while others send without blocking.

    That needs ``MSG_DONTWAIT`` (Linux, macOS, the BSDs): a thread blocked
    in ``recv`` then costs one system call per read, and other threads send
    with ``send_nowait``. Without it (Windows) sockets must be non-blocking
    for good, and a reader waits with ``wait_readable`` before each read.
    """
    return hasattr(socket, "MSG_DONTWAIT")


def send_nowait(sock: socket.socket, data: bytes | memoryview) -> int:
    """Send what the kernel takes right now; 0 when it takes nothing.

    Uses ``MSG_DONTWAIT`` where it exists, so the socket itself may be
    blocking; elsewhere the socket must be non-blocking (see
    ``reads_may_block``). A broken connection raises ``OSError``.
    """
    try:
        return sock.send(data, getattr(socket, "MSG_DONTWAIT", 0))
    except (BlockingIOError, InterruptedError):
        return 0


def send_all(sock: socket.socket, data: bytes, stall_timeout: float) -> None:
    """Send all of ``data`` without blocking in ``send``; ``TimeoutError`` after a stall.

    The bound is on *no progress*: it restarts whenever the peer takes some
    bytes, so a slow reader is served and one that stopped reading is not
    waited for forever. The socket is blocking or not as ``send_nowait``
    requires. Other errors (reset, broken pipe) propagate as ``OSError``.
    """
    view = memoryview(data)
    deadline = time.monotonic() + stall_timeout
    while view:
        sent = send_nowait(sock, view)
        if sent:
            view = view[sent:]
            deadline = time.monotonic() + stall_timeout
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not wait_writable(sock, remaining):
            raise TimeoutError(f"o envio não progrediu em {stall_timeout:g} s")


# --------------------------------------------------------------------------
# TCP keepalive

MACOS_TCP_KEEPALIVE = 0x10
"""macOS's option number for the keepalive idle time (``<netinet/tcp.h>``)."""
MACOS_TCP_RXT_CONNDROPTIME = 0x80
"""macOS: seconds unacknowledged data may wait before the connection is dropped."""
WINDOWS_TCP_MAXRT = 5
"""Windows: seconds of retransmission before the connection is dropped (``ws2ipdef.h``)."""


def keepalive_bound(idle: float = protocolo.KEEPALIVE_IDLE_S,
                    interval: float = protocolo.KEEPALIVE_INTERVAL_S,
                    probes: int = protocolo.KEEPALIVE_PROBES) -> int:
    """Seconds after which a peer that vanished is given up: idle, then every probe."""
    return max(1, round(idle)) + probes * max(1, round(interval))


def _set_tcp_option(sock: socket.socket, name: str, value: int,
                    fallback: int | None = None) -> bool:
    """Set a TCP-level option by name if this OS has it; True if it took."""
    option = getattr(socket, name, fallback)
    if option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True


def enable_keepalive(sock: socket.socket, idle: float = protocolo.KEEPALIVE_IDLE_S,
                     interval: float = protocolo.KEEPALIVE_INTERVAL_S,
                     probes: int = protocolo.KEEPALIVE_PROBES) -> str:
    """Turn on TCP keepalive, tuned to these timings where the OS allows; return how.

    Returns "windows" (``SIO_KEEPALIVE_VALS``; the probe count only where
    ``TCP_KEEPCNT`` exists, Windows 10 1703 and later), "macos"
    (``TCP_KEEPALIVE``), "linux" (``TCP_KEEPIDLE`` and friends, which the BSDs
    share) or "basic" when only ``SO_KEEPALIVE`` could be set -- the OS
    defaults then apply (two hours on most systems). A tuning option the OS
    refuses never raises; failing to turn keepalive on at all does.

    Keepalive only probes an *idle* connection: while sent data waits for an
    acknowledgement the kernel retransmits instead, for about 15 minutes on
    Linux. So the same bound is also put on unacknowledged data
    (``_limit_unacknowledged``): a laptop whose lid closed right after a
    message reached it goes in ``keepalive_bound`` seconds too.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds_idle = max(1, round(idle))
    seconds_interval = max(1, round(interval))
    _limit_unacknowledged(sock, keepalive_bound(idle, interval, probes))
    if PLATFORM == "win32" and hasattr(socket, "SIO_KEEPALIVE_VALS") and hasattr(sock, "ioctl"):
        try:
            sock.ioctl(socket.SIO_KEEPALIVE_VALS,
                       (1, max(1, round(idle * 1000)), max(1, round(interval * 1000))))
        except (OSError, ValueError):
            return "basic"
        _set_tcp_option(sock, "TCP_KEEPCNT", probes)
        return "windows"
    if PLATFORM == "darwin":
        if not _set_tcp_option(sock, "TCP_KEEPALIVE", seconds_idle, MACOS_TCP_KEEPALIVE):
            return "basic"
        _set_tcp_option(sock, "TCP_KEEPINTVL", seconds_interval)
        _set_tcp_option(sock, "TCP_KEEPCNT", probes)
        return "macos"
    if _set_tcp_option(sock, "TCP_KEEPIDLE", seconds_idle):
        _set_tcp_option(sock, "TCP_KEEPINTVL", seconds_interval)
        _set_tcp_option(sock, "TCP_KEEPCNT", probes)
        return "linux"
    return "basic"


def _limit_unacknowledged(sock: socket.socket, seconds: int) -> bool:
    """Drop the connection when sent data stays unacknowledged for ``seconds``.

    Each system spells it differently, and a wrong option number would set
    some other option, so the numeric fallbacks are used only on the real
    system they belong to (``sys.platform``, not the simulated ``PLATFORM``).
    """
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux, in milliseconds
        return _set_tcp_option(sock, "TCP_USER_TIMEOUT", seconds * 1000)
    if sys.platform == "win32":
        return _set_tcp_option(sock, "TCP_MAXRT", seconds, WINDOWS_TCP_MAXRT)
    if sys.platform == "darwin":
        return _set_tcp_option(sock, "TCP_RXT_CONNDROPTIME", seconds,
                               MACOS_TCP_RXT_CONNDROPTIME)
    return False


# --------------------------------------------------------------------------
# This machine's addresses

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFBRDADDR = 0x8919
_IFF_UP = 0x1
_IFF_BROADCAST = 0x2
_IFF_LOOPBACK = 0x8
_IFA_F_DADFAILED = 0x08
_ROUTE_PROBES = (
    (socket.AF_INET, "198.51.100.1"),  # documentation addresses: never contacted,
    (socket.AF_INET6, "2001:db8::1"),  # a UDP connect only asks the routing table
)


def _usable_address(text: str) -> str | None:
    """``text`` as an address other hosts could use, or None (loopback, link-local v6...)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        return None
    if address.version == 6 and (address.is_link_local or address.ipv4_mapped is not None):
        return None
    return str(address)


def _linux_interface_ioctl(request: int, name: str) -> bytes | None:
    """One ``SIOCGIF*`` answer (a ``struct ifreq``) for interface ``name``, or None."""
    try:
        import fcntl
    except ImportError:
        return None
    ifreq = struct.pack("256s", name.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            return fcntl.ioctl(probe.fileno(), request, ifreq)
    except OSError:
        return None


def _linux_interfaces() -> list[str]:
    if not PLATFORM.startswith("linux"):
        return []
    try:
        return [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return []


def _linux_ipv4_addresses() -> Iterator[str]:
    """Every IPv4 address of this host, Linux only.

    ``SIOCGIFADDR`` gives one address per interface; ``/proc/net/fib_trie``
    also lists the second and later ones (``/32 host LOCAL`` entries).
    """
    for name in _linux_interfaces():
        answer = _linux_interface_ioctl(_SIOCGIFADDR, name)
        if answer is not None:
            yield socket.inet_ntoa(answer[20:24])
    yield from _fib_trie_local_addresses()


def _fib_trie_local_addresses(path: str = "/proc/net/fib_trie") -> Iterator[str]:
    """The local IPv4 addresses listed in Linux's routing trie."""
    if not PLATFORM.startswith("linux"):
        return
    try:
        with open(path, encoding="ascii") as trie:
            lines = trie.read().splitlines()
    except OSError:
        return
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            address = previous.split("|--", 1)[1].strip()
            with contextlib.suppress(ValueError):
                yield str(ipaddress.IPv4Address(address))


def _linux_ipv6_addresses() -> Iterator[str]:
    """Every IPv6 address from ``/proc/net/if_inet6``, Linux only."""
    if not PLATFORM.startswith("linux"):
        return
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            lines = table.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        with contextlib.suppress(ValueError):
            if int(fields[4], 16) & _IFA_F_DADFAILED:
                continue
            yield str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))


def _host_name_addresses() -> Iterator[str]:
    """What this machine's name resolves to (often only 127.0.1.1 on a stock install)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            yield sockaddr[0]


def _default_route_addresses() -> Iterator[str]:
    """The source address of the default route, per family, from a UDP ``connect``.

    Connecting a UDP socket sends nothing: the kernel only picks the route
    and the source address, which ``getsockname`` then shows.
    """
    for family, target in _ROUTE_PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                yield probe.getsockname()[0]
        except OSError:
            continue


def _is_local(address: str) -> bool:
    """True if this machine can bind to ``address`` (so it really is one of ours).

    A host name may resolve to a stale address from ``/etc/hosts``; binding
    proves the address is on an interface, without sending anything.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _unique_usable(candidates: Iterable[str]) -> list[str]:
    found: list[str] = []
    for text in candidates:
        address = _usable_address(text)
        if address is not None and address not in found and _is_local(address):
            found.append(address)
    return found


def lan_addresses() -> list[str]:
    """Addresses other machines may use to reach this one: IPv4 first, then IPv6.

    Best effort and silent: no traffic, no third-party package, every source
    may fail (the list may be empty). Within a family the default route's
    source address comes first, as the likeliest to be reachable. Loopback,
    link-local IPv6 and duplicates are left out.
    """
    candidates = [*_default_route_addresses(), *_linux_ipv4_addresses(),
                  *_linux_ipv6_addresses(), *_host_name_addresses()]
    found = _unique_usable(candidates)
    return [a for a in found if ":" not in a] + [a for a in found if ":" in a]


def broadcast_addresses() -> list[str]:
    """IPv4 directed-broadcast addresses of the interfaces that are up (Linux only; else []).

    LAN discovery sends to these as well as to 255.255.255.255, because some
    systems send the latter out of one interface only, and Linux sends it
    nowhere when there is no default route (an isolated lab network).
    """
    found: list[str] = []
    for name in _linux_interfaces():
        flags_answer = _linux_interface_ioctl(_SIOCGIFFLAGS, name)
        if flags_answer is None:
            continue
        flags = struct.unpack_from("H", flags_answer, 16)[0]
        if not flags & _IFF_UP or not flags & _IFF_BROADCAST or flags & _IFF_LOOPBACK:
            continue
        answer = _linux_interface_ioctl(_SIOCGIFBRDADDR, name)
        if answer is None:
            continue
        address = socket.inet_ntoa(answer[20:24])
        if address not in ("0.0.0.0", "255.255.255.255") and address not in found:
            found.append(address)
    return found


# --------------------------------------------------------------------------
# host:porta


def format_host_port(host: str, port: int) -> str:
    """``host:porta`` as a person would type it back: ``[::1]:1998`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdecimal() and len(text) <= 5) or \
            not 1 <= int(text) <= 65535:
        raise ValueError(f"porta inválida: {text!r} (use um número de 1 a 65535)")
    return int(text)


def _check_ipv6(text: str) -> str:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"endereço IPv6 inválido: {text!r}") from None
    return text


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Read ``host``, ``host:porta``, ``[ipv6]``, ``[ipv6]:porta`` or a bare IPv6 address.

    Returns (host, port); raises ``ValueError`` with a message for the user
    (in Portuguese) when the port is not 1-65535 or the host is missing.
    A bare IPv6 address takes no port: ``::1:1998`` is itself an address,
    so a port needs the brackets.
    """
    text = text.strip()
    port = default_port
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("falta o ']' depois do endereço IPv6")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"texto inesperado depois de ']': {rest!r}")
            port = _parse_port(rest[1:])
        host = _check_ipv6(inside) if inside else ""
    elif text.count(":") >= 2:
        host = _check_ipv6(text)
    else:
        host, colon, port_text = text.partition(":")
        if colon:
            port = _parse_port(port_text)
    if not host:
        raise ValueError("informe o endereço do servidor")
    if any(char.isspace() for char in host):
        raise ValueError(f"endereço inválido: {host!r} (não pode ter espaços)")
    return host, port


