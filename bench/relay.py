"""Relay benchmark: P sender->receiver pairs, at most W messages in flight per sender.

Each sender keeps up to W ``ENVIAR`` awaiting their ``OK`` (refilling the
window as OKs come back), each 64-byte payload carries its send time and a
sequence number (``T<ns>Q<seq>X`` padded with ``x``), and each receiver
checks who sent it, the order, and how long it took (one-way, on the
system-wide monotonic clock, so generator processes can be compared).

The generator must not be what limits the figure: the pairs are spread over
several processes (``--processos``), each one a single-threaded
``selectors`` loop over non-blocking sockets, and their CPU use is printed
next to the server's (from ``/proc/<pid>/stat``).

    python3 bench/relay.py                      # P = 1, 10, 100, 500; 3 runs each
    python3 bench/relay.py --pares 100 --duracao 10
    python3 bench/relay.py --attach 127.0.0.1:1998 --pares 10
    python3 bench/relay.py --rapido             # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if any message was lost, out of order, misrouted or refused.
"""

from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import re
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

import comum

MSG_RE = re.compile(rb"MSG (\S+) \S+ T(\d+)Q(\d+)X")
RECV_SIZE = 256 * 1024
IDLE_LIMIT = 5.0
"""Seconds without progress after which a run gives up and counts the rest as lost."""


@dataclass
class Settings:
    host: str
    port: int
    window: int
    size: int
    duration: float
    prefix: str


@dataclass
class Pair:
    """One sender and its receiver, both served by the same generator process."""

    index: int
    sender: socket.socket
    receiver: socket.socket
    receiver_nick: str
    sender_nick: bytes
    sent: int = 0
    acked: int = 0
    received: int = 0
    last_seq: int = -1
    unsent: bytes = b""
    ack_partial: bytes = b""
    msg_partial: bytes = b""


@dataclass
class WorkerResult:
    sent: int = 0
    acked: int = 0
    received: int = 0
    out_of_order: int = 0
    misrouted: int = 0
    errors: int = 0
    bad_lines: int = 0
    first_error: str = ""
    finished_at: float = 0.0
    cpu: float = 0.0
    idle_out: bool = False
    latencies: bytes = b""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# Generator process


def _connect_registered(settings: Settings, nick: str) -> socket.socket:
    """A blocking connection that has registered ``nick`` (relay form)."""
    sock = socket.create_connection((settings.host, settings.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"REGISTRAR {nick}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"{nick}: o servidor fechou a conexão no registro")
        reply += chunk
    if reply != b"OK\n":
        raise ConnectionError(f"{nick}: registro recusado: {reply.decode(errors='replace')!r}")
    return sock


class PairsWorker:
    """Drives some pairs from one process: one ``selectors`` loop, no threads."""

    def __init__(self, settings: Settings, indices: list[int]) -> None:
        self.settings = settings
        self.indices = indices
        self.pairs: list[Pair] = []
        self.selector = selectors.DefaultSelector()
        self.result = WorkerResult()
        self.latencies = array.array("q")
        self.stopping = False
        self.last_progress = 0.0

    def connect(self) -> None:
        prefix = self.settings.prefix
        for index in self.indices:
            receiver_nick = f"{prefix}r{index}"
            sender_nick = f"{prefix}s{index}"
            receiver = _connect_registered(self.settings, receiver_nick)
            sender = _connect_registered(self.settings, sender_nick)
            self.pairs.append(Pair(index, sender, receiver, receiver_nick, sender_nick.encode()))
        for pair in self.pairs:
            for sock in (pair.sender, pair.receiver):
                sock.setblocking(False)
            self.selector.register(pair.sender, selectors.EVENT_READ, (True, pair))
            self.selector.register(pair.receiver, selectors.EVENT_READ, (False, pair))

    def run(self, start_at: float) -> WorkerResult:
        """Send for ``duration`` seconds from ``start_at``, then wait for the stragglers."""
        settings = self.settings
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu0 = time.process_time()
        stop_at = start_at + settings.duration
        hard_deadline = stop_at + 30.0
        self.last_progress = time.monotonic()
        for pair in self.pairs:
            self._refill(pair)
        result = self.result
        while True:
            now = time.monotonic()
            if not self.stopping and now >= stop_at:
                self.stopping = True
            if self.stopping and result.received >= result.sent and result.acked >= result.sent:
                break
            if now - self.last_progress > IDLE_LIMIT or now > hard_deadline:
                result.idle_out = True
                break
            for key, mask in self.selector.select(0.05):
                is_sender, pair = key.data
                if mask & selectors.EVENT_WRITE:
                    self._send_unsent(pair)
                if mask & selectors.EVENT_READ:
                    if is_sender:
                        self._read_acks(pair)
                    else:
                        self._read_messages(pair)
        result.finished_at = self.last_progress if result.idle_out else time.monotonic()
        result.cpu = time.process_time() - cpu0
        result.latencies = self.latencies.tobytes()
        return result

    def close(self) -> None:
        self.selector.close()
        for pair in self.pairs:
            pair.sender.close()
            pair.receiver.close()

    # -- senders --

    def _refill(self, pair: Pair) -> None:
        """Top the window up to W messages awaiting their OK."""
        if self.stopping or pair.unsent:
            return
        room = self.settings.window - (pair.sent - pair.acked)
        if room <= 0:
            return
        stamp = f"T{time.monotonic_ns()}Q"
        head = f"ENVIAR {pair.receiver_nick} {stamp}"
        fill = self.settings.size - len(stamp)
        pad = "x" * max(fill, 0)
        lines = []
        for seq in range(pair.sent, pair.sent + room):
            tail = f"{seq}X"
            lines.append(f"{head}{tail}{pad[:fill - len(tail)]}\n")
        pair.sent += room
        self.result.sent += room
        self._send(pair, "".join(lines).encode())

    def _send(self, pair: Pair, data: bytes) -> None:
        try:
            sent = pair.sender.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            pair.unsent = data[sent:]
            self.selector.modify(pair.sender, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 (True, pair))

    def _send_unsent(self, pair: Pair) -> None:
        data, pair.unsent = pair.unsent, b""
        self.selector.modify(pair.sender, selectors.EVENT_READ, (True, pair))
        if data:
            self._send(pair, data)
        if not pair.unsent:
            self._refill(pair)

    def _read_acks(self, pair: Pair) -> None:
        data = self._recv(pair.sender)
        if not data:
            return
        data = pair.ack_partial + data
        end = data.rfind(b"\n") + 1
        pair.ack_partial = data[end:]
        lines = data.count(b"\n", 0, end)
        if not lines:
            return
        oks = data.count(b"OK\n", 0, end)
        if oks != lines:
            first = data[:end].split(b"\n")[0][:80]
            self._error(f"resposta inesperada: {first!r}", lines - oks)
        pair.acked += lines
        self.result.acked += lines
        self.last_progress = time.monotonic()
        self._refill(pair)

    # -- receivers --

    def _read_messages(self, pair: Pair) -> None:
        data = self._recv(pair.receiver)
        if not data:
            return
        now = time.monotonic_ns()
        data = pair.msg_partial + data
        end = data.rfind(b"\n") + 1
        pair.msg_partial = data[end:]
        if not end:
            return
        matches = MSG_RE.findall(data, 0, end)
        bad = data.count(b"\n", 0, end) - len(matches)
        if bad:
            self.result.bad_lines += bad
        add = self.latencies.append
        last = pair.last_seq
        expected_sender = pair.sender_nick
        for sender, stamp, seq_text in matches:
            add((now - int(stamp)) // 1000)
            seq = int(seq_text)
            if seq <= last:
                self.result.out_of_order += 1
            else:
                last = seq
            if sender != expected_sender:
                self.result.misrouted += 1
        pair.last_seq = last
        pair.received += len(matches)
        self.result.received += len(matches)
        self.last_progress = time.monotonic()

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self._error(f"erro de rede: {exc}")
            self.selector.unregister(sock)
            return b""
        if not data:
            self._error("o servidor fechou uma conexão")
            self.selector.unregister(sock)
        return data

    def _error(self, text: str, count: int = 1) -> None:
        self.result.errors += count
        if not self.result.first_error:
            self.result.first_error = text


def worker_main(settings: Settings, indices: list[int], conn) -> None:
    """Generator process: register, report ready, wait for the start time, run, report."""
    worker = PairsWorker(settings, indices)
    try:
        try:
            worker.connect()
        except OSError as exc:
            conn.send(("falha", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("pronto", None))
        if not conn.poll(60):
            return
        command, start_at = conn.recv()
        if command != "inicio":
            return
        conn.send(("resultado", worker.run(start_at)))
    finally:
        worker.close()
        conn.close()


# --------------------------------------------------------------------------
# One run and its figures


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), int(q * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


def run_once(server: comum.ServerUnderTest, pairs: int, args: argparse.Namespace,
             run_number: int) -> dict:
    """One measurement: P pairs over the given processes, for ``duracao`` seconds."""
    processes = max(1, min(args.processos, pairs))
    prefix = f"b{os.getpid() % 10000}x{run_number}"
    settings = Settings(server.host, server.port, args.janela, args.tamanho,
                        args.duracao, prefix)
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    workers = []
    for k in range(processes):
        indices = list(range(k, pairs, processes))
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(settings, indices, child_end),
                                  daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    results: list[WorkerResult] = []
    failure = ""
    try:
        for _, conn in workers:
            if not conn.poll(60):
                raise RuntimeError("um processo gerador não ficou pronto em 60 s")
            status, detail = conn.recv()
            if status != "pronto":
                raise RuntimeError(f"falha ao registrar os pares: {detail}")
        load = comum.load_average()
        start_at = time.monotonic() + 0.2
        for _, conn in workers:
            conn.send(("inicio", start_at))
        time.sleep(max(0.0, start_at - time.monotonic()))
        server_cpu0 = server.cpu
        for _, conn in workers:
            if not conn.poll(args.duracao + 60):
                raise RuntimeError("um processo gerador não terminou a tempo")
            results.append(conn.recv()[1])
        server_cpu1 = server.cpu
    except (RuntimeError, EOFError, OSError) as exc:
        failure = str(exc)
    finally:
        for process, conn in workers:
            conn.close()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    if failure:
        return {"pares": pairs, "falha": failure}

    end = max(r.finished_at for r in results)
    seconds = max(end - start_at, 1e-9)
    latencies = array.array("q")
    for r in results:
        latencies.frombytes(r.latencies)
    ordered = sorted(latencies)
    total = {name: sum(getattr(r, name) for r in results)
             for name in ("sent", "acked", "received", "out_of_order", "misrouted",
                          "errors", "bad_lines")}
    server_cpu = (server_cpu1 - server_cpu0
                  if server_cpu0 is not None and server_cpu1 is not None else None)
    first_error = next((r.first_error for r in results if r.first_error), "")
    return {
        "pares": pairs,
        "msgs_por_s": round(total["received"] / seconds, 1),
        "latencia_ms": {name: round(percentile(ordered, q) / 1000, 3)
                        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))}
        | {"max": round((ordered[-1] if ordered else 0) / 1000, 3)},
        "enviadas": total["sent"],
        "entregues": total["received"],
        "perdidas": total["sent"] - total["received"],
        "fora_de_ordem": total["out_of_order"],
        "trocadas": total["misrouted"],
        "erros": total["errors"] + total["bad_lines"],
        "primeiro_erro": first_error,
        "segundos": round(seconds, 3),
        "cpu_servidor_pct": round(100 * server_cpu / seconds, 1) if server_cpu is not None
        else None,
        "cpu_gerador_pct": round(100 * sum(r.cpu for r in results) / seconds, 1),
        "processos_gerador": processes,
        "carga_1min": load,
        "ocioso": any(r.idle_out for r in results),
    }


def summarize(pairs: int, runs: list[dict]) -> dict:
    """Median of each figure over the runs that completed."""
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"pares": pairs, "falha": runs[0].get("falha", "?") if runs else "?"}

    def med(get):
        values = [get(r) for r in good if get(r) is not None]
        return round(comum.median(values), 3) if values else None

    return {
        "pares": pairs,
        "execucoes": len(good),
        "msgs_por_s": med(lambda r: r["msgs_por_s"]),
        "latencia_ms": {k: med(lambda r, k=k: r["latencia_ms"][k])
                        for k in ("p50", "p90", "p99", "max")},
        "perdidas": sum(r["perdidas"] for r in good),
        "fora_de_ordem": sum(r["fora_de_ordem"] for r in good),
        "trocadas": sum(r["trocadas"] for r in good),
        "erros": sum(r["erros"] for r in good),
        "cpu_servidor_pct": med(lambda r: r["cpu_servidor_pct"]),
        "cpu_gerador_pct": med(lambda r: r["cpu_gerador_pct"]),
    }


def print_run(run: dict, number: int) -> None:
    if "falha" in run:
        print(f"  P={run['pares']:<4} execução {number}: FALHOU: {run['falha']}", file=sys.stderr)
        return
    lat = run["latencia_ms"]
    print(f"  P={run['pares']:<4} execução {number}: {run['msgs_por_s']:>10,.0f} msg/s  "
          f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  máx {lat['max']:.1f} ms  "
          f"perdidas {run['perdidas']}  fora de ordem {run['fora_de_ordem']}  "
          f"CPU servidor {run['cpu_servidor_pct']}%  gerador {run['cpu_gerador_pct']}%  "
          f"(carga {run['carga_1min']})", file=sys.stderr)


def print_table(summaries: list[dict], repetitions: int) -> None:
    comum.print_table_header(
        f"Retransmissão (medianas de {repetitions} execuções)",
        f"{'pares':>5} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'máx ms':>8} "
        f"{'perdidas':>8} {'fora ordem':>10} {'CPU serv.':>9} {'CPU ger.':>8}")
    for s in summaries:
        if "falha" in s:
            print(f"{s['pares']:>5} falhou: {s['falha']}")
            continue
        lat = s["latencia_ms"]
        print(f"{s['pares']:>5} {s['msgs_por_s']:>10,.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f} "
              f"{lat['max']:>8.1f} {s['perdidas']:>8} {s['fora_de_ordem']:>10} "
              f"{s['cpu_servidor_pct']:>8}% {s['cpu_gerador_pct']:>7}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/relay.py",
        description="Mede a retransmissão de mensagens: P pares remetente→destinatário, "
                    "no máximo W ENVIAR sem OK por remetente.")
    parser.add_argument("--pares", default="1,10,100,500",
                        help="lista de P separada por vírgulas (padrão: 1,10,100,500)")
    parser.add_argument("--janela", type=int, default=32,
                        help="ENVIAR em voo por remetente, aguardando OK (padrão: 32)")
    parser.add_argument("--tamanho", type=int, default=64,
                        help="bytes do texto de cada mensagem (padrão: 64)")
    parser.add_argument("--duracao", type=float, default=5.0,
                        help="segundos enviando em cada execução (padrão: 5)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="execuções por P; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--processos", type=int, default=os.cpu_count() or 2,
                        help="processos geradores (padrão: número de CPUs)")
    comum.add_server_options(parser, "PID do servidor de --attach, para medir a CPU dele")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.pares, args.duracao, args.repeticoes = "1,10", 1.0, 1
    try:
        pair_counts = [int(p) for p in args.pares.split(",") if p.strip()]
        attach = comum.loopback_target(args.attach) if args.attach else None
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not pair_counts or min(pair_counts) < 1 or max(pair_counts) > 20_000
            or not 1 <= args.janela <= 4096 or not 16 <= args.tamanho <= 4000
            or not 0 < args.duracao <= 600 or not 1 <= args.repeticoes <= 20
            or args.processos < 1):
        print("erro: parâmetros fora dos limites", file=sys.stderr)
        return 2
    comum.raise_fd_limit(4 * max(pair_counts) + 256)

    print(f"bench/relay.py: P={pair_counts} W={args.janela} {args.tamanho} bytes, "
          f"{args.duracao:g} s por execução, {args.repeticoes} execuções", file=sys.stderr)
    all_runs: list[dict] = []
    summaries = []
    run_number = 0
    for pairs in pair_counts:
        runs = []
        for repetition in range(args.repeticoes):
            run_number += 1
            with comum.ServerUnderTest(attach, args.servidor, pid=args.pid_servidor) as server:
                run = run_once(server, pairs, args, run_number)
            print_run(run, repetition + 1)
            runs.append(run)
        all_runs.extend(runs)
        summaries.append(summarize(pairs, runs))

    print_table(summaries, args.repeticoes)
    comum.print_json_line(
        "relay",
        {"pares": pair_counts, "janela": args.janela, "tamanho": args.tamanho,
         "duracao_s": args.duracao, "repeticoes": args.repeticoes,
         "processos": args.processos, "attach": args.attach},
        summaries, all_runs)
    broken = any("falha" in r or r["perdidas"] or r["fora_de_ordem"] or r["trocadas"]
                 or r["erros"] for r in all_runs)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
