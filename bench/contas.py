"""Accounts benchmark: what logging in with a password costs, and that hashing is bounded.

Our server keeps only a salted scrypt hash of each password (about 16 MiB
of memory and tens of milliseconds of CPU each, on purpose). Measured, on
a server with its store on disk (accounts need it):

* **creation**: N accounts created one after another (``REGISTRAR <apelido>
  <senha>`` for a new nickname creates its account, then ``SAIR``);
* **logins in a row**: N logins one after another on fresh connections
  (connect, ``REGISTRAR <apelido> <senha>`` -> ``OK``, ``SAIR``): the total,
  and per login the ``REGISTRAR`` round trip and the whole cycle;
* **logins at once**: K connections send their ``REGISTRAR`` in the same
  instant. The server hashes at most 2 passwords at a time (its default),
  so the K-th ``OK`` comes about K/2 hash times after the first and the
  server's peak memory grows by about two hashes, not K; meanwhile a
  connection already registered keeps getting its ``PING`` answered (the
  hashing runs outside the turn that serves everyone else).

About memory: a scrypt hash needs a 16 MiB buffer. With glibc, a buffer
that size freed by one thread raises malloc's mmap threshold, so the next
ones come from each connection thread's own arena and stay resident there
after ``free``: the server's peak memory then grows with the number of
arenas (up to 8 per core), not with the 2 hashes that run at once. The
table shows the peak before and after the burst, so this is visible.

The cost of one hash in this process (``armazem.hash_password``) is shown
beside, for reference. The per-address limits on accounts and logins are
turned off (``--max-contas-hora 0`` and the others), since every client
here comes from one address; the hashing bound is not an option and stays.

    python3 bench/contas.py                     # 200 in a row, 20 at once, 3 runs
    python3 bench/contas.py --contas 500 --simultaneos 50
    python3 bench/contas.py --rapido            # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if any creation or login failed.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import sys
import time

import comum

sys.path.insert(0, str(comum.REPO))
import armazem  # the repository's store: only its password hash is used here

TIMEOUT = 30.0
PING_EVERY = 0.02
"""Seconds between the watcher's PINGs during the logins at once."""
OPTIONS = [*comum.UNLIMITED_OPTIONS, "--max-contas-hora", "0", "--max-clientes", "2000",
           "--log-level", "WARNING"]


class LoginFailed(RuntimeError):
    pass


def _read_line(sock: socket.socket, buffer: bytearray, deadline: float) -> bytes:
    while b"\n" not in buffer:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise LoginFailed("o servidor fechou a conexão")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def login_cycle(address: tuple[str, int], nick: str, password: str) -> tuple[float, float]:
    """Connect, register with the password, SAIR: (REGISTRAR round trip, whole cycle), seconds."""
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        sent = time.perf_counter()
        sock.sendall(f"REGISTRAR {nick} {password}\n".encode())
        reply = _read_line(sock, buffer, deadline)
        registered = time.perf_counter() - sent
        if reply != b"OK":
            raise LoginFailed(f"{nick}: {reply[:100].decode(errors='replace')}")
        sock.sendall(b"SAIR\n")
        if _read_line(sock, buffer, deadline) != b"OK":
            raise LoginFailed(f"{nick}: SAIR sem OK")
    return registered, time.perf_counter() - started


def in_a_row(address: tuple[str, int], nicks: list[str]) -> dict:
    """One login after another for every nick; totals and per-login figures in ms."""
    registers, cycles = [], []
    started = time.perf_counter()
    for nick in nicks:
        registered, cycle = login_cycle(address, nick, password_of(nick))
        registers.append(registered * 1000)
        cycles.append(cycle * 1000)
    total = time.perf_counter() - started
    registers.sort()
    return {"n": len(nicks), "total_s": round(total, 3),
            "por_login_ms": round(total * 1000 / len(nicks), 2),
            "registrar_p50_ms": round(statistics.median(registers), 2),
            "registrar_p99_ms": round(comum.percentile(registers, 0.99), 2),
            "ciclo_p50_ms": round(statistics.median(cycles), 2)}


def password_of(nick: str) -> str:
    return f"senha-de-{nick}"


def at_once(server: comum.ServerUnderTest, nicks: list[str]) -> dict:
    """Every nick's REGISTRAR sent in one instant; when each OK came, and who else waited."""
    address = (server.host, server.port)
    selector = selectors.DefaultSelector()
    socks = []
    watcher = socket.create_connection(address, timeout=TIMEOUT)
    try:
        watcher.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        watcher.sendall(b"REGISTRAR vigia\n")
        if _read_line(watcher, buffer, time.monotonic() + TIMEOUT) != b"OK":
            raise LoginFailed("vigia: registro recusado")
        for _ in nicks:
            sock = socket.create_connection(address, timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        before = server.status()
        cpu0 = server.cpu
        started = time.perf_counter()
        for sock, nick in zip(socks, nicks, strict=True):
            sock.sendall(f"REGISTRAR {nick} {password_of(nick)}\n".encode())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, [nick, b""])
        done, pings = _collect(selector, watcher, started, len(nicks))
        seconds = time.perf_counter() - started
        cpu1 = server.cpu
        after = server.status()
    finally:
        selector.close()
        for sock in [*socks, watcher]:
            sock.close()
    figures = {"n": len(nicks), "total_s": round(seconds, 3),
               "primeiro_ok_ms": round(min(done) * 1000, 1),
               "ultimo_ok_ms": round(max(done) * 1000, 1),
               "ok_p50_ms": round(statistics.median(done) * 1000, 1),
               "ping_p50_ms": round(statistics.median(pings) * 1000, 2) if pings else None,
               "ping_max_ms": round(max(pings) * 1000, 2) if pings else None,
               "pings": len(pings)}
    if cpu0 is not None and cpu1 is not None:
        figures["cpu_servidor_pct"] = round(100 * (cpu1 - cpu0) / seconds, 1)
    if before and after:
        figures["rss_antes_mib"] = round(before["VmRSS"] / 1024, 1)
        figures["pico_antes_mib"] = round(before["VmHWM"] / 1024, 1)
        figures["pico_depois_mib"] = round(after["VmHWM"] / 1024, 1)
        figures["rss_depois_mib"] = round(after["VmRSS"] / 1024, 1)
    return figures


def _collect(selector: selectors.BaseSelector, watcher: socket.socket, started: float,
             expected: int) -> tuple[list[float], list[float]]:
    """Read every OK (seconds after ``started``) while the watcher PINGs every 20 ms."""
    done: list[float] = []
    pings: list[float] = []
    watcher.setblocking(False)
    selector.register(watcher, selectors.EVENT_READ, None)
    ping_sent: float | None = None
    next_ping = time.perf_counter()
    watcher_buffer = b""
    deadline = time.monotonic() + TIMEOUT * 2
    while len(done) < expected:
        if time.monotonic() > deadline:
            raise LoginFailed(f"só {len(done)} de {expected} logins terminaram a tempo")
        now = time.perf_counter()
        if ping_sent is None and now >= next_ping:
            watcher.send(b"PING vivo\n")
            ping_sent = now
        for key, _ in selector.select(0.005):
            sock, state = key.fileobj, key.data
            data = sock.recv(4096)
            if not data:
                raise LoginFailed("o servidor fechou uma conexão")
            if state is None:  # the watcher
                watcher_buffer += data
                if b"PONG vivo\n" in watcher_buffer and ping_sent is not None:
                    watcher_buffer = b""
                    pings.append(time.perf_counter() - ping_sent)
                    ping_sent = None
                    next_ping = time.perf_counter() + PING_EVERY
                continue
            state[1] += data
            if b"\n" in state[1]:
                line = state[1].split(b"\n", 1)[0]
                if line != b"OK":
                    raise LoginFailed(f"{state[0]}: {line[:100].decode(errors='replace')}")
                done.append(time.perf_counter() - started)
                selector.unregister(sock)
    return done, pings


def hash_cost(samples: int) -> float:
    """Milliseconds one ``armazem.hash_password`` takes in this process (median)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        armazem.hash_password("senha-de-medida")
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def run_once(args: argparse.Namespace, run_number: int) -> dict:
    prefix = f"k{run_number}"
    nicks = [f"{prefix}u{n}" for n in range(args.contas)]
    burst = [f"{prefix}u{n}" for n in range(args.simultaneos)]
    run: dict = {"carga_1min": comum.load_average()}
    try:
        with comum.ServerUnderTest(None, args.servidor, options=OPTIONS,
                                   store="disco") as server:
            address = (server.host, server.port)
            run["criacao"] = in_a_row(address, nicks)
            run["em_sequencia"] = in_a_row(address, nicks)
            run["simultaneos"] = at_once(server, burst)
    except (LoginFailed, RuntimeError, OSError) as exc:
        run["falha"] = str(exc)
    return run


def print_run(run: dict, number: int) -> None:
    if "falha" in run:
        print(f"  execução {number}: FALHOU: {run['falha']}", file=sys.stderr)
        return
    row, burst = run["em_sequencia"], run["simultaneos"]
    print(f"  execução {number}: {row['n']} contas criadas em {run['criacao']['total_s']:.2f} s; "
          f"{row['n']} logins em sequência em {row['total_s']:.2f} s "
          f"({row['por_login_ms']:.1f} ms cada, REGISTRAR p50 {row['registrar_p50_ms']:.1f} ms); "
          f"{burst['n']} de uma vez: último OK em {burst['ultimo_ok_ms']:.0f} ms, "
          f"PING máx {burst['ping_max_ms']} ms, CPU {burst.get('cpu_servidor_pct')}%, "
          f"pico de memória {burst.get('pico_antes_mib')} -> {burst.get('pico_depois_mib')} MiB "
          f"(carga {run['carga_1min']})", file=sys.stderr)


def summarize(runs: list[dict]) -> dict:
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"falha": runs[0].get("falha", "?") if runs else "?"}
    summary: dict = {"execucoes": len(good)}
    for part in ("criacao", "em_sequencia", "simultaneos"):
        keys = [k for k, v in good[0][part].items() if isinstance(v, (int, float))]
        summary[part] = {k: round(comum.median([r[part][k] for r in good
                                                if r[part].get(k) is not None]), 3)
                         for k in keys}
    return summary


def print_table(summary: dict, hash_ms: float) -> None:
    if "falha" in summary:
        print(f"\nfalhou: {summary['falha']}")
        return
    rows = [("criação de contas em sequência", summary["criacao"]),
            ("logins em sequência", summary["em_sequencia"])]
    comum.print_table_header(
        f"Contas com senha (medianas de {summary['execucoes']} execuções; um hash scrypt "
        f"neste processo: {hash_ms:.1f} ms)",
        f"{'o quê':<32} {'n':>5} {'total s':>8} {'por login ms':>12} {'REGISTRAR p50':>13} "
        f"{'REGISTRAR p99':>13}")
    for name, row in rows:
        print(f"{name:<32} {row['n']:>5.0f} {row['total_s']:>8.2f} {row['por_login_ms']:>12.1f} "
              f"{row['registrar_p50_ms']:>13.1f} {row['registrar_p99_ms']:>13.1f}")
    burst = summary["simultaneos"]
    comum.print_table_header(
        "Logins de uma vez (o servidor calcula no máximo 2 hashes ao mesmo tempo)",
        f"{'n':>5} {'1º OK ms':>9} {'mediana ms':>10} {'último OK ms':>12} {'CPU serv.':>9} "
        f"{'pico antes MiB':>14} {'pico depois MiB':>15} {'RSS depois MiB':>14} "
        f"{'PING p50 ms':>11} {'PING máx ms':>11}")
    print(f"{burst['n']:>5.0f} {burst['primeiro_ok_ms']:>9.0f} {burst['ok_p50_ms']:>10.0f} "
          f"{burst['ultimo_ok_ms']:>12.0f} {burst.get('cpu_servidor_pct', float('nan')):>8.0f}% "
          f"{burst.get('pico_antes_mib', float('nan')):>14.1f} "
          f"{burst.get('pico_depois_mib', float('nan')):>15.1f} "
          f"{burst.get('rss_depois_mib', float('nan')):>14.1f} "
          f"{burst.get('ping_p50_ms') or float('nan'):>11.2f} "
          f"{burst.get('ping_max_ms') or float('nan'):>11.2f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/contas.py",
        description="Mede o custo de entrar com senha: N contas criadas e N logins em "
                    "sequência, e K logins de uma vez (o servidor limita os hashes "
                    "simultâneos).")
    parser.add_argument("--contas", type=int, default=200,
                        help="contas criadas e logins em sequência (padrão: 200)")
    parser.add_argument("--simultaneos", type=int, default=20,
                        help="logins enviados no mesmo instante (padrão: 20)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="execuções; a tabela mostra a mediana (padrão: 3)")
    comum.add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.contas, args.simultaneos, args.repeticoes = 10, 6, 1
    if args.attach:
        print("erro: contas.py inicia o seu próprio servidor (precisa de --dados e de "
              "--max-contas-hora 0); --attach não se aplica", file=sys.stderr)
        return 2
    if (not 1 <= args.contas <= 10_000 or not 1 <= args.simultaneos <= min(args.contas, 500)
            or not 1 <= args.repeticoes <= 20):
        print("erro: parâmetros fora dos limites (--simultaneos não pode passar de --contas)",
              file=sys.stderr)
        return 2
    print(f"bench/contas.py: {args.contas} contas e logins em sequência, {args.simultaneos} "
          f"de uma vez, {args.repeticoes} execuções", file=sys.stderr)
    runs = []
    for number in range(1, args.repeticoes + 1):
        run = run_once(args, number)
        print_run(run, number)
        runs.append(run)
    hash_ms = hash_cost(3 if args.rapido else 10)
    summary = summarize(runs)
    print_table(summary, hash_ms)
    comum.print_json_line(
        "contas",
        {"contas": args.contas, "simultaneos": args.simultaneos,
         "repeticoes": args.repeticoes, "hash_ms": hash_ms,
         "scrypt": {"n": armazem.SCRYPT_N, "r": armazem.SCRYPT_R, "p": armazem.SCRYPT_P}},
        summary, runs)
    return 1 if any("falha" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
