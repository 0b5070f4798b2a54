"""The soak test (``bench/soak.py``) in a bounded size, and its checker.

60 random clients for 5 s against a server started for the run: every
invariant of the full soak must hold (see the module's docstring). The
checker is also fed hand-made ledgers, to prove it does see a loss, a
reordering and a refused message delivered.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

SOAK_PATH = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def load_soak():
    """``bench/`` is not a package: load the script as a module by its path.

    Its directory goes on ``sys.path`` first, as when it runs as a script, so
    its ``import comum`` finds ``bench/comum.py``.
    """
    if str(SOAK_PATH.parent) not in sys.path:
        sys.path.insert(0, str(SOAK_PATH.parent))
    spec = importlib.util.spec_from_file_location("soak", SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


soak = load_soak()


def test_bounded_soak_keeps_every_invariant():
    result = soak.run_soak(clients=60, duration=5.0, register_timeout=1.5)
    figures = result.figures
    assert result.ok, (f"semente {figures['semente']}:\n" + "\n".join(result.violations))
    # The run did what it is for: real traffic, limits hit, clients coming and going.
    assert figures["enviar_ok"] > 100 and figures["msg_recebidas"] >= figures["enviar_ok"] // 2
    assert figures["pares_estritos"] > 0
    assert figures["perdidas"] == figures["fora_de_ordem"] == figures["recusadas_entregues"] == 0
    assert figures["recusadas"].get("LIMITE", 0) > 0
    assert figures["tempo_esgotado"] > 0
    assert figures["conexoes"] > 60 and figures["fechamentos_abruptos"] > 0
    assert figures["assinantes_conferidos"] > 0
    assert figures["threads"]["depois"] == figures["threads"]["antes"]
    assert figures["threads"]["pico"] > figures["threads"]["antes"]
    assert figures["saida_sigterm"]["codigo"] == 0


# --------------------------------------------------------------------------
# The checker itself


def two_live_clients():
    """A soak whose two clients, ana and bia, are connected to the end (no sockets)."""
    run = soak.Soak(("127.0.0.1", 9), clients=2, duration=0, seed=1, register_timeout=0,
                    sources=1, server_pid=None, limits_known=False)
    for sim, nick in zip(run.sims, ["ana", "bia"], strict=True):
        sim.session = soak.Session(sim, sock=None, opened=0.0, nick=nick, nicks={nick})
        run.sessions.append(sim.session)
    return run


def ledger(run, sent, accepted, received, refused=()):
    pair = ("ana", "bia")
    run.sent[pair], run.accepted[pair] = list(sent), list(accepted)
    run.received[pair], run.refused[pair] = list(received), set(refused)
    return run.check_messages()


def test_checker_passes_an_exact_delivery():
    run = two_live_clients()
    figures = ledger(run, sent=[1, 2, 3, 4], accepted=[1, 2, 4], received=[1, 2, 4], refused={3})
    assert run.violations == []
    assert figures["pares_estritos"] == 1 and figures["perdidas"] == 0


@pytest.mark.parametrize(("received", "figure"), [
    ([1, 3], "perdidas"),
    ([2, 1, 3], "fora_de_ordem"),
    ([1, 1, 2, 3], "fora_de_ordem"),
    ([1, 2, 3, 4], "recusadas_entregues"),
    ([1, 2, 3, 9], "fantasmas"),
])
def test_checker_sees_each_kind_of_damage(received, figure):
    run = two_live_clients()
    figures = ledger(run, sent=[1, 2, 3, 4], accepted=[1, 2, 3], received=received, refused={4})
    assert figures[figure] > 0
    assert run.violations


def test_checker_forgives_unanswered_messages_of_a_sender_that_left():
    run = two_live_clients()
    run.sims[0].session.alive = False  # ana vanished with message 3 unanswered
    figures = ledger(run, sent=[1, 2, 3], accepted=[1, 2], received=[1, 2, 3])
    assert run.violations == [] and figures["pares_estritos"] == 0
    figures = ledger(run, sent=[1, 2, 3], accepted=[1, 2], received=[2, 3])
    assert figures["perdidas"] == 1


@pytest.mark.parametrize(("lived", "fair"), [(2.0, True), (0.2, False)])
def test_checker_accepts_tempo_for_garbage_but_never_too_soon(lived, fair):
    """A garbage client never registers: TEMPO may end it, not before the bound."""
    run = soak.Soak(("127.0.0.1", 9), clients=1, duration=0, seed=1, register_timeout=1.5,
                    sources=1, server_pid=None, limits_known=True)
    sim = run.sims[0]
    sim.behavior = soak.GARBAGE
    sim.session = soak.Session(sim, sock=None, opened=soak.time.monotonic() - lived)
    run.on_line(sim.session, "ERRO TEMPO nenhum comando completo a tempo; conexão encerrada")
    assert sim.session.timed_out
    assert (run.violations == []) is fair
    assert sim.session.garbage_answered == 0  # not an answer to one of its lines


def test_soak_talks_only_to_loopback():
    assert soak.parse_target("127.0.0.1:1998") == ("127.0.0.1", 1998)
    for bad in ("10.0.0.1:1998", "example.com:1998", "127.0.0.1", "127.0.0.1:0"):
        with pytest.raises(argparse.ArgumentTypeError, match="127"):
            soak.parse_target(bad)


def test_message_texts_are_checkable():
    texts = {soak.message_text(seq) for seq in range(1, 500)}
    assert len(texts) == 499
    assert all(int(text.split(" ")[0]) == seq
               for seq, text in enumerate(map(soak.message_text, range(1, 50)), start=1))
