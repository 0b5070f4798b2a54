"""GUI flood benchmark: a burst of messages into one client window, under Tk's real loop.

One ``cliente.ChatApp`` window (the real one, in a real Tk event loop)
connects to a server; another process registers and sends it N messages
(10,000 by default) as one burst, all pipelined at once. Measured:

* the time from the first byte of the burst until the last message is in the
  conversation window (its text widget), and
* the worst stall of the event loop meanwhile: a heartbeat is scheduled with
  ``after()`` every 5 ms, and the longest gap between two beats is how long
  the window could not react to anything (a click, a key, a redraw).

Tk needs an X display: ``DISPLAY`` is used when set; otherwise a private
``Xvfb`` is started (and stopped) for the run.

    python3 bench/gui_flood.py                  # 10,000 messages, 3 runs
    python3 bench/gui_flood.py --mensagens 50000 --repeticoes 1
    python3 bench/gui_flood.py --rapido         # a few seconds, for CI

Prints one line per run (stderr), a table of medians and one JSON line.
Exit status 1 if a run failed or not every message was shown.
"""

from __future__ import annotations

import argparse
import contextlib
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
# One run


def run_once(server: comum.ServerUnderTest, count: int, timeout: float) -> dict:
    import tkinter as tk

    root = tk.Tk()
    app = cliente.ChatApp(root, host=server.host, port=server.port, nick=RECEIVER)
    result: dict = {"mensagens": count}
    sender = None
    conn = None
    try:
        app.connect()
        deadline = time.monotonic() + 15
        while not app.connected and time.monotonic() < deadline:
            root.update()
            time.sleep(0.005)
        if not app.connected:
            raise RuntimeError(f"a janela não conectou: {app.status_var.get()}")

        context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        conn, child_end = context.Pipe()
        sender = context.Process(target=sender_main,
                                 args=(server.host, server.port, count, child_end), daemon=True)
        sender.start()
        child_end.close()
        if not conn.poll(30) or conn.recv()[0] != "pronto":
            raise RuntimeError("o remetente não ficou pronto")

        beats: list[float] = []
        state = {"shown_at": 0.0, "started": 0.0}
        pending: dict[str, str] = {}  # after() ids to cancel before the window goes
        last_line = f"mensagem {count - 1:06d}"
        key = protocolo.nick_key(SENDER)

        def heartbeat() -> None:
            beats.append(time.monotonic())
            pending["heartbeat"] = root.after(HEARTBEAT_MS, heartbeat)

        def check() -> None:
            conv = app.conversations.get(key)
            if (app.received >= count and conv is not None
                    and last_line in conv.text.get("end-3l", "end")):
                state["shown_at"] = time.monotonic()
                root.after(100, root.quit)  # a few more beats after the end
                return
            if time.monotonic() > state["give_up"]:
                root.quit()
                return
            root.after(1, check)

        heartbeat()
        state["give_up"] = time.monotonic() + timeout
        conn.send(("inicio", None))
        root.after(1, check)
        root.mainloop()
        root.after_cancel(pending["heartbeat"])

        if conn.poll(5):
            status, started = conn.recv()
            if status == "enviado":
                state["started"] = started
        oks = conn.recv()[1] if conn.poll(timeout) else None
        if not state["shown_at"] or not state["started"]:
            raise RuntimeError(f"só {app.received} de {count} mensagens apareceram "
                               f"em {timeout:g} s")
        window = [t for t in beats if state["started"] <= t <= state["shown_at"] + 0.1]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        result |= {
            "mostradas_s": round(state["shown_at"] - state["started"], 3),
            "pior_travada_ms": round(1000 * max(gaps, default=0.0), 1),
            "batidas": len(window),
            "recebidas": app.received,
            "oks": oks,
        }
    except (RuntimeError, OSError, EOFError, tk.TclError) as exc:
        result["falha"] = str(exc)
    finally:
        app.close()
        if conn is not None:
            conn.close()
        if sender is not None:
            sender.join(10)
            if sender.is_alive():
                sender.kill()
                sender.join()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/gui_flood.py",
        description="Mede uma rajada de mensagens chegando a uma janela do cliente: tempo "
                    "até todas aparecerem e a pior travada do laço de eventos do Tk.")
    parser.add_argument("--mensagens", type=int, default=10_000,
                        help="mensagens na rajada (padrão: 10000)")
    parser.add_argument("--repeticoes", type=int, default=3,
                        help="execuções; a tabela mostra a mediana (padrão: 3)")
    parser.add_argument("--tempo-limite", type=float, default=60.0,
                        help="segundos para desistir de uma execução (padrão: 60)")
    comum.add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rapido:
        args.mensagens, args.repeticoes = 1000, 1
    try:
        attach = comum.loopback_target(args.attach) if args.attach else None
    except ValueError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    if (not 1 <= args.mensagens <= 1_000_000 or not 1 <= args.repeticoes <= 20
            or not 0 < args.tempo_limite <= 600):
        print("erro: parâmetros fora dos limites", file=sys.stderr)
        return 2
    if cliente.tk is None:
        print("erro: este Python não tem tkinter", file=sys.stderr)
        return 2

    print(f"bench/gui_flood.py: rajada de {args.mensagens} mensagens, "
          f"{args.repeticoes} execuções", file=sys.stderr)
    runs = []
    try:
        with x_display():
            for number in range(1, args.repeticoes + 1):
                load = comum.load_average()
                with comum.ServerUnderTest(attach, args.servidor) as server:
                    run = run_once(server, args.mensagens, args.tempo_limite)
                run["carga_1min"] = load
                runs.append(run)
                if "falha" in run:
                    print(f"  execução {number}: FALHOU: {run['falha']}", file=sys.stderr)
                else:
                    print(f"  execução {number}: {run['recebidas']} mensagens mostradas em "
                          f"{run['mostradas_s']:.3f} s, pior travada {run['pior_travada_ms']} ms "
                          f"(carga {load})", file=sys.stderr)
    except RuntimeError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 1

    good = [r for r in runs if "falha" not in r]
    summary: dict = {"mensagens": args.mensagens, "execucoes": len(good)}
    if good:
        summary["mostradas_s"] = round(comum.median([r["mostradas_s"] for r in good]), 3)
        summary["pior_travada_ms"] = round(
            comum.median([r["pior_travada_ms"] for r in good]), 1)
        comum.print_table_header(f"Rajada na janela (medianas de {len(good)} execuções)",
                                 f"{'mensagens':>9} {'mostradas s':>11} {'pior travada ms':>15}")
        print(f"{args.mensagens:>9} {summary['mostradas_s']:>11.3f} "
              f"{summary['pior_travada_ms']:>15.1f}")
    comum.print_json_line(
        "gui_flood",
        {"mensagens": args.mensagens, "repeticoes": args.repeticoes, "batida_ms": HEARTBEAT_MS,
         "attach": args.attach},
        summary, runs)
    broken = len(good) < len(runs) or any(r["recebidas"] < args.mensagens for r in good)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
