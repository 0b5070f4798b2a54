"""A real LAN made of Linux network namespaces, for tests that loopback cannot show.

Broadcasts that cross machines, a host that vanishes without FIN or RST, the
addresses a machine sees on its own interfaces: none of that happens on
127.0.0.1. As root, ``VirtualLan`` builds the real thing:

* one namespace holds a Linux bridge -- the switch -- with the address
  10.77.X.1 (the "gateway"; it routes nothing);
* each ``Host`` is a namespace with one veth (``eth0``) plugged into the
  bridge, the address 10.77.X.N/24 with its broadcast address, ``lo`` up
  and, unless told otherwise, a default route via the gateway (without one,
  Linux refuses to send to 255.255.255.255, as on an isolated lab network);
* ``Host.vanish()`` makes nftables drop everything in and out of the host
  (loopback excepted): its peers see silence, never a FIN or a RST;
* ``Host.call(function)`` runs a function of the test process inside the
  host's network: a socket it opens (a ``WireClient``, say) lives on that
  host for good, so a test can talk from "another machine" without a child
  process.

Every name includes this process's PID and an instance number, so parallel
runs never collide; ``close()`` kills by PID the processes it started and
deletes every namespace it made, also after a failure, and a new instance
first deletes what a killed run left behind (namespaces whose PID is dead).

Use the ``lan`` fixture (``from lan_virtual import lan_fixture``, or
``lan``, in a test module; or ``pytest_plugins``); it skips the test,
with the reason, when not root or when namespaces cannot be created.
``Host.vanish`` skips when ``nft`` is missing. Every command has a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

import pytest

import rede

REPO = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT = 10.0
"""Seconds any ``ip`` or ``nft`` command may take."""
RUN_TIMEOUT = 30.0
"""Default bound for ``Host.run``."""
STOP_TIMEOUT = 3.0
NAME_PREFIX = "chatlan-"
VANISH_TABLE = "chatlan_sumir"
_VANISH_RULES = f"""
table inet {VANISH_TABLE} {{
    chain entrada {{
        type filter hook input priority -300; policy drop;
        iifname "lo" accept
    }}
    chain saida {{
        type filter hook output priority -300; policy drop;
        oifname "lo" accept
    }}
}}
"""
NETNS_DIR = Path("/run/netns")
"""Where ``ip netns add`` keeps a handle on each namespace it creates."""
CALL_TIMEOUT = 30.0
"""Default bound for ``Host.call``."""
_CLONE_NEWNET = 0x40000000
_instances = itertools.count(1)
_Result = TypeVar("_Result")


class LanError(RuntimeError):
    """A command that builds or changes the virtual LAN failed."""


def unavailable_reason() -> str | None:
    """Why this machine cannot build a virtual LAN, or None if it can (probably)."""
    if not sys.platform.startswith("linux"):
        return "a rede virtual usa namespaces de rede do Linux"
    if os.geteuid() != 0:
        return "a rede virtual precisa de root (ip netns add)"
    if shutil.which("ip") is None:
        return "comando 'ip' não encontrado (instale o pacote iproute2)"
    return None


def _tool(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run an administration command; its stdout, or ``LanError`` with its stderr."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LanError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise LanError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; return their names."""
    try:
        listing = _tool(["ip", "netns", "list"])
    except LanError:
        return []
    removed = []
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = re.fullmatch(rf"{NAME_PREFIX}(\d+)-.*", name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(LanError):
                _tool(["ip", "netns", "del", name])
                removed.append(name)
    return removed


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` by its PID, then kill it if it lingers; close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def read_line(source: subprocess.Popen | IO[bytes], timeout: float) -> str:
    """The next line from a process's stdout (or any binary pipe), within ``timeout`` seconds.

    Reads byte by byte from the descriptor after a bounded wait, so neither a
    silent process nor Python's buffering can hang the test.
    """
    stream = source.stdout if isinstance(source, subprocess.Popen) else source
    assert stream is not None
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not rede.wait_readable(fd, remaining):
            raise TimeoutError(f"nenhuma linha em {timeout:g} s (até agora: {line!r})")
        byte = os.read(fd, 1)
        if not byte:
            raise EOFError(f"fim da saída; lido: {line!r}")
        line += byte
    return line.decode().rstrip("\n")


class Host:
    """One machine of the virtual LAN: a namespace with ``eth0`` at ``address``."""

    def __init__(self, lan: VirtualLan, name: str, namespace: str, address: str,
                 ipv6_address: str | None) -> None:
        self.lan = lan
        self.name = name
        self.namespace = namespace
        self.address = address
        self.ipv6_address = ipv6_address
        self.vanished = False

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv: Sequence[str], timeout: float = RUN_TIMEOUT,
            **kwargs: object) -> subprocess.CompletedProcess:
        """Run ``argv`` in this host to completion (output captured as text)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("env", python_env())
        return subprocess.run(self.command(argv), timeout=timeout, check=False,
                              **kwargs)  # type: ignore[call-overload]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start ``argv`` in this host; the LAN stops it (by PID) at ``close``.

        ``ip netns exec`` replaces itself with the command, so the PID is the
        command's own. Output goes to pipes unless told otherwise.
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("env", python_env())
        proc = subprocess.Popen(self.command(argv), **kwargs)  # type: ignore[call-overload]
        self.lan.processes.append(proc)
        return proc

    def run_python(self, code: str, *args: str, timeout: float = RUN_TIMEOUT
                   ) -> subprocess.CompletedProcess:
        """``python3 -c code args`` in this host, with the project importable."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout)

    def popen_python(self, code: str, *args: str, **kwargs: object) -> subprocess.Popen:
        return self.popen([sys.executable, "-c", code, *args], **kwargs)

    def call(self, function: Callable[..., _Result], *args: object,
             timeout: float = CALL_TIMEOUT) -> _Result:
        """``function(*args)`` run inside this host's network; its result or its exception.

        It runs in a new thread that moves itself into the host's network
        namespace (a per-thread property on Linux) and ends with the call,
        so nothing else of the test process ever runs there. Sockets the
        function opens stay on this host after it returns: connect a client
        here, use it from the test's own thread. Threads the function starts
        inherit the namespace too. Raises ``TimeoutError`` after ``timeout``
        seconds (the thread is then left to finish on its own).
        """
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                _enter_network_namespace(NETNS_DIR / self.namespace)
                outcome["result"] = function(*args)
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"rede-virtual-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{getattr(function, '__name__', function)!s} em {self.name} "
                               f"não terminou em {timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["result"]  # type: ignore[return-value]

    def vanish(self) -> None:
        """Drop every packet in and out of this host, loopback excepted (no FIN, no RST)."""
        if shutil.which("nft") is None:
            pytest.skip("comando 'nft' não encontrado (instale o pacote nftables)")
        if not self.vanished:
            _tool(["ip", "netns", "exec", self.namespace, "nft", "-f", "-"], _VANISH_RULES)
            self.vanished = True

    def reappear(self) -> None:
        """Undo ``vanish``."""
        if self.vanished:
            _tool(["ip", "netns", "exec", self.namespace, "nft", "delete", "table", "inet",
                   VANISH_TABLE])
            self.vanished = False


def _enter_network_namespace(path: Path) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)  # Python 3.12+
        if setns is not None:
            setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


def python_env(**extra: str) -> dict[str, str]:
    """The environment for Python processes of the tests: the project first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSTARTUP", None)
    env.update(extra)
    return env


class VirtualLan:
    """A bridge in its own namespace and the hosts plugged into it (10.77.X.0/24).

    Construction creates the bridge; ``add_host`` the hosts; ``close``
    removes everything (idempotent). Also a context manager.
    """

    def __init__(self) -> None:
        self.instance = next(_instances)
        self.tag = f"{NAME_PREFIX}{os.getpid()}-{self.instance}"
        self.subnet = (os.getpid() + self.instance) % 254 + 1
        self.gateway = f"10.77.{self.subnet}.1"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self._closed = False
        remove_stale_namespaces()
        self._bridge_ns = self._new_namespace("switch")
        try:
            for argv in (["link", "add", "br0", "type", "bridge"],
                         ["addr", "add", f"{self.gateway}/24", "brd", "+", "dev", "br0"],
                         ["link", "set", "br0", "up"]):
                _tool(["ip", "-n", self._bridge_ns, *argv])
        except BaseException:
            self.close()
            raise

    def _new_namespace(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        _tool(["ip", "netns", "add", name])
        self._namespaces.append(name)
        return name

    def add_host(self, name: str, default_route: bool = True, ipv6: bool = False) -> Host:
        """A new host on the LAN, at 10.77.X.(2, 3, ...); ``ipv6`` adds fd77:X::N/64 too."""
        if not re.fullmatch(r"[a-z0-9]{1,12}", name):
            raise ValueError(f"nome de host inválido para a rede virtual: {name!r}")
        number = len(self.hosts) + 2
        if number > 254:
            raise LanError("a rede virtual comporta no máximo 253 hosts")
        namespace = self._new_namespace(name)
        port = f"p{number}"  # the bridge's side, named in the bridge's namespace only
        address = f"10.77.{self.subnet}.{number}"
        ipv6_address = f"fd77:{self.subnet:x}::{number:x}" if ipv6 else None
        in_bridge = ["ip", "-n", self._bridge_ns]
        in_host = ["ip", "-n", namespace]
        _tool([*in_bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", namespace])
        _tool([*in_bridge, "link", "set", port, "master", "br0"])
        _tool([*in_bridge, "link", "set", port, "up"])
        _tool([*in_host, "link", "set", "lo", "up"])
        _tool([*in_host, "addr", "add", f"{address}/24", "brd", "+", "dev", "eth0"])
        if ipv6_address:
            # nodad: usable at once, not "tentative" for a second.
            _tool([*in_host, "addr", "add", f"{ipv6_address}/64", "dev", "eth0", "nodad"])
        _tool([*in_host, "link", "set", "eth0", "up"])
        if default_route:
            _tool([*in_host, "route", "add", "default", "via", self.gateway])
        host = Host(self, name, namespace, address, ipv6_address)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Stop the processes started here (by PID) and delete every namespace made here."""
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            stop_process(proc)
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(LanError):
                _tool(["ip", "netns", "del", namespace])

    def __enter__(self) -> VirtualLan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(name="lan")
def lan_fixture() -> Iterator[VirtualLan]:
    """A fresh virtual LAN with no hosts yet, removed after the test; skips if impossible.

    Its name for tests is ``lan``. Import it as ``lan_fixture`` (then a test's
    ``lan`` argument shadows nothing, which linters like) or as ``lan``.
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        network = VirtualLan()
    except LanError as exc:
        pytest.skip(f"não foi possível criar a rede virtual: {exc}")
    try:
        yield network
    finally:
        network.close()


lan = lan_fixture
"""The same fixture, for ``from lan_virtual import lan``."""
