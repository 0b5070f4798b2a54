"""Relay benchmark: P sender->receiver pairs, at most W messages in flight per sender.

Each sender keeps up to W ``ENVIAR`` awaiting their ``OK`` (refilling the
window as OKs come back), each 64-byte payload carries its send time and a
sequence number (``T<ns>Q<seq>X`` padded with ``x``), and each receiver
checks who sent it, the order, and how long it took (one-way, on the
system-wide monotonic clock, so generator processes can be compared).

The same load runs, in alternating rounds, against several targets: our
server with the message store on disk (``disco``: ``--dados`` on a fresh
temporary file, the server's default configuration) and in memory only
(``memoria``: ``--efemero``), and with ``--ngircd`` the IRC server ngircd
(``PRIVMSG``; IRC has no OK, so a sender's window slot frees when its
receiver gets the message). The table shows the median of each target, and
the ratios ours/ngircd and disk/memory from the same rounds.

``--sonda MS`` adds a light user: one more ordinary pair, in its own
process, sending one message every MS milliseconds while the P busy pairs
run; its latency is reported apart. ``--gerador-c`` runs the same rounds
with the C generator ``relay_load`` instead, to cross-check.

The generator must not be what limits the figure: the pairs are spread over
several processes (``--processos``), each one a single-threaded
``selectors`` loop over non-blocking sockets, and their CPU use is printed
next to the server's (from ``/proc/<pid>/stat``).

    python3 bench/relay.py                      # P = 1, 10, 100, 500; disk and memory
    python3 bench/relay.py --pares 100 --sonda 10 --ngircd
    python3 bench/relay.py --pares 100 --ngircd --gerador-c /tmp/relay_load
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
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

import comum
import dialeto

RECV_SIZE = 256 * 1024
IDLE_LIMIT = 5.0
"""Seconds without progress after which a run gives up and counts the rest as lost."""
C_MESSAGES = 1_000_000_000
"""relay_load's per-sender message count: more than any run sends (``--duracao`` stops it)."""


@dataclass
class Settings:
    host: str
    port: int
    window: int
    size: int
    duration: float
    prefix: str
    dialect: str = "chat"
    interval: float = 0.0
    """Seconds between messages of a paced (light) pair; 0 = keep the window full."""


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
    late_ticks: int = 0
    first_error: str = ""
    finished_at: float = 0.0
    cpu: float = 0.0
    idle_out: bool = False
    latencies: bytes = b""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# Generator process


def _connect_registered(settings: Settings, nick: str) -> tuple[socket.socket, bytes]:
    """A blocking connection that has registered ``nick``, and any bytes read past the reply."""
    sock = socket.create_connection((settings.host, settings.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        leftover = dialeto.DIALECTS[settings.dialect].register(sock, nick)
    except OSError:
        sock.close()
        raise
    return sock, leftover


class PairsWorker:
    """Drives some pairs from one process: one ``selectors`` loop, no threads.

    A paced worker (``settings.interval`` > 0) is the light user: it sends
    one message every interval, whatever comes back, instead of keeping a
    window full.
    """

    def __init__(self, settings: Settings, indices: list[int]) -> None:
        self.settings = settings
        self.dialect = dialeto.DIALECTS[settings.dialect]
        self.indices = indices
        self.pairs: list[Pair] = []
        self.selector = selectors.DefaultSelector()
        self.result = WorkerResult()
        self.latencies = array.array("q")
        self.stopping = False
        self.last_progress = 0.0
        self.paced = settings.interval > 0
        self.next_tick = 0.0

    def connect(self) -> None:
        prefix = self.settings.prefix
        for index in self.indices:
            receiver_nick = f"{prefix}r{index}"
            sender_nick = f"{prefix}s{index}"
            receiver, leftover = _connect_registered(self.settings, receiver_nick)
            try:
                sender, _ = _connect_registered(self.settings, sender_nick)
            except OSError:
                receiver.close()
                raise
            pair = Pair(index, sender, receiver, receiver_nick, sender_nick.encode())
            pair.msg_partial = leftover
            self.pairs.append(pair)
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
        self.next_tick = time.monotonic()
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
            wait = 0.05
            if self.paced and not self.stopping:
                self._tick(now)
                wait = min(wait, max(0.0, self.next_tick - time.monotonic()))
            for key, mask in self.selector.select(wait):
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

    def _lines(self, pair: Pair, count: int) -> bytes:
        """``count`` messages for ``pair``'s receiver, numbered from ``pair.sent``."""
        stamp = f"T{time.monotonic_ns()}Q"
        fill = self.settings.size - len(stamp)
        pad = "x" * max(fill, 0)
        direct = self.dialect.direct
        lines = []
        for seq in range(pair.sent, pair.sent + count):
            tail = f"{seq}X"
            lines.append(direct(pair.receiver_nick, f"{stamp}{tail}{pad[:fill - len(tail)]}"))
        pair.sent += count
        self.result.sent += count
        return "".join(lines).encode()

    def _refill(self, pair: Pair) -> None:
        """Top the window up to W messages awaiting their OK (IRC: their receipt)."""
        if self.paced or self.stopping or pair.unsent:
            return
        room = self.settings.window - (pair.sent - pair.acked)
        if room > 0:
            self._send(pair, self._lines(pair, room))

    def _tick(self, now: float) -> None:
        """Paced pair: one message when its time has come; a late loop skips, never bursts."""
        if now < self.next_tick:
            return
        if now - self.next_tick > self.settings.interval:
            self.result.late_ticks += 1
            self.next_tick = now
        self.next_tick += self.settings.interval
        for pair in self.pairs:
            if not pair.unsent:
                self._send(pair, self._lines(pair, 1))

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
        if self.dialect.irc:  # no acknowledgements in IRC: only PINGs to answer
            self._answer_pings(pair.sender, data[:end])
            return
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

    def _answer_pings(self, sock: socket.socket, data: bytes) -> None:
        pongs = self.dialect.pongs(data)
        if pongs:
            try:
                sock.send(pongs)
            except OSError as exc:
                self._error(f"PONG não enviado: {exc}")

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
        matches = self.dialect.direct_re.findall(data, 0, end)
        if self.dialect.irc:
            self._answer_pings(pair.receiver, data[:end])
            bad = data.count(self.dialect.delivery_marker, 0, end) - len(matches)
        else:
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
        if self.dialect.irc:  # the receipt is IRC's acknowledgement
            pair.acked += len(matches)
            self.result.acked += len(matches)
            self._refill(pair)

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
    comum.serve_worker(PairsWorker(settings, indices), conn, 60)


# --------------------------------------------------------------------------
# One run and its figures


def _start_workers(jobs: list[tuple[Settings, list[int]]]) -> list[tuple]:
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    workers = []
    for settings, indices in jobs:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(settings, indices, child_end),
                                  daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    return workers


def _figures(results: list[WorkerResult], start_at: float) -> dict:
    """Totals and latency percentiles of some workers' results."""
    end = max(r.finished_at for r in results)
    seconds = max(end - start_at, 1e-9)
    latencies = array.array("q")
    for r in results:
        latencies.frombytes(r.latencies)
    total = {name: sum(getattr(r, name) for r in results)
             for name in ("sent", "acked", "received", "out_of_order", "misrouted",
                          "errors", "bad_lines", "late_ticks")}
    return {
        "msgs_por_s": round(total["received"] / seconds, 1),
        "latencia_ms": comum.latency_summary(sorted(latencies)),
        "enviadas": total["sent"],
        "entregues": total["received"],
        "perdidas": total["sent"] - total["received"],
        "fora_de_ordem": total["out_of_order"],
        "trocadas": total["misrouted"],
        "erros": total["errors"] + total["bad_lines"],
        "primeiro_erro": next((r.first_error for r in results if r.first_error), ""),
        "segundos": round(seconds, 3),
        "atrasos_sonda": total["late_ticks"],
        "ocioso": any(r.idle_out for r in results),
    }


def run_once(server, target: comum.Target, pairs: int, args: argparse.Namespace,
             run_number: int) -> dict:
    """One measurement with the Python generator: P pairs (and the probe) for ``duracao`` s."""
    processes = max(1, min(args.processos, pairs))
    prefix = f"b{os.getpid() % 10000}x{run_number}"
    settings = Settings(server.host, server.port, args.janela, args.tamanho,
                        args.duracao, prefix, target.dialect)
    jobs = [(settings, list(range(k, pairs, processes))) for k in range(processes)]
    if args.sonda:
        probe = Settings(server.host, server.port, 1, args.tamanho, args.duracao, prefix,
                         target.dialect, interval=args.sonda / 1000)
        jobs.append((probe, [pairs]))
    workers = _start_workers(jobs)
    results: list[WorkerResult] = []
    failure = ""
    try:
        conns = [conn for _, conn in workers]
        comum.wait_until_ready(conns, 60, "registrar os pares")
        load = comum.load_average()
        start_at = comum.start_together(conns)
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
        return {"pares": pairs, "alvo": target.name, "falha": failure}

    busy, probe_results = results[:processes], results[processes:]
    run = {"pares": pairs, "alvo": target.name, "gerador": "python"} | _figures(busy, start_at)
    seconds = run["segundos"]
    server_cpu = (server_cpu1 - server_cpu0
                  if server_cpu0 is not None and server_cpu1 is not None else None)
    run["cpu_servidor_pct"] = (round(100 * server_cpu / seconds, 1)
                               if server_cpu is not None else None)
    run["cpu_gerador_pct"] = round(100 * sum(r.cpu for r in results) / seconds, 1)
    run["processos_gerador"] = processes
    run["carga_1min"] = load
    if probe_results:
        run["sonda"] = _probe_figures(_figures(probe_results, start_at), args.sonda)
    return run


def _probe_figures(figures: dict, interval_ms: float) -> dict:
    return {"intervalo_ms": interval_ms, "latencia_ms": figures["latencia_ms"],
            "enviadas": figures["enviadas"], "entregues": figures["entregues"],
            "perdidas": figures["perdidas"], "fora_de_ordem": figures["fora_de_ordem"],
            "erros": figures["erros"], "atrasos": figures["atrasos_sonda"]}


def run_once_c(server, target: comum.Target, pairs: int, args: argparse.Namespace,
               run_number: int) -> dict:
    """The same measurement driven by relay_load (``--gerador-c``)."""
    arguments = ["--pairs", str(pairs), "--messages", str(C_MESSAGES),
                 "--window", str(args.janela), "--size", str(args.tamanho),
                 "--duration", f"{args.duracao:g}",
                 "--prefix", f"c{os.getpid() % 10000}x{run_number}"]
    if args.sonda:
        arguments += ["--probe-interval", f"{args.sonda:g}"]
    load = comum.load_average()
    try:
        out = comum.run_relay_load(args.gerador_c, server, target.dialect, arguments,
                                   timeout=args.duracao + 60)
    except RuntimeError as exc:
        return {"pares": pairs, "alvo": target.name, "falha": str(exc)}
    run = {
        "pares": pairs, "alvo": target.name, "gerador": "relay_load",
        "msgs_por_s": out["msgs_per_s"],
        "latencia_ms": comum.ms_from_us(out["latency_us"]),
        "enviadas": out["sent"], "entregues": out["delivered"], "perdidas": out["lost"],
        "fora_de_ordem": out["out_of_order"], "trocadas": out.get("misrouted", 0),
        "erros": out["errors"] + out.get("bad_lines", 0) + out.get("pairs_failed", 0),
        "primeiro_erro": out.get("first_error", ""), "segundos": out["seconds"],
        "cpu_servidor_pct": out.get("server_cpu_pct"), "cpu_gerador_pct": out["gen_cpu_pct"],
        "carga_1min": load, "ocioso": out.get("idle_out", False) or out.get("timed_out", False),
    }
    if "probe" in out:
        probe = out["probe"]
        run["sonda"] = {"intervalo_ms": args.sonda,
                        "latencia_ms": comum.ms_from_us(probe["latency_us"]),
                        "enviadas": probe["sent"], "entregues": probe["delivered"],
                        "perdidas": probe["lost"], "fora_de_ordem": probe["out_of_order"],
                        "erros": probe["errors"] + probe.get("misrouted", 0)
                        + probe.get("bad_lines", 0),
                        "atrasos": probe.get("late_ticks", 0)}
    return run


def summarize(pairs: int, target: str, runs: list[dict]) -> dict:
    """Median of each figure over the runs that completed."""
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"pares": pairs, "alvo": target,
                "falha": runs[0].get("falha", "?") if runs else "?"}

    def med(get):
        values = [v for v in (get(r) for r in good) if v is not None]
        return round(comum.median(values), 3) if values else None

    summary = {
        "pares": pairs,
        "alvo": target,
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
    probes = [r["sonda"] for r in good if "sonda" in r]
    if probes:
        summary["sonda"] = {
            "latencia_ms": {k: round(comum.median([p["latencia_ms"][k] for p in probes]), 3)
                            for k in ("p50", "p90", "p99", "max")},
            "perdidas": sum(p["perdidas"] for p in probes),
            "fora_de_ordem": sum(p["fora_de_ordem"] for p in probes),
            "erros": sum(p["erros"] for p in probes),
        }
    return summary


def broken(run: dict) -> bool:
    """A run that failed, lost, reordered, misrouted or got an error (the probe's too)."""
    if "falha" in run:
        return True
    parts = [run] + ([run["sonda"]] if "sonda" in run else [])
    return any(part["perdidas"] or part["fora_de_ordem"] or part.get("trocadas")
               or part["erros"] for part in parts)


def print_run(run: dict, number: int) -> None:
    head = f"  P={run['pares']:<4} {run['alvo']:<7} execução {number}:"
    if "falha" in run:
        print(f"{head} FALHOU: {run['falha']}", file=sys.stderr)
        return
    lat = run["latencia_ms"]
    probe = ""
    if "sonda" in run:
        s = run["sonda"]["latencia_ms"]
        probe = f"  sonda p50 {s['p50']:.2f} p99 {s['p99']:.2f} máx {s['max']:.1f} ms"
    print(f"{head} {run['msgs_por_s']:>10,.0f} msg/s  "
          f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  máx {lat['max']:.1f} ms  "
          f"perdidas {run['perdidas']}  fora de ordem {run['fora_de_ordem']}  "
          f"CPU servidor {comum.percent(run['cpu_servidor_pct'])}  "
          f"gerador {comum.percent(run['cpu_gerador_pct'])}"
          f"{probe}  (carga {run['carga_1min']})", file=sys.stderr)
    if run.get("primeiro_erro"):
        print(f"{' ' * len(head)} primeiro erro: {run['primeiro_erro']}", file=sys.stderr)


def _cell(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def print_table(summaries: list[dict], repetitions: int, probe: bool, generator: str) -> None:
    header = (f"{'pares':>5} {'alvo':>7} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'máx ms':>8} {'perdidas':>8} {'fora ordem':>10} {'CPU serv.':>9} "
              f"{'CPU ger.':>8}")
    if probe:
        header += f" {'sonda p50':>9} {'sonda p99':>9} {'sonda máx':>9}"
    comum.print_table_header(
        f"Retransmissão (medianas de {repetitions} execuções, gerador {generator})", header)
    for s in summaries:
        if "falha" in s:
            print(f"{s['pares']:>5} {s['alvo']:>7} falhou: {s['falha']}")
            continue
        lat = s["latencia_ms"]
        line = (f"{s['pares']:>5} {s['alvo']:>7} {s['msgs_por_s']:>10,.0f} {lat['p50']:>8.2f} "
                f"{lat['p99']:>8.2f} {lat['max']:>8.1f} {s['perdidas']:>8} "
                f"{s['fora_de_ordem']:>10} {_cell(s['cpu_servidor_pct'], '.0f', 8)}% "
                f"{_cell(s['cpu_gerador_pct'], '.0f', 7)}%")
        if probe and "sonda" in s:
            p = s["sonda"]["latencia_ms"]
            line += f" {p['p50']:>9.2f} {p['p99']:>9.2f} {p['max']:>9.1f}"
        print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/relay.py",
        description="Mede a retransmissão de mensagens: P pares remetente→destinatário, "
                    "no máximo W ENVIAR sem OK por remetente; o servidor com e sem o "
                    "armazenamento em disco e, com --ngircd, o ngircd lado a lado.")
    parser.add_argument("--pares", default="1,10,100,500",
                        help="lista de P separada por vírgulas (padrão: 1,10,100,500)")
    parser.add_argument("--janela", type=int, default=32,
                        help="ENVIAR em voo por remetente, aguardando OK (padrão: 32)")
    parser.add_argument("--tamanho", type=int, default=64,
                        help="bytes do texto de cada mensagem (padrão: 64)")
    parser.add_argument("--duracao", type=float, default=5.0,
                        help="segundos enviando em cada execução (padrão: 5)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="rodadas por P; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--processos", type=int, default=os.cpu_count() or 2,
                        help="processos geradores (padrão: número de CPUs)")
    parser.add_argument("--sonda", type=float, default=0.0, metavar="MS",
                        help="um usuário leve: mais um par, num processo só dele, que manda "
                             "uma mensagem a cada MS milissegundos enquanto os P pares "
                             "ocupados rodam; a latência dele aparece à parte (padrão: sem)")
    comum.add_target_options(parser)
    comum.add_server_options(parser, "PID do servidor de --attach, para medir a CPU dele")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.pares, args.duracao, args.repeticoes = "10", 1.0, 1
    try:
        pair_counts = [int(p) for p in args.pares.split(",") if p.strip()]
        if args.attach:
            comum.loopback_target(args.attach)
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not pair_counts or min(pair_counts) < 1 or max(pair_counts) > 20_000
            or not 1 <= args.janela <= 4096 or not 16 <= args.tamanho <= 4000
            or not 0 < args.duracao <= 600 or not 1 <= args.repeticoes <= 20
            or args.processos < 1 or not 0 <= args.sonda <= 10_000):
        print("erro: parâmetros fora dos limites", file=sys.stderr)
        return 2
    if args.gerador_c and not os.access(args.gerador_c, os.X_OK):
        print(f"erro: {args.gerador_c} não é um programa executável", file=sys.stderr)
        return 2
    comum.raise_fd_limit(4 * max(pair_counts) + 256)
    targets = comum.targets_from_args(args)
    generator = "relay_load" if args.gerador_c else "python"
    measure = run_once_c if args.gerador_c else run_once

    print(f"bench/relay.py: P={pair_counts} W={args.janela} {args.tamanho} bytes, "
          f"{args.duracao:g} s por execução, {args.repeticoes} rodadas alternando "
          f"{', '.join(t.name for t in targets)}; gerador {generator}"
          + (f"; sonda a cada {args.sonda:g} ms" if args.sonda else ""), file=sys.stderr)
    all_runs: list[dict] = []
    summaries = []
    by_key: dict[tuple[object, str], dict] = {}
    run_number = 0
    for pairs in pair_counts:
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for repetition in range(args.repeticoes):
            for target in targets:
                run_number += 1
                try:
                    with comum.open_target(target, args) as server:
                        run = measure(server, target, pairs, args, run_number)
                except RuntimeError as exc:
                    run = {"pares": pairs, "alvo": target.name, "falha": str(exc)}
                print_run(run, repetition + 1)
                runs[target.name].append(run)
                all_runs.append(run)
        for target in targets:
            summary = summarize(pairs, target.name, runs[target.name])
            summaries.append(summary)
            by_key[(pairs, target.name)] = summary

    print_table(summaries, args.repeticoes, bool(args.sonda), generator)
    ratios = comum.ratio_rows(by_key, "msgs_por_s", pair_counts)
    comum.print_ratios("Razões de msg/s, das mesmas rodadas (medianas)", "pares", ratios)
    if any(t.name == "ngircd" for t in targets):
        print("(IRC não confirma mensagens: no ngircd a janela de um remetente se libera quando "
              "o destinatário recebe; no nosso servidor, com o OK)")
    comum.print_json_line(
        "relay",
        {"pares": pair_counts, "janela": args.janela, "tamanho": args.tamanho,
         "duracao_s": args.duracao, "repeticoes": args.repeticoes,
         "processos": args.processos, "sonda_ms": args.sonda,
         "alvos": [t.name for t in targets], "gerador": generator, "attach": args.attach},
        {"alvos": summaries, "razoes": ratios}, all_runs)
    return 1 if any(broken(r) for r in all_runs) else 0


if __name__ == "__main__":
    sys.exit(main())
