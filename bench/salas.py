"""Rooms benchmark: fan-out of one room's messages to every member.

R rooms of M members each; S members of every room send to it (``ENVIAR
#sala ...``; IRC: ``PRIVMSG #sala``), each keeping at most W messages in
flight. Every member but the sender receives each message, and each receipt
is one *delivery*. Measured: deliveries per second, the latency of each
delivery (from the sender's ``send`` to the member's read, one-way, on the
system-wide monotonic clock), deliveries lost, and order: per sender (a
member never sees a sender's messages out of sequence) and across senders
(every member sees the room's messages in **one** order, the one the room's
witness saw -- a member that never sends, the last of each room).

What frees a window slot: in our protocol the ``OK`` to ``ENVIAR`` (the
message is stored and handed to every member's outbox); IRC has no
acknowledgement, so for ngircd a slot frees when the room's witness
receives the message. ``--janela-por testemunha`` makes our server's
senders wait for the witness too, for a like-for-like comparison. Same
rounds, alternating targets, as ``relay.py``: our server with the store on
disk and in memory, and ngircd with ``--ngircd``. ``--gerador-c`` drives
the load with ``relay_load --rooms`` instead (which checks the order per
sender, not the one order across senders).

    python3 bench/salas.py                      # 1 room x 200 members x 4 senders, W = 32
    python3 bench/salas.py --ngircd
    python3 bench/salas.py --ngircd --gerador-c /tmp/relay_load
    python3 bench/salas.py --rapido             # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if a delivery was lost, duplicated or out of order, if two
members saw different orders, or if a member could not register or join.
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
import dialeto

RECV_SIZE = 256 * 1024
IDLE_LIMIT = 5.0
"""Seconds without progress after which a run gives up and counts the rest as lost."""
SEQ_BITS = 40
"""A delivery's identity in the order check: sender index << SEQ_BITS | sequence."""
C_MESSAGES = 1_000_000_000
OK_LINE = re.compile(rb"^OK$", re.MULTILINE)
ERROR_LINE = re.compile(rb"^ERRO .*$", re.MULTILINE)


@dataclass
class Settings:
    host: str
    port: int
    dialect: str
    rooms: int
    members: int
    senders: int
    window: int
    size: int
    duration: float
    prefix: str
    by_witness: bool = False
    """A window slot frees when the room's witness gets the message (always so in IRC)."""

    def room_name(self, room: int) -> str:
        return f"#{self.prefix}r{room}"

    def sender_index(self, member: int) -> int | None:
        """The global sender number of member ``member`` (None if it only listens)."""
        room, position = divmod(member, self.members)
        return room * self.senders + position if position < self.senders else None

    def is_witness(self, member: int) -> bool:
        return member % self.members == self.members - 1


@dataclass
class Member:
    index: int
    room: int
    sock: socket.socket
    sender: int | None
    witness: bool
    partial: bytes = b""
    unsent: bytes = b""
    sent: int = 0
    acked: int = 0
    """Window slots freed: OKs (or the witness's receipts) and refusals."""
    replies: int = 0
    """OK and ERRO lines read (our protocol only)."""
    received: int = 0
    last_seq: dict[int, int] = field(default_factory=dict)
    order: array.array = field(default_factory=lambda: array.array("Q"))


@dataclass
class WorkerResult:
    received: int = 0
    out_of_order: int = 0
    misrouted: int = 0
    errors: int = 0
    bad_lines: int = 0
    first_error: str = ""
    last_delivery: float = 0.0
    cpu: float = 0.0
    idle_out: bool = False
    latencies: bytes = b""
    received_by_member: dict[int, int] = field(default_factory=dict)
    orders: dict[int, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Generator process


class RoomsWorker:
    """Some members of the rooms, in one ``selectors`` loop without threads.

    Each room's senders and witness live in the same worker (see
    ``assign_members``), so the IRC window can be freed by the witness.
    """

    def __init__(self, settings: Settings, indices: list[int], conn) -> None:
        self.settings = settings
        self.dialect = dialeto.DIALECTS[settings.dialect]
        self.indices = indices
        self.conn = conn
        self.members: list[Member] = []
        self.senders: dict[int, Member] = {}
        self.selector = selectors.DefaultSelector()
        self.result = WorkerResult()
        self.latencies = array.array("q")
        self.stopping = False
        self.last_progress = 0.0
        self.expected: dict[int, int] | None = None

    def connect(self) -> None:
        settings = self.settings
        for index in self.indices:
            sock = socket.create_connection((settings.host, settings.port), timeout=30)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                leftover = self.dialect.register(sock, f"{settings.prefix}m{index}")
                room = index // settings.members
                leftover += self.dialect.join(sock, settings.room_name(room))
            except OSError:
                sock.close()
                raise
            member = Member(index, room, sock, settings.sender_index(index),
                            settings.is_witness(index), partial=leftover)
            self.members.append(member)
            if member.sender is not None:
                self.senders[member.sender] = member
        for member in self.members:
            member.sock.setblocking(False)
            self.selector.register(member.sock, selectors.EVENT_READ, member)

    def run(self, start_at: float) -> WorkerResult:
        """Send for ``duration`` s, report what was sent, then read until all expected arrived."""
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu0 = time.process_time()
        stop_at = start_at + self.settings.duration
        hard_deadline = stop_at + 60.0
        self.last_progress = time.monotonic()
        for member in self.senders.values():
            self._refill(member)
        reported = False
        result = self.result
        while True:
            now = time.monotonic()
            if not self.stopping and now >= stop_at:
                self.stopping = True
            idle = now - self.last_progress > IDLE_LIMIT or now > hard_deadline
            if self.stopping and not reported and (idle or self._all_acked()):
                self.conn.send(("enviadas", {g: m.sent for g, m in self.senders.items()}))
                reported = True
                self.last_progress = now
            if reported and self.expected is None and self.conn.poll(0):
                command, sent = self.conn.recv()
                if command == "esperado":
                    self.expected = self._expected_per_member(sent)
                    self.last_progress = now
            if self.expected is not None and self._all_received():
                break
            if idle and reported:
                result.idle_out = True
                break
            for key, mask in self.selector.select(0.05):
                member = key.data
                if mask & selectors.EVENT_WRITE:
                    self._send_unsent(member)
                if mask & selectors.EVENT_READ:
                    self._read(member)
        result.cpu = time.process_time() - cpu0
        result.latencies = self.latencies.tobytes()
        result.received_by_member = {m.index: m.received for m in self.members}
        result.orders = {m.index: m.order.tobytes() for m in self.members}
        return result

    def close(self) -> None:
        self.selector.close()
        for member in self.members:
            member.sock.close()

    def _all_acked(self) -> bool:
        return all(m.acked >= m.sent and not m.unsent
                   and (self.dialect.irc or m.replies >= m.sent) for m in self.senders.values())

    def _expected_per_member(self, sent: dict[int, int]) -> dict[int, int]:
        """Deliveries each of this worker's members should get: its room's messages but its own."""
        per_room: dict[int, int] = {}
        for g, count in sent.items():
            room = g // self.settings.senders
            per_room[room] = per_room.get(room, 0) + count
        return {m.index: per_room.get(m.room, 0) - (sent.get(m.sender, 0)
                                                     if m.sender is not None else 0)
                for m in self.members}

    def _all_received(self) -> bool:
        return all(m.received >= self.expected[m.index] for m in self.members)

    # -- senders --

    def _refill(self, member: Member) -> None:
        if self.stopping or member.unsent:
            return
        room = self.settings.window - (member.sent - member.acked)
        if room <= 0:
            return
        name = self.settings.room_name(member.room)
        direct = self.dialect.direct
        lines = [direct(name, dialeto.payload(self.settings.size, seq, member.sender))
                 for seq in range(member.sent, member.sent + room)]
        member.sent += room
        self._send(member, "".join(lines).encode())

    def _send(self, member: Member, data: bytes) -> None:
        try:
            sent = member.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._error(f"erro de rede: {exc}")
            return
        if sent < len(data):
            member.unsent = data[sent:]
            self.selector.modify(member.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 member)

    def _send_unsent(self, member: Member) -> None:
        data, member.unsent = member.unsent, b""
        self.selector.modify(member.sock, selectors.EVENT_READ, member)
        if data:
            self._send(member, data)
        if not member.unsent:
            self._refill(member)

    # -- every member --

    def _read(self, member: Member) -> None:
        try:
            data = member.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._error(f"erro de rede: {exc}")
            self.selector.unregister(member.sock)
            return
        if not data:
            self._error("o servidor fechou uma conexão")
            self.selector.unregister(member.sock)
            return
        now_ns = time.monotonic_ns()
        data = member.partial + data
        end = data.rfind(b"\n") + 1
        member.partial = data[end:]
        if not end:
            return
        chunk = data[:end]
        if self.dialect.irc:
            pongs = self.dialect.pongs(chunk)
            if pongs:
                self._send(member, pongs)
        elif member.sender is not None:
            self._count_acks(member, chunk)
        self._deliveries(member, chunk, now_ns)

    def _count_acks(self, member: Member, chunk: bytes) -> None:
        oks = len(OK_LINE.findall(chunk))
        refused = ERROR_LINE.findall(chunk)
        if refused:
            self._error(f"resposta inesperada: {refused[0][:80]!r}", len(refused))
        if oks or refused:
            member.replies += oks + len(refused)
            # A refused message never reaches the witness: its slot frees here either way.
            member.acked += len(refused) if self.settings.by_witness else oks + len(refused)
            self.last_progress = time.monotonic()
            self._refill(member)

    def _deliveries(self, member: Member, chunk: bytes, now_ns: int) -> None:
        matches = self.dialect.room_re.findall(chunk)
        bad = chunk.count(self.dialect.delivery_marker) - len(matches)
        if bad:
            self.result.bad_lines += bad
        if not matches:
            return
        add_latency = self.latencies.append
        add_order = member.order.append
        last_seq = member.last_seq
        result = self.result
        for _, stamp, seq_text, sender_text in matches:
            g, seq = int(sender_text), int(seq_text)
            add_latency((now_ns - int(stamp)) // 1000)
            add_order(g << SEQ_BITS | seq)
            if seq <= last_seq.get(g, -1):
                result.out_of_order += 1
            else:
                last_seq[g] = seq
            if g == member.sender or g // self.settings.senders != member.room:
                result.misrouted += 1
            if self.settings.by_witness and member.witness and g in self.senders:
                sender = self.senders[g]  # the witness's receipt frees the slot
                sender.acked += 1
                self._refill(sender)
        member.received += len(matches)
        result.received += len(matches)
        result.last_delivery = time.monotonic()
        self.last_progress = result.last_delivery

    def _error(self, text: str, count: int = 1) -> None:
        self.result.errors += count
        if not self.result.first_error:
            self.result.first_error = text


def worker_main(settings: Settings, indices: list[int], conn) -> None:
    """Generator process: register and join, report ready, run at the start time, report."""
    comum.serve_worker(RoomsWorker(settings, indices, conn), conn, 120)


def assign_members(settings: Settings, processes: int) -> list[list[int]]:
    """Members per generator process: every room's senders and witness in the first one."""
    shares: list[list[int]] = [[] for _ in range(processes)]
    others = []
    for index in range(settings.rooms * settings.members):
        if settings.sender_index(index) is not None or settings.is_witness(index):
            shares[0].append(index)
        else:
            others.append(index)
    for n, index in enumerate(others):
        shares[n % processes].append(index)
    return [share for share in shares if share]


# --------------------------------------------------------------------------
# One run and its figures


def run_once(server, target: comum.Target, args: argparse.Namespace, run_number: int) -> dict:
    settings = Settings(server.host, server.port, target.dialect, args.salas, args.membros,
                        args.remetentes, args.janela, args.tamanho, args.duracao,
                        f"b{os.getpid() % 10000}x{run_number}",
                        by_witness=target.dialect == "irc" or args.janela_por == "testemunha")
    shares = assign_members(settings, max(1, args.processos))
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    workers = []
    for share in shares:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(settings, share, child_end),
                                  daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    results: list[WorkerResult] = []
    sent: dict[int, int] = {}
    failure = ""
    try:
        conns = [conn for _, conn in workers]
        comum.wait_until_ready(conns, 120, "registrar ou entrar na sala")
        load = comum.load_average()
        start_at = comum.start_together(conns)
        server_cpu0 = server.cpu
        for _, conn in workers:
            if not conn.poll(args.duracao + 60):
                raise RuntimeError("um processo gerador não terminou de enviar a tempo")
            command, detail = conn.recv()
            if command != "enviadas":
                raise RuntimeError(f"resposta inesperada de um gerador: {command}")
            sent |= detail
        server_cpu1 = server.cpu
        cpu_seconds = time.monotonic() - start_at
        for _, conn in workers:
            conn.send(("esperado", sent))
        for _, conn in workers:
            if not conn.poll(90):
                raise RuntimeError("um processo gerador não terminou de receber a tempo")
            results.append(conn.recv()[1])
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
        return {"alvo": target.name, "falha": failure}
    server_cpu = (server_cpu1 - server_cpu0
                  if server_cpu0 is not None and server_cpu1 is not None else None)
    return _figures(settings, results, sent, start_at) | {
        "alvo": target.name, "gerador": "python", "carga_1min": load,
        "cpu_servidor_pct": (round(100 * server_cpu / cpu_seconds, 1)
                             if server_cpu is not None else None)}


def _figures(settings: Settings, results: list[WorkerResult], sent: dict[int, int],
             start_at: float) -> dict:
    end = max([r.last_delivery for r in results] + [start_at])
    seconds = max(end - start_at, 1e-9)
    delivered = sum(r.received for r in results)
    messages = sum(sent.values())
    expected = messages * (settings.members - 1)
    latencies = array.array("q")
    for r in results:
        latencies.frombytes(r.latencies)
    orders: dict[int, bytes] = {}
    for r in results:
        orders |= r.orders
    divergent, outside = check_one_order(settings, orders)
    return {
        "entregas_por_s": round(delivered / seconds, 1),
        "msgs_por_s": round(messages / settings.duration, 1),
        "latencia_ms": comum.latency_summary(sorted(latencies)),
        "mensagens": messages,
        "entregas": delivered,
        "perdidas": max(0, expected - delivered),
        "duplicadas": max(0, delivered - expected),
        "fora_de_ordem": sum(r.out_of_order for r in results),
        "ordem_divergente": divergent,
        "fora_da_referencia": outside,
        "trocadas": sum(r.misrouted for r in results),
        "erros": sum(r.errors + r.bad_lines for r in results),
        "primeiro_erro": next((r.first_error for r in results if r.first_error), ""),
        "segundos": round(seconds, 3),
        "cpu_gerador_pct": round(100 * sum(r.cpu for r in results) / seconds, 1),
        "ocioso": any(r.idle_out for r in results),
    }


def check_one_order(settings: Settings, orders: dict[int, bytes]) -> tuple[int, int]:
    """Members whose deliveries are not in their room witness's order; deliveries it lacks.

    The witness never sends, so it sees every message of its room; every
    other member must see the same messages (but its own) in the same
    relative order. A delivery the witness never got cannot be placed and
    counts apart (``fora_da_referencia``).
    """
    divergent = outside = 0
    for room in range(settings.rooms):
        first = room * settings.members
        witness = array.array("Q")
        witness.frombytes(orders.get(first + settings.members - 1, b""))
        position = {key: n for n, key in enumerate(witness)}
        for member in range(first, first + settings.members - 1):
            seen = array.array("Q")
            seen.frombytes(orders.get(member, b""))
            last = -1
            in_order = True
            for key in seen:
                at = position.get(key)
                if at is None:
                    outside += 1
                    continue
                if at <= last:
                    in_order = False
                last = at
            divergent += not in_order
    return divergent, outside


def run_once_c(server, target: comum.Target, args: argparse.Namespace, run_number: int) -> dict:
    """The same measurement driven by ``relay_load --rooms``."""
    arguments = ["--rooms", str(args.salas), "--members", str(args.membros),
                 "--senders", str(args.remetentes), "--messages", str(C_MESSAGES),
                 "--window", str(args.janela), "--size", str(args.tamanho),
                 "--duration", f"{args.duracao:g}",
                 "--prefix", f"c{os.getpid() % 10000}x{run_number}"]
    if args.janela_por == "testemunha":
        arguments += ["--window-by", "witness"]
    load = comum.load_average()
    try:
        out = comum.run_relay_load(args.gerador_c, server, target.dialect, arguments,
                                   timeout=args.duracao + 90)
    except RuntimeError as exc:
        return {"alvo": target.name, "falha": str(exc)}
    if out.get("join_failed"):
        return {"alvo": target.name, "falha": f"{out['join_failed']} membros não entraram: "
                                               f"{out.get('first_error', '')}"}
    return {
        "alvo": target.name, "gerador": "relay_load",
        "entregas_por_s": out["deliveries_per_s"], "msgs_por_s": out["msgs_per_s"],
        "latencia_ms": comum.ms_from_us(out["latency_us"]),
        "mensagens": out["sent"], "entregas": out["delivered"], "perdidas": out["lost"],
        "duplicadas": out.get("duplicates", 0), "fora_de_ordem": out["out_of_order"],
        "ordem_divergente": None, "fora_da_referencia": 0,
        "trocadas": out.get("misrouted", 0) + out.get("self_deliveries", 0),
        "erros": out["errors"] + out.get("bad_lines", 0),
        "primeiro_erro": out.get("first_error", ""), "segundos": out["seconds"],
        "cpu_servidor_pct": out.get("server_cpu_pct"), "cpu_gerador_pct": out["gen_cpu_pct"],
        "carga_1min": load, "ocioso": out.get("idle_out", False) or out.get("timed_out", False),
    }


def summarize(target: str, runs: list[dict]) -> dict:
    good = [r for r in runs if "falha" not in r]
    if not good:
        return {"alvo": target, "falha": runs[0].get("falha", "?") if runs else "?"}

    def med(get):
        values = [v for v in (get(r) for r in good) if v is not None]
        return round(comum.median(values), 3) if values else None

    return {
        "alvo": target,
        "execucoes": len(good),
        "entregas_por_s": med(lambda r: r["entregas_por_s"]),
        "msgs_por_s": med(lambda r: r["msgs_por_s"]),
        "latencia_ms": {k: med(lambda r, k=k: r["latencia_ms"][k])
                        for k in ("p50", "p90", "p99", "max")},
        **{key: sum(r[key] for r in good)
           for key in ("perdidas", "duplicadas", "fora_de_ordem", "fora_da_referencia",
                       "trocadas", "erros")},
        # relay_load does not check the one order across senders: None, shown as "-".
        "ordem_divergente": (None if any(r["ordem_divergente"] is None for r in good)
                             else sum(r["ordem_divergente"] for r in good)),
        "cpu_servidor_pct": med(lambda r: r["cpu_servidor_pct"]),
        "cpu_gerador_pct": med(lambda r: r["cpu_gerador_pct"]),
    }


def broken(run: dict) -> bool:
    return "falha" in run or any(run[key] for key in (
        "perdidas", "duplicadas", "fora_de_ordem", "ordem_divergente", "fora_da_referencia",
        "trocadas", "erros"))


def print_run(run: dict, number: int) -> None:
    head = f"  {run['alvo']:<7} execução {number}:"
    if "falha" in run:
        print(f"{head} FALHOU: {run['falha']}", file=sys.stderr)
        return
    lat = run["latencia_ms"]
    order = run["ordem_divergente"]
    print(f"{head} {run['entregas_por_s']:>10,.0f} entregas/s ({run['msgs_por_s']:,.0f} msg/s)  "
          f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  máx {lat['max']:.1f} ms  "
          f"perdidas {run['perdidas']}  fora de ordem {run['fora_de_ordem']}  "
          f"ordem divergente {'-' if order is None else order}  "
          f"CPU servidor {comum.percent(run['cpu_servidor_pct'])}  "
          f"gerador {comum.percent(run['cpu_gerador_pct'])}  "
          f"(carga {run['carga_1min']})", file=sys.stderr)
    if run.get("primeiro_erro"):
        print(f"{' ' * len(head)} primeiro erro: {run['primeiro_erro']}", file=sys.stderr)


def print_table(summaries: list[dict], args: argparse.Namespace, generator: str) -> None:
    comum.print_table_header(
        f"Salas: {args.salas} × {args.membros} membros × {args.remetentes} remetentes, "
        f"W={args.janela} (medianas de {args.repeticoes} rodadas, gerador {generator})",
        f"{'alvo':>7} {'entregas/s':>11} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'máx ms':>8} {'perdidas':>8} {'fora ordem':>10} {'ordem div.':>10} "
        f"{'CPU serv.':>9} {'CPU ger.':>8}")
    for s in summaries:
        if "falha" in s:
            print(f"{s['alvo']:>7} falhou: {s['falha']}")
            continue
        lat = s["latencia_ms"]
        cpu_server = "-" if s["cpu_servidor_pct"] is None else f"{s['cpu_servidor_pct']:.0f}%"
        order = "-" if s["ordem_divergente"] is None else s["ordem_divergente"]
        print(f"{s['alvo']:>7} {s['entregas_por_s']:>11,.0f} {s['msgs_por_s']:>8,.0f} "
              f"{lat['p50']:>8.2f} {lat['p99']:>8.2f} {lat['max']:>8.1f} {s['perdidas']:>8} "
              f"{s['fora_de_ordem']:>10} {order:>10} {cpu_server:>9} "
              f"{s['cpu_gerador_pct']:>7.0f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/salas.py",
        description="Mede a distribuição de mensagens em salas: R salas de M membros, S "
                    "remetentes por sala com no máximo W mensagens em voo; entregas por "
                    "segundo, latência de cada entrega, perdas e ordem.")
    parser.add_argument("--salas", type=int, default=1, help="salas (padrão: 1)")
    parser.add_argument("--membros", type=int, default=200,
                        help="membros de cada sala (padrão: 200)")
    parser.add_argument("--remetentes", type=int, default=4,
                        help="membros de cada sala que enviam (padrão: 4)")
    parser.add_argument("--janela", type=int, default=32,
                        help="mensagens em voo por remetente (padrão: 32)")
    parser.add_argument("--tamanho", type=int, default=64,
                        help="bytes do texto de cada mensagem (padrão: 64)")
    parser.add_argument("--duracao", type=float, default=5.0,
                        help="segundos enviando em cada execução (padrão: 5)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="rodadas; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--processos", type=int, default=os.cpu_count() or 2,
                        help="processos geradores (padrão: número de CPUs)")
    parser.add_argument("--janela-por", choices=("ok", "testemunha"), default="ok",
                        help="o que libera uma vaga da janela no nosso servidor: o OK do "
                             "ENVIAR (padrão) ou a chegada da mensagem à testemunha da sala, "
                             "como no IRC, que não tem OK (comparação com o ngircd em pé de "
                             "igualdade)")
    comum.add_target_options(parser)
    comum.add_server_options(parser, "PID do servidor de --attach, para medir a CPU dele")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.membros, args.duracao, args.repeticoes = 20, 1.0, 1
    try:
        if args.attach:
            comum.loopback_target(args.attach)
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not 1 <= args.salas <= 1000 or not 2 <= args.membros <= 10_000
            or not 1 <= args.remetentes < args.membros or args.salas * args.membros > 20_000
            or not 1 <= args.janela <= 4096 or not 24 <= args.tamanho <= 4000
            or not 0 < args.duracao <= 600 or not 1 <= args.repeticoes <= 20
            or args.processos < 1):
        print("erro: parâmetros fora dos limites (os remetentes têm de ser menos que os "
              "membros: o último membro de cada sala só recebe)", file=sys.stderr)
        return 2
    if args.gerador_c and not os.access(args.gerador_c, os.X_OK):
        print(f"erro: {args.gerador_c} não é um programa executável", file=sys.stderr)
        return 2
    comum.raise_fd_limit(2 * args.salas * args.membros + 256)
    targets = comum.targets_from_args(args)
    generator = "relay_load" if args.gerador_c else "python"
    measure = run_once_c if args.gerador_c else run_once

    print(f"bench/salas.py: {args.salas} sala(s) × {args.membros} membros × {args.remetentes} "
          f"remetentes, W={args.janela}, {args.tamanho} bytes, {args.duracao:g} s por "
          f"execução, {args.repeticoes} rodadas alternando "
          f"{', '.join(t.name for t in targets)}; gerador {generator}", file=sys.stderr)
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    all_runs: list[dict] = []
    run_number = 0
    for repetition in range(args.repeticoes):
        for target in targets:
            run_number += 1
            try:
                with comum.open_target(target, args) as server:
                    run = measure(server, target, args, run_number)
            except RuntimeError as exc:
                run = {"alvo": target.name, "falha": str(exc)}
            print_run(run, repetition + 1)
            runs[target.name].append(run)
            all_runs.append(run)
    summaries = [summarize(t.name, runs[t.name]) for t in targets]
    print_table(summaries, args, generator)
    config = f"{args.salas}×{args.membros}"
    ratios = comum.ratio_rows({(config, s["alvo"]): s for s in summaries}, "entregas_por_s",
                              [config])
    comum.print_ratios("Razões de entregas/s, das mesmas rodadas (medianas)", "salas", ratios)
    if any(t.name == "ngircd" for t in targets) and args.janela_por == "ok":
        print("(IRC não confirma mensagens: no ngircd a janela de um remetente se libera quando "
              "a testemunha da sala recebe; no nosso servidor, com o OK; --janela-por "
              "testemunha faz os dois iguais)")
    comum.print_json_line(
        "salas",
        {"salas": args.salas, "membros": args.membros, "remetentes": args.remetentes,
         "janela": args.janela, "janela_por": args.janela_por, "tamanho": args.tamanho,
         "duracao_s": args.duracao,
         "repeticoes": args.repeticoes, "processos": args.processos,
         "alvos": [t.name for t in targets], "gerador": generator, "attach": args.attach},
        {"alvos": summaries, "razoes": ratios}, all_runs)
    return 1 if any(broken(r) for r in all_runs) else 0


if __name__ == "__main__":
    sys.exit(main())
