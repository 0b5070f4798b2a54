"""The server and client suites again, as if on Windows and on macOS.

No Windows or macOS machine runs these tests, so each platform is simulated
on Linux (``tests/simulacao.py``): the socket names that platform lacks are
removed (``MSG_DONTWAIT``, ``TCP_KEEPIDLE``...), ``select.poll`` too for
Windows, and keepalive goes through that platform's own call. The suites
then run in a child pytest, so the product modules are imported fresh under
the simulation: every fallback path is taken, and must pass the same tests.
What cannot be simulated this way (the real C library, a real firewall
prompt) is listed in the README.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from wire import REPO

SUITES = (
    "tests/test_servidor.py", "tests/test_servidor_v2.py", "tests/test_limites.py",
    "tests/test_falhas.py", "tests/test_tls.py", "tests/test_cliente_sessao.py",
    "tests/test_rede.py",
)
"""The server's and the client session's suites, and the socket helpers': what touches
the platform's socket API. (The GUI, the floods and discovery add time, not paths.)"""
CHILD_TIMEOUT = 600.0


@pytest.mark.parametrize("mode", ["windows", "macos"])
def test_the_socket_suites_pass_on_a_simulated_platform(mode):
    if os.environ.get("CHAT_SIMULAR_PLATAFORMA"):
        pytest.skip("já dentro de uma simulação")
    suites = [suite for suite in SUITES if (REPO / suite).exists()]
    env = dict(os.environ, CHAT_SIMULAR_PLATAFORMA=mode)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not gui", "-p", "no:cacheprovider",
         *suites],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=CHILD_TIMEOUT, check=False)
    summary = result.stdout.strip().splitlines()[-1:] or ["(sem saída)"]
    print(f"{mode}: {summary[0]}")
    assert result.returncode == 0, (
        f"a suíte falhou no {mode} simulado:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    assert " passed" in summary[0]
