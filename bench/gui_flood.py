"""GUI benchmark: a burst of messages into the client's window, and a page of history.

One ``cliente.ChatApp`` window (the real one, in a real Tk event loop)
connects to a server. Two figures:

* **Burst**: another process registers and sends the window N messages
  (10,000 by default) as one burst, all pipelined at once, while the window
  shows that conversation. Measured: the time from the first byte of the
  burst until the last message is drawn in the conversation pane, and the
  worst stall of the event loop meanwhile -- a heartbeat is scheduled with
  ``after()`` every 5 ms, and the longest gap between two beats is how long
  the window could not react to anything (a click, a key, a redraw).
* **History page**: #geral holds H messages (500 by default) before the
  window connects; the window asks for them in one HISTORICO page. Measured:
  the time from the request until all H lines are drawn, and the worst
  stall meanwhile.

Tk needs an X display: ``DISPLAY`` is used when set; otherwise a private
``Xvfb`` is started (and stopped) for the run.

    python3 bench/gui_flood.py                  # 10,000 messages, 3 runs
    python3 bench/gui_flood.py --mensagens 50000 --repeticoes 1
    python3 bench/gui_flood.py --rapido         # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if a run failed or not every message or history line was shown.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import multiprocessing
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import comum

sys.path.insert(0, str(comum.REPO))
import cliente  # the client lives at the repository's root
import protocolo

HEARTBEAT_MS = 5
RECEIVER = "tela"
SENDER = "rajada"
SEEDER = "semeador"
ROOM = protocolo.DEFAULT_ROOM


# --------------------------------------------------------------------------
# An X display for Tk


@contextlib.contextmanager
def x_display() -> Iterator[str]:
    """``DISPLAY`` if set, else a private Xvfb for the duration of the block."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise RuntimeError("sem DISPLAY e sem Xvfb: instale o pacote xvfb")
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(
                [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x800x24",
                 "-nolisten", "tcp"],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            os.close(write_fd)
        try:
            number = b""
            deadline = time.monotonic() + 10
            while not number.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                ready = select.select([read_fd], [], [], max(remaining, 0))[0]
                chunk = os.read(read_fd, 64) if ready else b""
                if not chunk:
                    raise RuntimeError("o Xvfb não informou o número do display")
                number += chunk
            os.environ["DISPLAY"] = f":{number.decode('ascii').strip()}"
            yield os.environ["DISPLAY"]
        finally:
            os.close(read_fd)
            os.environ.pop("DISPLAY", None)
            comum.stop_process(process)


# --------------------------------------------------------------------------
# The sender process


def sender_main(host: str, port: int, count: int, conn) -> None:
    """Register, wait for the signal, send the whole burst, count the OKs."""
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(f"REGISTRAR {SENDER}\n".encode())
            if sock.recv(64) != b"OK\n":
                conn.send(("falha", "registro do remetente recusado"))
                return
            burst = "".join(f"ENVIAR {RECEIVER} mensagem {i:06d}\n"
                            for i in range(count)).encode()
            conn.send(("pronto", None))
            if not conn.poll(60):
                return
            started = time.monotonic()
            sock.sendall(burst)
            conn.send(("enviado", started))
            replies = b""
            deadline = time.monotonic() + 60
            while replies.count(b"\n") < count and time.monotonic() < deadline:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                replies += chunk
            oks = replies.count(b"OK\n")
            conn.send(("fim", oks))
    except OSError as exc:
        conn.send(("falha", str(exc)))
    finally:
        conn.close()


# --------------------------------------------------------------------------
# The window, driven by its own event loop


class Window:
    """A real ``ChatApp`` in its own Tk root, with a heartbeat to see its stalls."""

    def __init__(self, server: comum.ServerUnderTest, nick: str, history_page: int) -> None:
        import tkinter as tk

        self.tk = tk
        self.root = tk.Tk(className=cliente.WM_CLASS)
        self.root.geometry("980x660")
        self.app = cliente.ChatApp(self.root, host=server.host, port=server.port, nick=nick,
                                   discover=None, sound=False, history_page=history_page)
        self.beats: list[float] = []
        self._heartbeat_id = ""

    def wait(self, condition, timeout: float, what: str) -> None:
        """Pump Tk's loop until ``condition()`` (bounded)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: não aconteceu em {timeout:g} s "
                                   f"({self.app.status.text})")
            self.root.update()
            time.sleep(0.005)

    def connect(self) -> None:
        self.app.connect()
        self.wait(lambda: self.app.connected and self.app.current is not None, 15,
                  "a janela conectar e abrir #geral")

    def run_until(self, done, timeout: float) -> float:
        """Run the real main loop with the heartbeat until ``done()``; when it was true."""
        state = {"at": 0.0, "give_up": time.monotonic() + timeout}

        def heartbeat() -> None:
            self.beats.append(time.monotonic())
            self._heartbeat_id = self.root.after(HEARTBEAT_MS, heartbeat)

        def check() -> None:
            if done():
                state["at"] = time.monotonic()
                self.root.after(100, self.root.quit)  # a few more beats after the end
                return
            if time.monotonic() > state["give_up"]:
                self.root.quit()
                return
            self.root.after(1, check)

        heartbeat()
        self.root.after(1, check)
        self.root.mainloop()
        self.root.after_cancel(self._heartbeat_id)
        return state["at"]

    def worst_stall_ms(self, start: float, end: float) -> tuple[float, int]:
        window = [t for t in self.beats if start <= t <= end + 0.1]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        return round(1000 * max(gaps, default=0.0), 1), len(window)

    def close(self) -> None:
        self.app.close()
        # Tk objects must be collected in Tk's thread, never by the next run's threads.
        gc.collect()


# --------------------------------------------------------------------------
# One burst


def run_burst(server: comum.ServerUnderTest, count: int, timeout: float) -> dict:
    window = Window(server, RECEIVER, cliente.HISTORY_PAGE)
    app = window.app
    result: dict = {"mensagens": count}
    sender = None
    conn = None
    try:
        window.connect()
        context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        conn, child_end = context.Pipe()
        sender = context.Process(target=sender_main,
                                 args=(server.host, server.port, count, child_end), daemon=True)
        sender.start()
        child_end.close()
        if not conn.poll(30) or conn.recv()[0] != "pronto":
            raise RuntimeError("o remetente não ficou pronto")
        key = protocolo.nick_key(SENDER)
        window.wait(lambda: key in app.online, 10, "o remetente aparecer na lista")
        app.open_conversation(key)  # the burst is drawn as it comes, not only counted
        last_line = f"mensagem {count - 1:06d}"

        def shown() -> bool:
            return app.received >= count and last_line in app.view.text.get("end-3l", "end")

        conn.send(("inicio", None))
        shown_at = window.run_until(shown, timeout)
        started = 0.0
        if conn.poll(5):
            status, sent_at = conn.recv()
            if status == "enviado":
                started = sent_at
        oks = conn.recv()[1] if conn.poll(timeout) else None
        if not shown_at or not started:
            raise RuntimeError(f"só {app.received} de {count} mensagens apareceram "
                               f"em {timeout:g} s")
        stall, beats = window.worst_stall_ms(started, shown_at)
        result |= {"mostradas_s": round(shown_at - started, 3), "pior_travada_ms": stall,
                   "batidas": beats, "recebidas": app.received, "oks": oks}
    except (RuntimeError, OSError, EOFError, window.tk.TclError) as exc:
        result["falha"] = str(exc)
    finally:
        window.close()
        if conn is not None:
            conn.close()
        if sender is not None:
            sender.join(10)
            if sender.is_alive():
                sender.kill()
                sender.join()
    return result


# --------------------------------------------------------------------------
# One page of history


def seed_room(host: str, port: int, count: int) -> None:
    """Put ``count`` messages in #geral (version 2, so the server keeps them with ids)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        lines = [b"OLA 2", f"REGISTRAR {SEEDER}".encode(), f"ENTRAR {ROOM}".encode()]
        lines += [f"ENVIAR {ROOM} linha de história {i:04d}, com um texto de tamanho "
                  f"comum para uma conversa".encode() for i in range(count)]
        sock.sendall(b"\n".join(lines) + b"\nSAIR\n")
        replies = b""
        deadline = time.monotonic() + 30
        while replies.count(b"\n") < count + 4 and time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            replies += chunk
        stored = sum(line.startswith(b"OK ") for line in replies.split(b"\n"))
        if stored != count:
            raise RuntimeError(f"só {stored} de {count} mensagens guardadas em {ROOM}")


def run_history(server: comum.ServerUnderTest, count: int, timeout: float) -> dict:
    result: dict = {"linhas": count}
    window = None
    try:
        seed_room(server.host, server.port, count)
        window = Window(server, f"leitor{os.getpid()}", count)
        app = window.app
        app.connect()
        asked: dict[str, float] = {}
        last_line = f"linha de história {count - 1:04d}"
        first_line = "linha de história 0000"

        def shown() -> bool:
            conv = app.current
            if conv is None or conv.name != ROOM:
                return False
            if conv.history == "loading" and "at" not in asked:
                asked["at"] = time.monotonic()  # the HISTORICO has just been queued
            text = app.view.history()
            return first_line in text and last_line in text

        shown_at = window.run_until(shown, timeout)
        if not shown_at or "at" not in asked:
            raise RuntimeError(f"o histórico de {count} linhas não apareceu em {timeout:g} s")
        drawn = sum(1 for line in app.view.history().splitlines()
                    if line.startswith("linha de história"))
        stall, beats = window.worst_stall_ms(asked["at"], shown_at)
        result |= {"historico_ms": round(1000 * (shown_at - asked["at"]), 1),
                   "pior_travada_ms": stall, "batidas": beats, "desenhadas": drawn}
    except (RuntimeError, OSError) as exc:
        result["falha"] = str(exc)
    finally:
        if window is not None:
            window.close()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/gui_flood.py",
        description="Mede uma rajada de mensagens chegando a uma janela do cliente (tempo "
                    "até todas aparecerem e a pior travada do laço de eventos do Tk) e uma "
                    "página de histórico (tempo até todas as linhas aparecerem).")
    parser.add_argument("--mensagens", type=int, default=10_000,
                        help="mensagens na rajada (padrão: 10000)")
    parser.add_argument("--historico", type=int, default=500,
                        help="linhas da página de histórico (padrão: 500, o máximo que o "
                             "servidor manda numa página)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="execuções; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--tempo-limite", type=float, default=60.0,
                        help="segundos para desistir de uma execução (padrão: 60)")
    comum.add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.mensagens, args.historico, args.repeticoes = 1000, 100, 1
    try:
        attach = comum.loopback_target(args.attach) if args.attach else None
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not 1 <= args.mensagens <= 1_000_000 or not 1 <= args.repeticoes <= 20
            or not 1 <= args.historico <= protocolo.HISTORY_MAX_LIMIT
            or not 0 < args.tempo_limite <= 600):
        print("erro: parâmetros fora dos limites", file=sys.stderr)
        return 2
    if cliente.tk is None:
        print("erro: este Python não tem tkinter", file=sys.stderr)
        return 2

    print(f"bench/gui_flood.py: rajada de {args.mensagens} mensagens e página de "
          f"{args.historico} linhas de histórico, {args.repeticoes} execuções", file=sys.stderr)
    runs = []
    try:
        with x_display():
            for number in range(1, args.repeticoes + 1):
                load = comum.load_average()
                with comum.ServerUnderTest(attach, args.servidor) as server:
                    burst = run_burst(server, args.mensagens, args.tempo_limite)
                    history = run_history(server, args.historico, args.tempo_limite)
                run = {"rajada": burst, "historico": history, "carga_1min": load}
                runs.append(run)
                report_run(number, run)
    except RuntimeError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 1

    summary = summarize(args, runs)
    comum.print_json_line(
        "gui_flood",
        {"mensagens": args.mensagens, "historico": args.historico,
         "repeticoes": args.repeticoes, "batida_ms": HEARTBEAT_MS, "attach": args.attach},
        summary, runs)
    broken = any("falha" in run[part] for run in runs for part in ("rajada", "historico"))
    broken = broken or any(run["rajada"]["recebidas"] < args.mensagens
                           or run["historico"]["desenhadas"] < args.historico for run in runs)
    return 1 if broken else 0


def report_run(number: int, run: dict) -> None:
    burst, history = run["rajada"], run["historico"]
    if "falha" in burst:
        print(f"  execução {number}: rajada FALHOU: {burst['falha']}", file=sys.stderr)
    else:
        print(f"  execução {number}: {burst['recebidas']} mensagens mostradas em "
              f"{burst['mostradas_s']:.3f} s, pior travada {burst['pior_travada_ms']} ms "
              f"(carga {run['carga_1min']})", file=sys.stderr)
    if "falha" in history:
        print(f"  execução {number}: histórico FALHOU: {history['falha']}", file=sys.stderr)
    else:
        print(f"  execução {number}: {history['desenhadas']} linhas de histórico mostradas em "
              f"{history['historico_ms']:.0f} ms, pior travada {history['pior_travada_ms']} ms",
              file=sys.stderr)


def summarize(args: argparse.Namespace, runs: list[dict]) -> dict:
    """Medians of the good runs, printed as a table; the JSON line's ``medianas``."""
    bursts = [run["rajada"] for run in runs if "falha" not in run["rajada"]]
    histories = [run["historico"] for run in runs if "falha" not in run["historico"]]
    summary: dict = {"mensagens": args.mensagens, "historico": args.historico,
                     "execucoes": len(runs)}
    if bursts:
        summary["mostradas_s"] = round(comum.median([r["mostradas_s"] for r in bursts]), 3)
        summary["pior_travada_ms"] = round(
            comum.median([r["pior_travada_ms"] for r in bursts]), 1)
        comum.print_table_header(f"Rajada na janela (medianas de {len(bursts)} execuções)",
                                 f"{'mensagens':>9} {'mostradas s':>11} {'pior travada ms':>15}")
        print(f"{args.mensagens:>9} {summary['mostradas_s']:>11.3f} "
              f"{summary['pior_travada_ms']:>15.1f}")
    if histories:
        summary["historico_ms"] = round(
            comum.median([r["historico_ms"] for r in histories]), 1)
        summary["historico_pior_travada_ms"] = round(
            comum.median([r["pior_travada_ms"] for r in histories]), 1)
        comum.print_table_header(
            f"Página de histórico (medianas de {len(histories)} execuções)",
            f"{'linhas':>9} {'mostradas ms':>12} {'pior travada ms':>15}")
        print(f"{args.historico:>9} {summary['historico_ms']:>12.1f} "
              f"{summary['historico_pior_travada_ms']:>15.1f}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
