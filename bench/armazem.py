"""Message store benchmark: what ``armazem.Store`` costs the server's hot paths.

Measured, each on real SQLite files in a temporary directory:

* appends: commits of 1, 32 and 256 messages, with fsync off (the default,
  ``synchronous=NORMAL``) and on (``--fsync``, ``synchronous=FULL``):
  messages per second and the latency of one ``append_messages`` call;
* history: ``history_room`` and ``history_pair`` of 500 rows, newest and
  deep in the past (``before_id``), with 1,000,000 messages stored;
* ``pending_count`` and ``pending_messages`` for an account with 10,000
  messages waiting;
* ``hash_password`` (scrypt), and opening the big file (validation included).

    python3 bench/armazem.py                 # the full configuration (about a minute)
    python3 bench/armazem.py --rapido        # a few seconds, for CI
    python3 bench/armazem.py --mensagens 200000 --dir /mnt/ssd

Standard library only. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import comum

# This script is itself called armazem.py: the repository's module must come first.
sys.path.insert(0, str(comum.REPO))

import armazem
from armazem import NewMessage, Store

TEXT = "x" * 64
ROOMS = 50
USERS = 200
BULK_BATCH = 10_000
HISTORY_ROWS = 500


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _timed(call: Callable[[], object], runs: int) -> list[float]:
    """Run ``call`` ``runs`` times; the duration of each, in milliseconds."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def _row(name: str, durations: list[float], messages_per_call: int = 0) -> dict:
    figures = {
        "operacao": name,
        "n": len(durations),
        "p50_ms": round(statistics.median(durations), 4),
        "p99_ms": round(_percentile(durations, 0.99), 4),
    }
    if messages_per_call:
        figures["msg_s"] = round(messages_per_call * len(durations) / (sum(durations) / 1000))
    return figures


def bench_appends(directory: Path, batch: int, fsync: bool, commits: int) -> dict:
    """``commits`` appends of ``batch`` direct messages with a receipt (the costliest kind)."""
    path = directory / f"append-{batch}-{int(fsync)}.sqlite3"
    messages = [NewMessage("ana", "Ana", "bia", "Bia", TEXT, False, True)] * batch
    with Store.open(str(path), fsync=fsync) as store:
        store.append_messages(messages)  # warm up: file grown, statements prepared
        durations = _timed(lambda: store.append_messages(messages), commits)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return _row(f"append lote={batch} fsync={'sim' if fsync else 'não'}", durations, batch)


def _bulk_messages(start: int, count: int) -> list[NewMessage]:
    """3 room messages for every 2 direct ones, over ROOMS rooms and USERS users.

    Direct messages go back and forth between two users; one pair in ten
    is u0 and u1, the conversation whose history is measured.
    """
    messages = []
    for n in range(start, start + count):
        if n % 5 < 3:
            sender, name = f"u{n % USERS}", f"#sala{n % ROOMS}"
            messages.append(NewMessage(sender, sender, name, name, TEXT, True, False))
            continue
        exchange = n // 5
        first = 0 if exchange % 10 == 0 else exchange % USERS
        pair = (f"u{first}", f"u{(first + 1) % USERS}")
        sender, target = pair if n % 5 == 3 else pair[::-1]
        messages.append(NewMessage(sender, sender, target, target, TEXT, False, False))
    return messages


def build_big_store(path: Path, total: int) -> float:
    """Fill ``path`` with ``total`` messages through ``append_messages``; seconds taken."""
    started = time.perf_counter()
    with Store.open(str(path)) as store:
        for start in range(0, total, BULK_BATCH):
            store.append_messages(_bulk_messages(start, min(BULK_BATCH, total - start)))
    return time.perf_counter() - started


def bench_history(path: Path, runs: int) -> list[dict]:
    with Store.open(str(path)) as store:
        middle = store.newest_id() // 2
        room_rows = len(store.history_room("#sala0", limit=HISTORY_ROWS))
        pair_rows = len(store.history_pair("u0", "u1", limit=HISTORY_ROWS))
        if min(room_rows, pair_rows) < HISTORY_ROWS:
            print(f"aviso: histórico com menos de {HISTORY_ROWS} linhas "
                  f"(sala {room_rows}, par {pair_rows}); use mais --mensagens", file=sys.stderr)
        return [
            _row("history_room 500 recentes",
                 _timed(lambda: store.history_room("#sala0", limit=HISTORY_ROWS), runs)),
            _row("history_room 500 antes do meio",
                 _timed(lambda: store.history_room("#sala0", middle, HISTORY_ROWS), runs)),
            _row("history_pair 500 recentes",
                 _timed(lambda: store.history_pair("u0", "u1", limit=HISTORY_ROWS), runs)),
            _row("history_pair 500 antes do meio",
                 _timed(lambda: store.history_pair("u0", "u1", middle, HISTORY_ROWS), runs)),
            _row("newest_id", _timed(store.newest_id, runs)),
        ]


def bench_pending(path: Path, pending: int, runs: int) -> list[dict]:
    with Store.open(str(path)) as store:
        store.create_account("alvo", "alvo", "registro")
        for start in range(0, pending, BULK_BATCH):
            count = min(BULK_BATCH, pending - start)
            store.append_messages([NewMessage("u1", "u1", "alvo", "alvo", TEXT, False, True)]
                                  * count)
        assert store.pending_count("alvo") == pending
        return [
            _row(f"pending_count ({pending} pendentes)",
                 _timed(lambda: store.pending_count("alvo"), runs)),
            _row("pending_messages 200 primeiras",
                 _timed(lambda: store.pending_messages("alvo", limit=200), runs)),
        ]


def bench_open(path: Path, runs: int) -> dict:
    return _row("Store.open + close (arquivo grande)",
                _timed(lambda: Store.open(str(path)).close(), runs))


def bench_hash(runs: int) -> dict:
    return _row(f"hash_password (scrypt N={armazem.SCRYPT_N} r={armazem.SCRYPT_R} "
                f"p={armazem.SCRYPT_P})", _timed(lambda: armazem.hash_password("senha-123"), runs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/armazem.py",
        description="Mede o armazenamento de mensagens (SQLite) usado pelo servidor.")
    parser.add_argument("--mensagens", type=int, default=1_000_000,
                        help="mensagens no arquivo grande do teste de histórico "
                             "(padrão: 1000000)")
    parser.add_argument("--pendentes", type=int, default=10_000,
                        help="mensagens pendentes para uma conta (padrão: 10000)")
    parser.add_argument("--commits", type=int, default=2000,
                        help="gravações medidas por configuração sem fsync (padrão: 2000; "
                             "com fsync, um décimo)")
    parser.add_argument("--dir", default=None,
                        help="diretório dos arquivos temporários (padrão: o do sistema)")
    parser.add_argument("--rapido", action="store_true",
                        help="configuração mínima, de poucos segundos (para a CI)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.mensagens, args.pendentes, args.commits = 30_000, 1_000, 100
    runs = 20 if args.rapido else 100
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-armazem-", dir=args.dir) as temporary:
        directory = Path(temporary)
        for fsync in (False, True):
            commits = args.commits if not fsync else max(10, args.commits // 10)
            for batch in (1, 32, 256):
                rows.append(bench_appends(directory, batch, fsync, commits))
                print(f"  {rows[-1]}", file=sys.stderr)
        big = directory / "grande.sqlite3"
        build_seconds = build_big_store(big, args.mensagens)
        size_mb = round(big.stat().st_size / 1e6, 1)
        print(f"  arquivo grande: {args.mensagens} mensagens em {build_seconds:.1f} s, "
              f"{size_mb} MB", file=sys.stderr)
        rows += bench_history(big, runs)
        rows.append(bench_open(big, 5))
        rows += bench_pending(big, args.pendentes, runs)
    rows.append(bench_hash(3 if args.rapido else 10))

    comum.print_table_header(
        f"Armazenamento: {args.mensagens} mensagens no arquivo grande "
        f"(gerado em {build_seconds:.1f} s, {size_mb} MB)",
        f"{'operação':<44} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'msg/s':>9}")
    for row in rows:
        print(f"{row['operacao']:<44} {row['n']:>5} {row['p50_ms']:>9.3f} "
              f"{row['p99_ms']:>9.3f} {row.get('msg_s', ''):>9}")
    parameters = {"mensagens": args.mensagens, "pendentes": args.pendentes,
                  "commits": args.commits, "rapido": args.rapido,
                  "sqlite": armazem.sqlite3.sqlite_version, "geracao_s": round(build_seconds, 2),
                  "tamanho_mb": size_mb, "dir": args.dir or tempfile.gettempdir(),
                  "carga": comum.load_average()}
    comum.print_json_line("armazem", parameters, rows, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
