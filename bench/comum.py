"""Pieces shared by the benchmark scripts: the server under test, its figures, the output.

Benchmarks only ever talk to the loopback network (127.0.0.0/8 or ::1):
``loopback_target`` refuses anything else. A server started here is a child
process on a free port, stopped with SIGTERM (then SIGKILL) when the ``with``
block ends, whatever happened inside it.

Every script ends its output the same way: a table of medians
(``print_table_header``) and one JSON line with every figure
(``print_json_line``); the command-line options they share come from
``add_server_options``. ``bench/soak.py`` uses the server starter and the
/proc readers from here too.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO / "servidor.py"
UNLIMITED_OPTIONS = ("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip", "0",
                     "--max-por-ip", "0")
"""Every abuse limit a load generator on one address would hit, turned off."""
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


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the process is always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class ServerUnderTest:
    """The chat server a benchmark talks to: started here, or an existing one (``attach``).

    A started server gets ``options`` on its command line. By default that is
    every abuse limit off (rate, per-address and total connections) and
    WARNING logging, so what is measured is relaying, not throttling or log
    writing. With ``watch_log`` the server's log (stderr) is read by a thread,
    so the pipe never fills, and its ERROR lines are kept in ``errors``: a
    server that logged one has hit an unexpected exception. (The log must then
    be at INFO level or below, for the line that announces the port.)
    """

    def __init__(self, attach: tuple[str, int] | None = None, script: Path = SERVER_SCRIPT,
                 max_clients: int = 100_000, pid: int | None = None, *,
                 options: Sequence[str] | None = None, watch_log: bool = False) -> None:
        self.attach = attach
        self.script = Path(script)
        self.max_clients = max_clients
        self.host, self.port = attach if attach else ("127.0.0.1", 0)
        self.pid = pid
        self.options = list(options) if options is not None else [
            *UNLIMITED_OPTIONS, "--max-clientes", str(max_clients), "--log-level", "WARNING"]
        if "--dados" not in self.options and "--efemero" not in self.options:
            self.options.insert(0, "--efemero")  # never the user's own data directory
        self.watch_log = watch_log
        self.errors: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log_reader: threading.Thread | None = None
        self._listening = threading.Event()

    def __enter__(self) -> ServerUnderTest:
        if self.attach is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ServerUnderTest:
        """Start ``servidor.py`` on a free port and wait until it accepts connections.

        A watched log announces the listening socket and the port the server
        picked; otherwise the port is chosen here and a probe connection tells
        when the server is up. The probe is avoided when it can be, because
        its thread would still show in the server's thread count right after.
        """
        self.port = 0 if self.watch_log else free_port(self.host)
        command = [sys.executable, str(self.script), "--host", self.host,
                   "--port", str(self.port), *self.options]
        self._process = subprocess.Popen(
            command, cwd=self.script.parent, stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE if self.watch_log else None)
        self.pid = self._process.pid
        if self.watch_log:
            self._log_reader = threading.Thread(target=self._read_log, args=(self._process,),
                                                daemon=True, name="log-servidor")
            self._log_reader.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"o servidor terminou ao iniciar (código "
                                   f"{self._process.returncode})")
            if self._ready():
                return self
        self.stop()
        raise RuntimeError("o servidor não passou a aceitar conexões em 10 s")

    def _ready(self) -> bool:
        """Whether the server accepts connections yet; takes about 50 ms when not."""
        if self.watch_log:
            return self._listening.wait(0.05)
        with contextlib.suppress(OSError), \
                socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        time.sleep(0.05)
        return False

    def _read_log(self, process: subprocess.Popen[bytes]) -> None:
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if not self._listening.is_set() and " escutando em " in line:
                self.port = int(line.split(" porta ")[1].split()[0])
                self._listening.set()
            elif " ERROR " in line:
                self.errors.append(line)
        process.stderr.close()

    def terminate(self, timeout: float = 3.0) -> tuple[int | None, float]:
        """SIGTERM to the started server; returns (exit status or None if it lingered, seconds)."""
        started = time.monotonic()
        self._process.terminate()
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: the started server never outlives the run."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process)
        if self._log_reader is not None:
            self._log_reader.join(5.0)

    @property
    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return process_status(self.pid)


# --------------------------------------------------------------------------
# What every script prints and accepts


def add_server_options(parser: argparse.ArgumentParser, pid_help: str | None = None) -> None:
    """``--attach``, ``--pid-servidor`` (when ``pid_help`` says what it is for),
    ``--servidor`` and ``--rapido``: the options every benchmark takes."""
    parser.add_argument("--attach", metavar="HOST:PORTA",
                        help="usar um servidor já rodando (só loopback) em vez de iniciar um")
    if pid_help is not None:
        parser.add_argument("--pid-servidor", type=int, help=pid_help)
    parser.add_argument("--servidor", default=str(SERVER_SCRIPT),
                        help="servidor.py a iniciar (padrão: o deste repositório)")
    parser.add_argument("--rapido", action="store_true",
                        help="configuração mínima de poucos segundos (para a CI)")


def print_table_header(title: str, header: str) -> None:
    """A blank line, the table's title, its column header and a rule as wide as the header."""
    print(f"\n{title}")
    print(header)
    print("-" * len(header))


def machine() -> dict[str, object]:
    """The machine a run was measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "plataforma": platform.platform()}


def print_json_line(bench: str, parameters: dict, medians: object, runs: list[dict]) -> None:
    """The last line of a benchmark's output: every figure, as one JSON object."""
    print(json.dumps({
        "bench": bench,
        "maquina": machine(),
        "parametros": parameters,
        "medianas": medians,
        "execucoes": runs,
    }, ensure_ascii=False))
