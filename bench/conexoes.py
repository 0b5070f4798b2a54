"""Connections benchmark: N concurrent registered clients, and what they cost the server.

For each N (1,000; 5,000; 10,000 by default) it measures:

* the time to connect and register all N clients (``REGISTRAR``), opened by
  several generator processes at once, each a ``selectors`` loop over
  non-blocking sockets with a bounded number of handshakes in progress;
* a ``LISTAR`` round trip with N users registered (median of 3), checking
  that all N come back;
* one relay round trip (``ENVIAR`` until the recipient has the ``MSG``);
* the server's resident memory (RSS) and thread count, from /proc.

Each N runs against our server with its message store on disk (``disco``,
the server's default: every registration looks the nickname's account up
in SQLite) and in memory only (``memoria``, ``--efemero``), in alternating
rounds. Last, it prints the ceilings one process meets on this machine
(descriptors, threads, memory maps, pids) and what a teacher can raise.

Every client comes from the loopback network; the generator processes use
different source addresses (127.0.0.2, 127.0.0.3, ...) so that ephemeral
ports never run out, and close with RST so no TIME_WAIT is left behind.
RLIMIT_NOFILE is raised as far as the hard limit allows (the server started
here inherits it).

    python3 bench/conexoes.py                   # N = 1000, 5000, 10000; 3 runs each
    python3 bench/conexoes.py --clientes 10000 --repeticoes 1 --armazenamento disco
    python3 bench/conexoes.py --tetos           # only the ceilings of this machine
    python3 bench/conexoes.py --rapido          # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if any client failed to register or a probe failed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import multiprocessing
import os
import resource
import selectors
import socket
import struct
import sys
import time

import comum

IN_PROGRESS = 128
"""Handshakes (connect + REGISTRAR) each generator process keeps in progress."""
LINGER_RST = struct.pack("ii", 1, 0)


# --------------------------------------------------------------------------
# Generator process: open and register a share of the clients


def _source_address(host: str, worker: int) -> str | None:
    """A distinct 127.0.0.x source per process (IPv4 loopback targets only)."""
    if not host.startswith("127."):
        return None
    return f"127.0.0.{2 + worker % 250}"


def open_clients(host: str, port: int, nicks: list[str], source: str | None,
                 deadline: float) -> tuple[list[socket.socket], int, str]:
    """Connect and register every nick; returns (sockets, failures, first error).

    At most ``IN_PROGRESS`` clients are between ``connect`` and their ``OK``
    at any moment, so the server's listen backlog never overflows.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    selector = selectors.DefaultSelector()
    done: list[socket.socket] = []
    failures = 0
    first_error = ""
    next_nick = 0
    in_progress = 0

    def fail(sock: socket.socket, why: str) -> None:
        nonlocal failures, first_error, in_progress
        failures += 1
        in_progress -= 1
        first_error = first_error or why
        selector.unregister(sock)
        sock.close()

    while (next_nick < len(nicks) or in_progress) and time.monotonic() < deadline:
        while in_progress < IN_PROGRESS and next_nick < len(nicks):
            nick = nicks[next_nick]
            next_nick += 1
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            if source:
                try:
                    sock.bind((source, 0))
                except OSError:  # e.g. macOS has only 127.0.0.1 configured
                    source = None
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                failures += 1
                first_error = first_error or os.strerror(code)
                sock.close()
                continue
            in_progress += 1
            selector.register(sock, selectors.EVENT_WRITE, [nick, b""])
        for key, mask in selector.select(0.5):
            sock, state = key.fileobj, key.data
            if mask & selectors.EVENT_WRITE:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sock, os.strerror(code))
                    continue
                try:
                    sock.send(f"REGISTRAR {state[0]}\n".encode())
                except OSError as exc:
                    fail(sock, str(exc))
                    continue
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            try:
                data = sock.recv(4096)
            except OSError as exc:
                fail(sock, str(exc))
                continue
            state[1] += data
            if not data or b"\n" in state[1]:
                if state[1] == b"OK\n":
                    selector.unregister(sock)
                    in_progress -= 1
                    done.append(sock)
                else:
                    fail(sock, f"{state[0]}: {state[1][:80]!r}")
    for key in list(selector.get_map().values()):
        failures += 1
        first_error = first_error or "tempo esgotado no registro"
        key.fileobj.close()
    failures += len(nicks) - next_nick
    selector.close()
    return done, failures, first_error


def worker_main(host: str, port: int, nicks: list[str], worker: int, conn) -> None:
    """Open this process's clients at the start signal, keep them until told to stop."""
    sockets: list[socket.socket] = []
    try:
        conn.send(("pronto", None))
        command, start_at = conn.recv()
        if command != "inicio":
            return
        time.sleep(max(0.0, start_at - time.monotonic()))
        sockets, failures, first_error = open_clients(
            host, port, nicks, _source_address(host, worker), start_at + 60.0)
        conn.send(("registrados", (len(sockets), failures, first_error, time.monotonic())))
        conn.poll(120)  # hold the clients until the parent has measured
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
        conn.close()


# --------------------------------------------------------------------------
# Probes, run by the parent once everyone is registered


def _read_until(sock: socket.socket, end: bytes, deadline: float) -> bytes:
    data = b""
    while not data.endswith(end):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("o servidor fechou a conexão")
        data += chunk
    return data


def probe_listing(host: str, port: int, expected: int) -> tuple[float, int]:
    """One LISTAR round trip: (milliseconds, users listed)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sock.sendall(b"LISTAR\n")
        data = _read_until(sock, b"\nEND\n", time.monotonic() + 10)
        elapsed = (time.perf_counter() - t0) * 1000
    header = data.split(b"\n", 1)[0]
    listed = data.count(b"\nUSUARIO ")
    if header != f"USUARIOS {listed}".encode() or listed < expected:
        raise RuntimeError(f"LISTAR trouxe {listed} usuários, esperados {expected}")
    return elapsed, listed


def probe_relay(host: str, port: int, prefix: str) -> float:
    """One ENVIAR -> MSG round trip between two fresh clients, in milliseconds."""
    a = socket.create_connection((host, port), timeout=10)
    b = socket.create_connection((host, port), timeout=10)
    with a, b:
        for sock, nick in ((a, f"{prefix}pa"), (b, f"{prefix}pb")):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(f"REGISTRAR {nick}\n".encode())
            if _read_until(sock, b"\n", time.monotonic() + 10) != b"OK\n":
                raise RuntimeError(f"registro de {nick} recusado")
        t0 = time.perf_counter()
        a.sendall(f"ENVIAR {prefix}pb sonda\n".encode())
        line = _read_until(b, b"\n", time.monotonic() + 10)
        elapsed = (time.perf_counter() - t0) * 1000
        if line != f"MSG {prefix}pa {prefix}pb sonda\n".encode():
            raise RuntimeError(f"MSG inesperada: {line[:80]!r}")
        if _read_until(a, b"\n", time.monotonic() + 10) != b"OK\n":
            raise RuntimeError("ENVIAR não foi confirmado com OK")
    return elapsed


# --------------------------------------------------------------------------
# One run


def run_once(server: comum.ServerUnderTest, target: str, clients: int, processes: int,
             run_number: int) -> dict:
    prefix = f"c{os.getpid() % 10000}x{run_number}"
    processes = max(1, min(processes, clients))
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    workers = []
    for k in range(processes):
        nicks = [f"{prefix}n{i}" for i in range(k, clients, processes)]
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main,
                                  args=(server.host, server.port, nicks, k, child_end),
                                  daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    result: dict = {"clientes": clients, "alvo": target}
    try:
        conns = [conn for _, conn in workers]
        comum.wait_until_ready(conns, 30, "preparar os clientes")
        result["carga_1min"] = comum.load_average()
        start_at = comum.start_together(conns)
        cpu0 = server.cpu
        registered = failures = 0
        finished = start_at
        first_error = ""
        for _, conn in workers:
            if not conn.poll(90):
                raise RuntimeError("um processo gerador não terminou de registrar")
            count, failed, error, at = conn.recv()[1]
            registered += count
            failures += failed
            finished = max(finished, at)
            first_error = first_error or error
        cpu1 = server.cpu
        seconds = finished - start_at
        result |= {"registrados": registered, "falhas": failures, "primeiro_erro": first_error,
                   "registro_s": round(seconds, 3)}
        if cpu0 is not None and cpu1 is not None:
            result["cpu_servidor_s"] = round(cpu1 - cpu0, 3)
        listings = [probe_listing(server.host, server.port, registered) for _ in range(3)]
        result["listar_ms"] = round(comum.median([ms for ms, _ in listings]), 3)
        result["listar_max_ms"] = round(max(ms for ms, _ in listings), 3)
        result["listar_usuarios"] = listings[0][1]
        result["relay_ms"] = round(probe_relay(server.host, server.port, prefix), 3)
        status = server.status()
        if status:
            result |= {"rss_mib": round(status["VmRSS"] / 1024, 1),
                       "pico_rss_mib": round(status["VmHWM"] / 1024, 1),
                       "threads": status["Threads"]}
        maps = memory_maps(server.pid)
        if maps:
            result["mapas"] = maps
    except (RuntimeError, OSError, EOFError) as exc:
        result["falha"] = str(exc)
    finally:
        for _, conn in workers:
            with contextlib.suppress(OSError):
                conn.send(("fim", None))
            conn.close()
        for process, _ in workers:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
    return result


def summarize(clients: int, target: str, runs: list[dict]) -> dict:
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"clientes": clients, "alvo": target,
                "falha": runs[0].get("falha", "?") if runs else "?"}
    summary: dict = {"clientes": clients, "alvo": target, "execucoes": len(good),
                     "falhas": sum(r["falhas"] for r in good)}
    for key in ("registro_s", "listar_ms", "listar_max_ms", "relay_ms", "rss_mib",
                "pico_rss_mib", "threads", "mapas", "cpu_servidor_s"):
        values = [r[key] for r in good if key in r]
        if values:
            summary[key] = round(comum.median(values), 3)
    return summary


def print_run(run: dict, number: int) -> None:
    if "falha" in run:
        print(f"  N={run['clientes']:<6} {run['alvo']:<7} execução {number}: FALHOU: "
              f"{run['falha']}", file=sys.stderr)
        return
    print(f"  N={run['clientes']:<6} {run['alvo']:<7} execução {number}: "
          f"registrados {run['registrados']} em {run['registro_s']:.2f} s, "
          f"LISTAR {run['listar_ms']:.1f} ms "
          f"(máx {run['listar_max_ms']:.1f}), "
          f"relay {run['relay_ms']:.2f} ms, RSS {run.get('rss_mib', '?')} MiB, "
          f"threads {run.get('threads', '?')}, mapas {run.get('mapas', '?')} "
          f"(carga {run['carga_1min']})", file=sys.stderr)


def print_table(summaries: list[dict], repetitions: int) -> None:
    comum.print_table_header(
        f"Conexões simultâneas registradas (medianas de {repetitions} execuções)",
        f"{'clientes':>8} {'alvo':>7} {'registro s':>10} {'LISTAR ms':>9} {'LISTAR máx':>10} "
        f"{'relay ms':>8} {'RSS MiB':>8} {'threads':>7} {'falhas':>6}")
    for s in summaries:
        if "falha" in s:
            print(f"{s['clientes']:>8} {s['alvo']:>7} falhou: {s['falha']}")
            continue
        print(f"{s['clientes']:>8} {s['alvo']:>7} {s['registro_s']:>10.2f} {s['listar_ms']:>9.1f} "
              f"{s['listar_max_ms']:>10.1f} {s['relay_ms']:>8.2f} "
              f"{s.get('rss_mib', float('nan')):>8.1f} "
              f"{s.get('threads', 0):>7.0f} {s['falhas']:>6}")


# --------------------------------------------------------------------------
# The ceilings of one process on this machine


MAPS_PER_THREAD = 3
"""Memory maps one more thread costs the server (its stack, a guard page, glibc's arena
share), measured on Linux: the server's thread count is bounded by vm.max_map_count / 3."""


def memory_maps(pid: int | None) -> int | None:
    """How many memory maps process ``pid`` has (lines of /proc/<pid>/maps)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def _read_number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as source:
            text = source.read().strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() else None


def _cgroup_file(controller: str, name: str) -> int | None:
    """A cgroup limit of this process (v2, or v1's ``controller`` hierarchy); None if none."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as source:
            entries = [line.strip().split(":", 2) for line in source if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, path in entries:
        if controllers == controller:  # v1
            value = _read_number(f"/sys/fs/cgroup/{controller}{path}/{name}")
            if value is not None:
                return value
    for hierarchy, _, path in entries:
        if hierarchy == "0":  # v2: "max" reads as None (no limit)
            return _read_number(f"/sys/fs/cgroup{path}/{name.split('.', 1)[0]}.max")
    return None


def ceilings() -> dict:
    """What bounds the number of connections (one thread each) of one server process here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0] if hasattr(resource, "RLIMIT_NPROC") \
        else None
    found = {
        "descritores_soft": None if soft == resource.RLIM_INFINITY else soft,
        "descritores_hard": None if hard == resource.RLIM_INFINITY else hard,
        "threads_max": _read_number("/proc/sys/kernel/threads-max"),
        "pid_max": _read_number("/proc/sys/kernel/pid_max"),
        "max_map_count": _read_number("/proc/sys/vm/max_map_count"),
        "nproc": None if nproc in (None, resource.RLIM_INFINITY) else nproc,
        "cgroup_pids_max": _cgroup_file("pids", "pids.max"),
        "somaxconn": _read_number("/proc/sys/net/core/somaxconn"),
    }
    bounds = {
        "descritores": found["descritores_hard"],
        "threads-max": found["threads_max"],
        "pid_max": found["pid_max"],
        "mapas": found["max_map_count"] // MAPS_PER_THREAD if found["max_map_count"] else None,
        "nproc": found["nproc"],
        "cgroup": found["cgroup_pids_max"],
    }
    known = {name: value for name, value in bounds.items() if value}
    if known:
        name = min(known, key=known.get)
        found["conexoes_max_estimadas"] = known[name]
        found["teto"] = name
    return found


def print_ceilings(found: dict) -> None:
    """The ceilings, each with what it bounds and how a teacher raises it (Linux)."""
    def show(value: object) -> str:
        return "sem limite" if value is None else f"{value:,}".replace(",", ".")

    rows = [
        ("arquivos abertos (RLIMIT_NOFILE)",
         f"{show(found['descritores_soft'])} / rígido {show(found['descritores_hard'])}",
         "um por conexão", "ulimit -n 65536 (rígido: /etc/security/limits.conf ou "
                           "LimitNOFILE= no systemd)"),
        ("kernel.threads-max", show(found["threads_max"]), "uma thread por conexão",
         "sysctl -w kernel.threads-max=N"),
        ("kernel.pid_max", show(found["pid_max"]), "cada thread gasta um pid (todos os "
                                                   "processos da máquina)",
         "sysctl -w kernel.pid_max=4194304"),
        ("vm.max_map_count", show(found["max_map_count"]),
         f"~{MAPS_PER_THREAD} mapas por thread: "
         f"{show(found['max_map_count'] // MAPS_PER_THREAD if found['max_map_count'] else None)}"
         " threads", "sysctl -w vm.max_map_count=262144"),
        ("threads por usuário (RLIMIT_NPROC)", show(found["nproc"]), "threads do usuário",
         "ulimit -u N"),
        ("cgroup pids.max", show(found["cgroup_pids_max"]), "threads do contêiner/serviço",
         "TasksMax= no systemd; --pids-limit no docker"),
        ("net.core.somaxconn", show(found["somaxconn"]), "fila de conexões ainda não aceitas",
         "sysctl -w net.core.somaxconn=N"),
    ]
    comum.print_table_header(
        "Tetos de um processo servidor nesta máquina (uma thread e um descritor por conexão)",
        f"{'limite':<36} {'valor':<28} {'o que limita':<44} como aumentar")
    for name, value, what, how in rows:
        print(f"{name:<36} {value:<28} {what:<44} {how}")
    if "conexoes_max_estimadas" in found:
        print(f"Teto estimado: ~{show(found['conexoes_max_estimadas'])} conexões por processo "
              f"(limitado por {found['teto']}); o servidor também precisa de "
              f"--max-clientes N (padrão 1000) e, para muitos clientes de um só endereço, "
              f"--max-por-ip.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/conexoes.py",
        description="Mede N clientes registrados ao mesmo tempo: tempo para conectar e "
                    "registrar todos, LISTAR, uma retransmissão, memória e threads do servidor.")
    parser.add_argument("--clientes", default="1000,5000,10000",
                        help="lista de N separada por vírgulas (padrão: 1000,5000,10000)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="execuções por N; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--processos", type=int, default=os.cpu_count() or 2,
                        help="processos geradores (padrão: número de CPUs)")
    parser.add_argument("--tetos", action="store_true",
                        help="só mostrar os tetos por processo desta máquina (descritores, "
                             "threads, mapas de memória) e como aumentá-los")
    comum.add_target_options(parser, generator=False, ngircd=False)
    comum.add_server_options(parser,
                             "PID do servidor de --attach, para medir memória e threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.clientes, args.repeticoes = "200", 1
    if args.tetos:
        print_ceilings(ceilings())
        return 0
    try:
        counts = [int(n) for n in args.clientes.split(",") if n.strip()]
        if args.attach:
            comum.loopback_target(args.attach)
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not counts or min(counts) < 1 or max(counts) > 50_000
            or not 1 <= args.repeticoes <= 20 or args.processos < 1):
        print("erro: parâmetros fora dos limites", file=sys.stderr)
        return 2
    limit = comum.raise_fd_limit(max(counts) + 1024)
    if limit < max(counts) + 64:
        print(f"aviso: o limite de arquivos abertos é {limit}; N={max(counts)} pode falhar "
              f"(aumente com ulimit -n)", file=sys.stderr)
    targets = comum.targets_from_args(args)

    print(f"bench/conexoes.py: N={counts}, {args.repeticoes} rodadas alternando "
          f"{', '.join(t.name for t in targets)}", file=sys.stderr)
    all_runs: list[dict] = []
    summaries = []
    run_number = 0
    for clients in counts:
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for repetition in range(args.repeticoes):
            for target in targets:
                run_number += 1
                try:
                    with comum.open_target(target, args, max_clients=clients + 1000) as server:
                        run = run_once(server, target.name, clients, args.processos, run_number)
                except RuntimeError as exc:
                    run = {"clientes": clients, "alvo": target.name, "falha": str(exc)}
                print_run(run, repetition + 1)
                runs[target.name].append(run)
                all_runs.append(run)
        summaries += [summarize(clients, t.name, runs[t.name]) for t in targets]

    print_table(summaries, args.repeticoes)
    found = ceilings()
    print_ceilings(found)
    comum.print_json_line(
        "conexoes",
        {"clientes": counts, "repeticoes": args.repeticoes, "processos": args.processos,
         "alvos": [t.name for t in targets], "attach": args.attach},
        {"alvos": summaries, "tetos": found}, all_runs)
    broken = any("falha" in r or r["falhas"] for r in all_runs)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
