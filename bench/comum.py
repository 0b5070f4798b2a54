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

Side-by-side comparisons (``relay.py``, ``salas.py``, ``conexoes.py``) run
the same load against several *targets* in alternating rounds: our server
with its message store on disk (``disco``) or in memory only (``memoria``),
and, with ``--ngircd``, the IRC server ngircd as an anchor (``ngircd``),
started from ``bench/ngircd.conf`` on a free port. ``--gerador-c`` drives
the load with the independent C generator ``relay_load`` instead of the
Python one, to cross-check the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO / "servidor.py"
UNLIMITED_OPTIONS = ("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip", "0",
                     "--max-por-ip", "0")
"""Every abuse limit a load generator on one address would hit, turned off."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NGIRCD_CONF = Path(__file__).resolve().with_name("ngircd.conf")
STORES = ("disco", "memoria")
"""Our server's two storage configurations: SQLite file (the default) and ``--efemero``."""


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


def percentile(sorted_values: Sequence[int | float], q: float) -> int | float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), int(q * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


def percent(value: float | None) -> str:
    """A CPU share for a run's line: ``93.7%``, or ``-`` when it could not be measured."""
    return "-" if value is None else f"{value}%"


def latency_summary(sorted_us: Sequence[int]) -> dict[str, float]:
    """p50, p90, p99 and max of sorted microsecond latencies, in milliseconds."""
    figures = {name: round(percentile(sorted_us, q) / 1000, 3)
               for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))}
    figures["max"] = round((sorted_us[-1] if sorted_us else 0) / 1000, 3)
    return figures


class Worker(Protocol):
    """What a generator process runs: connect its clients, run from a start time, close."""

    def connect(self) -> None: ...
    def run(self, start_at: float) -> object: ...
    def close(self) -> None: ...


def serve_worker(worker: Worker, conn: Connection, ready_timeout: float) -> None:
    """The generator process's side of ``wait_until_ready`` and ``start_together``:
    connect, say "pronto" (or "falha" and why), run at the start time, send the result."""
    try:
        try:
            worker.connect()
        except OSError as exc:
            conn.send(("falha", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("pronto", None))
        if not conn.poll(ready_timeout):
            return
        command, start_at = conn.recv()
        if command != "inicio":
            return
        conn.send(("resultado", worker.run(start_at)))
    finally:
        worker.close()
        conn.close()


def wait_until_ready(conns: Sequence[Connection], timeout: float, what: str) -> None:
    """Wait for every generator process's ("pronto", _); RuntimeError naming ``what`` if not."""
    for conn in conns:
        if not conn.poll(timeout):
            raise RuntimeError(f"um processo gerador não ficou pronto em {timeout:g} s")
        status, detail = conn.recv()
        if status != "pronto":
            raise RuntimeError(f"falha ao {what}: {detail}")


def start_together(conns: Sequence[Connection], lead: float = 0.2) -> float:
    """Tell every generator process to start at the same moment, ``lead`` s from now;
    returns that moment (``time.monotonic``) once it has come."""
    start_at = time.monotonic() + lead
    for conn in conns:
        conn.send(("inicio", start_at))
    time.sleep(max(0.0, start_at - time.monotonic()))
    return start_at


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
    writing. ``store`` says where the messages live: ``"memoria"``
    (``--efemero``, the default here), ``"disco"`` (``--dados`` on a file in
    a temporary directory made for this server and removed when it stops),
    or None for a server that has no such options (version 1). With
    ``watch_log`` the server's log (stderr) is read by a thread, so the pipe
    never fills, and its ERROR lines are kept in ``errors``: a server that
    logged one has hit an unexpected exception. (The log must then
    be at INFO level or below, for the line that announces the port.)
    """

    def __init__(self, attach: tuple[str, int] | None = None, script: Path = SERVER_SCRIPT,
                 max_clients: int = 100_000, pid: int | None = None, *,
                 options: Sequence[str] | None = None, watch_log: bool = False,
                 store: str | None = "memoria") -> None:
        self.attach = attach
        self.script = Path(script)
        self.max_clients = max_clients
        self.host, self.port = attach if attach else ("127.0.0.1", 0)
        self.pid = pid
        self.options = list(options) if options is not None else [
            *UNLIMITED_OPTIONS, "--max-clientes", str(max_clients), "--log-level", "WARNING"]
        self.store = store
        if store == "memoria" and "--dados" not in self.options \
                and "--efemero" not in self.options:
            self.options.insert(0, "--efemero")  # never the user's own data directory
        self._data_dir: tempfile.TemporaryDirectory | None = None
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
        options = list(self.options)
        if self.store == "disco" and "--dados" not in options:
            self._data_dir = tempfile.TemporaryDirectory(prefix="bench-dados-")
            options[:0] = ["--dados", str(Path(self._data_dir.name) / "chat.sqlite3")]
        command = [sys.executable, str(self.script), "--host", self.host,
                   "--port", str(self.port), *options]
        try:
            self._process = subprocess.Popen(
                command, cwd=self.script.parent, stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE if self.watch_log else None)
        except OSError:
            self.stop()
            raise
        self.pid = self._process.pid
        if self.watch_log:
            self._log_reader = threading.Thread(target=self._read_log, args=(self._process,),
                                                daemon=True, name="log-servidor")
            self._log_reader.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"o servidor terminou ao iniciar (código {code})")
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
        if process is not None:
            stop_process(process)
            if self._log_reader is not None:
                self._log_reader.join(5.0)
        data_dir, self._data_dir = self._data_dir, None
        if data_dir is not None:
            data_dir.cleanup()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The started server's process (None when attached or stopped)."""
        return self._process

    @property
    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return process_status(self.pid)


# --------------------------------------------------------------------------
# ngircd, the anchor: a C IRC server measured side by side with ours


def find_ngircd() -> str | None:
    """The ngircd program, if installed (Debian puts it in /usr/sbin)."""
    found = shutil.which("ngircd")
    if found is None and os.access("/usr/sbin/ngircd", os.X_OK):
        found = "/usr/sbin/ngircd"
    return found


class NgircdUnderTest:
    """ngircd in the foreground with ``bench/ngircd.conf`` on a free loopback port.

    The configuration is copied into a temporary directory with only the
    ``Ports`` line changed, so two runs never share a port. ngircd starts as
    root here and drops to "nobody" by itself. Same interface as
    ``ServerUnderTest`` where the benchmarks need it: ``host``, ``port``,
    ``pid``, ``cpu``, ``status()``, a ``with`` block that always stops it.
    """

    dialect = "irc"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.host, self.port = "127.0.0.1", 0
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> NgircdUnderTest:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> NgircdUnderTest:
        self.port = free_port(self.host)
        self._directory = tempfile.TemporaryDirectory(prefix="bench-ngircd-")
        directory = Path(self._directory.name)
        lines = []
        for line in NGIRCD_CONF.read_text(encoding="utf-8").splitlines():
            key = line.strip().split("=")[0].strip()
            if key == "Ports":
                line = f"\tPorts = {self.port}"
            elif key == "Listen":
                line = f"\tListen = {self.host}"
            lines.append(line)
        config = directory / "ngircd.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(directory, 0o755)
        os.chmod(config, 0o644)
        log_path = directory / "ngircd.log"
        try:
            with open(log_path, "wb") as log:
                self._process = subprocess.Popen(
                    [self.binary, "-n", "-f", str(config)], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT)
        except OSError:
            self.stop()
            raise
        self.pid = self._process.pid
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-300:]
                self.stop()
                raise RuntimeError(f"o ngircd terminou ao iniciar: {tail}")
            with contextlib.suppress(OSError), \
                    socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("o ngircd não passou a aceitar conexões em 10 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
        directory, self._directory = self._directory, None
        if directory is not None:
            directory.cleanup()

    @property
    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return process_status(self.pid)


# --------------------------------------------------------------------------
# Targets: what a side-by-side benchmark runs the same load against


@dataclass(frozen=True)
class Target:
    """One server configuration of a comparison.

    ``name`` is ``disco`` or ``memoria`` (our server, store on or off),
    ``ngircd``, or ``externo`` (a server given with ``--attach``);
    ``dialect`` is what the load generator speaks to it.
    """

    name: str
    dialect: str

    @property
    def ours(self) -> bool:
        return self.dialect == "chat"


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    """The targets ``--armazenamento``, ``--ngircd`` and ``--attach`` ask for, in round order.

    ``--ngircd`` without ngircd installed prints why and runs without it.
    """
    if args.attach:
        return [Target("externo", "chat")]
    stores = STORES if args.armazenamento == "ambos" else (args.armazenamento,)
    targets = [Target(store, "chat") for store in stores]
    if getattr(args, "ngircd", False):
        if find_ngircd() is None:
            print("aviso: --ngircd pedido, mas o ngircd não está instalado "
                  "(apt-get install ngircd): medindo só o nosso servidor", file=sys.stderr)
        else:
            targets.append(Target("ngircd", "irc"))
    return targets


def open_target(target: Target, args: argparse.Namespace,
                max_clients: int = 100_000) -> ServerUnderTest | NgircdUnderTest:
    """A started (or attached) server for ``target``; use it in a ``with`` block."""
    if target.name == "ngircd":
        return NgircdUnderTest(find_ngircd() or "ngircd")
    attach = loopback_target(args.attach) if args.attach else None
    return ServerUnderTest(attach, args.servidor, max_clients=max_clients,
                           pid=getattr(args, "pid_servidor", None),
                           store=None if attach else target.name)


def add_target_options(parser: argparse.ArgumentParser, generator: bool = True,
                       ngircd: bool = True) -> None:
    """``--armazenamento``, and (when the script can use them) ``--ngircd`` and ``--gerador-c``."""
    parser.add_argument("--armazenamento", choices=("ambos", *STORES), default="ambos",
                        help="o nosso servidor com as mensagens num arquivo SQLite (disco, o "
                             "padrão do servidor), só na memória (--efemero) ou os dois, em "
                             "rodadas alternadas (padrão: ambos)")
    if ngircd:
        parser.add_argument("--ngircd", action="store_true",
                            help="medir também o ngircd (servidor IRC em C), com a mesma carga, "
                                 "nas mesmas rodadas, se estiver instalado")
    if generator:
        parser.add_argument("--gerador-c", metavar="CAMINHO",
                            help="gerar a carga com o relay_load (gerador independente em C, "
                                 "compilado de ../shared/bench/relay_load.c) em vez do gerador "
                                 "em Python, para conferir os números")


def ratio_rows(summaries: dict[tuple[object, str], dict], key: str, keys: Sequence[object]
               ) -> list[dict]:
    """Same-run ratios of ``key`` between targets, for each configuration in ``keys``.

    ``summaries`` maps (configuration, target name) to a summary holding
    ``key``. Ratios are ours/ngircd for each of our stores, and disk/memory
    (what the store costs).
    """
    rows = []
    for config in keys:
        row: dict = {"config": config}
        values = {name: summaries.get((config, name), {}).get(key) for name in
                  ("disco", "memoria", "ngircd")}
        for store in STORES:
            if values[store] and values["ngircd"]:
                row[f"{store}_ngircd"] = round(values[store] / values["ngircd"], 3)
        if values["disco"] and values["memoria"]:
            row["disco_memoria"] = round(values["disco"] / values["memoria"], 3)
        if len(row) > 1:
            rows.append(row)
    return rows


def print_ratios(title: str, label: str, rows: list[dict]) -> None:
    """The ratio table: ours/ngircd per store, and the store's cost (1 - disk/memory)."""
    if not rows:
        return
    print_table_header(title, f"{label:>8} {'disco/ngircd':>12} {'memória/ngircd':>14} "
                              f"{'disco/memória':>13} {'custo do disco':>14}")
    for row in rows:
        cells = [f"{row[k]:.2f}" if k in row else "-"
                 for k in ("disco_ngircd", "memoria_ngircd", "disco_memoria")]
        cost = f"{100 * (1 - row['disco_memoria']):.0f}%" if "disco_memoria" in row else "-"
        print(f"{row['config']!s:>8} {cells[0]:>12} {cells[1]:>14} {cells[2]:>13} {cost:>14}")


# --------------------------------------------------------------------------
# relay_load, the independent C generator


def run_relay_load(binary: str, server: ServerUnderTest | NgircdUnderTest, dialect: str,
                   arguments: Sequence[str], timeout: float) -> dict:
    """Run ``relay_load`` against ``server``; its JSON result (the last line it prints)."""
    command = [binary, "--dialect", dialect, "--host", server.host, "--port", str(server.port),
               "--timeout", f"{timeout:g}", *arguments]
    if server.pid:
        command += ["--server-pid", str(server.pid)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True,
                                   timeout=timeout + 30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"relay_load: {exc}") from None
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"relay_load não deu resultado (código {completed.returncode}): "
                       f"{completed.stderr.strip()[-300:]}")


def ms_from_us(latency_us: dict) -> dict[str, float]:
    """relay_load's latency figures (µs) in this package's form (ms)."""
    return {k: round(latency_us.get(k, 0) / 1000, 3) for k in ("p50", "p90", "p99", "max")}


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
