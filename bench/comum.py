"""Pieces shared by the benchmark scripts: the server under test and its figures.

Benchmarks only ever talk to the loopback network (127.0.0.0/8 or ::1):
``loopback_target`` refuses anything else. A server started here is a child
process on a free port, stopped with SIGTERM (then SIGKILL) when the ``with``
block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO / "servidor.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def loopback_target(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); loopback addresses only."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdecimal():
        raise ValueError(f"esperado HOST:PORTA, recebido {text!r}")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"use um endereço IP de loopback, não {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"os benchmarks só falam com a rede local da máquina (127.0.0.0/8), "
                         f"não com {host}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"porta inválida: {port}")
    return host, port


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (up to the hard limit); returns the new soft limit.

    Children inherit it, so call this before starting the server and the
    generator processes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_status(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and thread count of ``pid``, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    if not pid:
        return found
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was around a run."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class ServerUnderTest:
    """The chat server a benchmark talks to: started here, or an existing one (``attach``).

    A started server gets every abuse limit off (rate, per-address and total
    connections) and WARNING logging, so what is measured is relaying, not
    throttling or log writing.
    """

    def __init__(self, attach: tuple[str, int] | None = None, script: Path = SERVER_SCRIPT,
                 max_clients: int = 100_000, pid: int | None = None) -> None:
        self.attach = attach
        self.script = Path(script)
        self.max_clients = max_clients
        self.host, self.port = attach if attach else ("127.0.0.1", 0)
        self.pid = pid
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerUnderTest:
        if self.attach is None:
            self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self) -> None:
        self.port = free_port(self.host)
        command = [sys.executable, str(self.script), "--host", self.host,
                   "--port", str(self.port), "--taxa", "0", "--max-por-ip", "0",
                   "--max-clientes", str(self.max_clients), "--log-level", "WARNING"]
        self._process = subprocess.Popen(command, cwd=self.script.parent,
                                         stdin=subprocess.DEVNULL)
        self.pid = self._process.pid
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"o servidor terminou ao iniciar (código "
                                   f"{self._process.returncode})")
            with contextlib.suppress(OSError), \
                    socket.create_connection((self.host, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("o servidor não passou a aceitar conexões em 10 s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: the started server never outlives the run."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)

    @property
    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return process_status(self.pid)
