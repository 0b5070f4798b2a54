"""History benchmark: HISTORICO of 500 lines from a store holding a million messages.

The data file is built first, straight through ``armazem.Store`` (no
server, no network: about ten seconds for a million messages), with the
same mix as ``bench/armazem.py``: 3 room messages for every 2 direct ones,
over 50 rooms and 200 users; the account ``u0`` exists from the start, so
its conversation with ``u1`` is its own history. Then our server starts on
that file, a client logs in as ``u0`` and asks, again and again:

* ``HISTORICO #sala0 0 500`` (a room's newest 500: ``0`` means "before
  nothing", so that the limit can follow) and ``HISTORICO #sala0 <id> 500``
  (500 older than the middle of the file);
* ``HISTORICO u1 0 500`` and ``HISTORICO u1 <id> 500`` (a conversation).

Measured over the wire, from the request to the ``END``: the total, the
first byte of the reply, and beside them a ``PING`` round trip (what any
request costs). The server-side time is about total minus the PING; the
store's share is measured apart, the same queries through ``armazem.Store``
in this process on the same file once the server has stopped.

    python3 bench/historico.py                  # 1,000,000 messages, 3 servers x 30 requests
    python3 bench/historico.py --mensagens 200000 --pedidos 100
    python3 bench/historico.py --rapido         # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if a reply did not have the lines asked for.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import comum

sys.path.insert(0, str(comum.REPO))
import armazem  # the repository's store (bench/armazem.py is loaded below by its path)

TIMEOUT = 30.0
PAGE = 500
ROOM = "#sala0"
READER, OTHER = "u0", "u1"
PASSWORD = "senha-do-historico"
OPTIONS = [*comum.UNLIMITED_OPTIONS, "--max-clientes", "100", "--log-level", "WARNING"]


def _bench_store_module():
    """``bench/armazem.py`` (whose name the repository's module takes), for its message mix."""
    spec = importlib.util.spec_from_file_location(
        "bench_armazem", Path(__file__).resolve().with_name("armazem.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_file(path: Path, total: int) -> tuple[float, int]:
    """Fill ``path`` with ``total`` messages and the reader's account; (seconds, middle id)."""
    mix = _bench_store_module()
    started = time.perf_counter()
    with armazem.Store.open(str(path)) as store:
        store.create_account(READER, READER, armazem.hash_password(PASSWORD))
        for start in range(0, total, mix.BULK_BATCH):
            store.append_messages(mix._bulk_messages(start, min(mix.BULK_BATCH, total - start)))
        middle = store.newest_id() // 2
    return time.perf_counter() - started, middle


class Client:
    """A blocking connection with a line buffer, logged in as the reader."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sock.sendall(f"REGISTRAR {READER} {PASSWORD}\nPING pronto\n".encode())
        self.read_until(b"PONG pronto\n")  # past the OK and any messages waiting for u0

    def read_until(self, end: bytes) -> tuple[bytes, float]:
        """Bytes up to and including ``end``, and when the first of them arrived."""
        first = 0.0
        while end not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("o servidor fechou a conexão")
            if not first:
                first = time.perf_counter()
            self.buffer += chunk
        cut = self.buffer.index(end) + len(end)
        data, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return data, first or time.perf_counter()

    def close(self) -> None:
        self.sock.close()


def time_request(client: Client, request: str, end: bytes, expected_lines: int | None
                 ) -> tuple[float, float]:
    """One request's (total, first byte), in ms; checks the reply's line count."""
    started = time.perf_counter()
    client.sock.sendall(request.encode() + b"\n")
    data, first = client.read_until(end)
    total = (time.perf_counter() - started) * 1000
    if expected_lines is not None:
        header = data.split(b"\n", 1)[0]
        items = data.count(b"\nITEM ")
        if header != f"HISTORICO {expected_lines}".encode() or items != expected_lines:
            raise RuntimeError(f"{request}: {header[:60]!r} e {items} linhas ITEM, esperadas "
                               f"{expected_lines}")
    return total, (first - started) * 1000


def queries(middle: int) -> list[tuple[str, str, tuple]]:
    """(name, wire request, store call) for each measured history page."""
    return [
        ("sala, 500 mais recentes", f"HISTORICO {ROOM} 0 {PAGE}",
         ("history_room", ROOM, None, PAGE)),
        ("sala, 500 antes do meio", f"HISTORICO {ROOM} {middle} {PAGE}",
         ("history_room", ROOM, middle, PAGE)),
        ("conversa, 500 mais recentes", f"HISTORICO {OTHER} 0 {PAGE}",
         ("history_pair", READER, OTHER, None, PAGE)),
        ("conversa, 500 antes do meio", f"HISTORICO {OTHER} {middle} {PAGE}",
         ("history_pair", READER, OTHER, middle, PAGE)),
    ]


def over_the_wire(address: tuple[str, int], middle: int, requests: int) -> dict:
    client = Client(address)
    try:
        figures: dict = {}
        pings = [time_request(client, "PING x", b"PONG x\n", None)[0] for _ in range(requests)]
        figures["PING"] = _summary(pings)
        for name, request, _ in queries(middle):
            totals, firsts = [], []
            for _ in range(requests):
                total, first = time_request(client, request, b"\nEND\n", PAGE)
                totals.append(total)
                firsts.append(first)
            figures[name] = _summary(totals) | {"primeiro_byte_p50_ms":
                                                round(statistics.median(firsts), 3)}
    finally:
        client.close()
    return figures


def in_the_store(path: Path, middle: int, requests: int) -> dict:
    """The same pages through ``armazem.Store`` in this process: the SQL's share."""
    figures = {}
    with armazem.Store.open(str(path)) as store:
        for name, _, (method, *arguments) in queries(middle):
            call = getattr(store, method)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                rows = call(*arguments)
                times.append((time.perf_counter() - started) * 1000)
            if len(rows) != PAGE:
                raise RuntimeError(f"{name}: o armazenamento devolveu {len(rows)} linhas")
            figures[name] = _summary(times)
    return figures


def _summary(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(comum.percentile(ordered, 0.99), 3),
            "max_ms": round(ordered[-1], 3)}


def summarize(runs: list[dict]) -> dict:
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"falha": runs[0].get("falha", "?") if runs else "?"}
    summary: dict = {}
    for name in good[0]["rede"]:
        summary[name] = {key: round(comum.median([r["rede"][name][key] for r in good]), 3)
                         for key in good[0]["rede"][name]}
    return summary


def print_table(summary: dict, store: dict, args: argparse.Namespace) -> None:
    if "falha" in summary:
        print(f"\nfalhou: {summary['falha']}")
        return
    ping = summary["PING"]["p50_ms"]
    comum.print_table_header(
        f"HISTORICO de {PAGE} linhas com {args.mensagens:,} mensagens guardadas "
        f"(medianas de {args.repeticoes} servidores × {args.pedidos} pedidos)".replace(",", "."),
        f"{'página':<28} {'rede p50':>8} {'rede p99':>8} {'1º byte':>8} {'servidor':>8} "
        f"{'SQL p50':>8} {'SQL p99':>8}")
    print(f"{'PING (ida e volta)':<28} {ping:>8.2f} {summary['PING']['p99_ms']:>8.2f}")
    for name, figures in summary.items():
        if name == "PING":
            continue
        sql = store.get(name, {})
        print(f"{name:<28} {figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} "
              f"{figures['primeiro_byte_p50_ms']:>8.2f} {figures['p50_ms'] - ping:>8.2f} "
              f"{sql.get('p50_ms', float('nan')):>8.2f} {sql.get('p99_ms', float('nan')):>8.2f}")
    print("(ms; 'servidor' = rede p50 - PING p50; 'SQL' = a mesma consulta no armazem.Store, "
          "neste processo)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/historico.py",
        description="Mede HISTORICO de 500 linhas pela rede com um milhão de mensagens "
                    "guardadas no arquivo de dados do servidor.")
    parser.add_argument("--mensagens", type=int, default=1_000_000,
                        help="mensagens no arquivo de dados (padrão: 1000000)")
    parser.add_argument("--pedidos", type=int, default=30,
                        help="pedidos de cada página por servidor (padrão: 30)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="servidores iniciados um após o outro no mesmo arquivo; a "
                             "tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--dir", default=None,
                        help="diretório do arquivo temporário (padrão: o do sistema)")
    comum.add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.mensagens, args.pedidos, args.repeticoes = 100_000, 5, 1
    if args.attach:
        print("erro: historico.py inicia o seu próprio servidor sobre um arquivo que ele "
              "mesmo preenche; --attach não se aplica", file=sys.stderr)
        return 2
    if (not 100_000 <= args.mensagens <= 20_000_000 or not 1 <= args.pedidos <= 10_000
            or not 1 <= args.repeticoes <= 20):
        print("erro: parâmetros fora dos limites (pelo menos 100000 mensagens: a página "
              "antes do meio precisa de 500 mensagens de #sala0)", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-historico-", dir=args.dir) as temporary:
        path = Path(temporary) / "chat.sqlite3"
        build_seconds, middle = build_file(path, args.mensagens)
        size_mb = round(path.stat().st_size / 1e6, 1)
        print(f"bench/historico.py: {args.mensagens} mensagens gravadas em {build_seconds:.1f} s "
              f"({size_mb} MB); {args.repeticoes} servidores × {args.pedidos} pedidos",
              file=sys.stderr)
        for number in range(1, args.repeticoes + 1):
            run: dict = {"carga_1min": comum.load_average()}
            try:
                with comum.ServerUnderTest(None, args.servidor, store=None,
                                           options=["--dados", str(path), *OPTIONS]) as server:
                    run["rede"] = over_the_wire((server.host, server.port), middle, args.pedidos)
            except (RuntimeError, OSError) as exc:
                run["falha"] = str(exc)
            runs.append(run)
            _print_run(run, number)
        try:
            store = in_the_store(path, middle, args.pedidos)
        except RuntimeError as exc:
            store = {}
            runs.append({"falha": str(exc)})
    summary = summarize(runs)
    print_table(summary, store, args)
    comum.print_json_line(
        "historico",
        {"mensagens": args.mensagens, "pedidos": args.pedidos, "repeticoes": args.repeticoes,
         "pagina": PAGE, "geracao_s": round(build_seconds, 2), "tamanho_mb": size_mb,
         "sqlite": armazem.sqlite3.sqlite_version},
        {"rede": summary, "armazenamento": store}, runs)
    return 1 if any("falha" in r for r in runs) else 0


def _print_run(run: dict, number: int) -> None:
    if "falha" in run:
        print(f"  servidor {number}: FALHOU: {run['falha']}", file=sys.stderr)
        return
    pages = ", ".join(f"{name} p50 {f['p50_ms']:.2f} ms" for name, f in run["rede"].items())
    print(f"  servidor {number}: {pages} (carga {run['carga_1min']})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
