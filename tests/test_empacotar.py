"""Tests of ``empacotar``: the one-file chat for the lab, built and run for real.

The archive is built once per module into a temporary folder with the
command a teacher would type, then run in both modes by the same Python
that runs the tests. The server mode must listen, answer PING and exit 0 on
SIGTERM; the client mode, with no display, must say so in Portuguese.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import simulacao
from lan_virtual import read_line

import empacotar

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
"""Bound on each process run and each wait (Python starting from a zip is quick)."""


def _isolated_env(home: Path) -> dict[str, str]:
    """No display, and a home of its own: nothing the app writes lands in the real one."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "dados"),
               XDG_CONFIG_HOME=str(home / "config"), PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python3 empacotar.py --saida <tmp>/dist/chat.pyz``, run from another folder."""
    folder = tmp_path_factory.mktemp("pacote")
    target = folder / "dist" / "chat.pyz"
    done = subprocess.run([sys.executable, str(REPO / "empacotar.py"), "--saida", str(target)],
                          cwd=folder, capture_output=True, text=True, timeout=TIMEOUT,
                          env=_isolated_env(folder), check=False)
    assert done.returncode == 0, done.stderr
    assert f"pacote criado: {target}" in done.stdout
    return target


def run_archive(archive: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    """Run the archive (under the platform simulation, when one is active)."""
    return subprocess.run(simulacao.python_command(archive, *args), cwd=home,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env=_isolated_env(home), check=False)


def test_archive_holds_every_runtime_module_and_nothing_else(archive: Path) -> None:
    with zipfile.ZipFile(archive) as packed:
        names = sorted(packed.namelist())
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in packed.infolist())
    expected = sorted([p.name for p in empacotar.modules_to_pack(REPO)] + ["__main__.py"])
    assert names == expected
    for required in ("protocolo.py", "servidor.py", "cliente.py", "rede.py", "descoberta.py"):
        assert required in names
    assert "empacotar.py" not in names
    assert not any(name.startswith(("tests/", "bench/", "test_")) for name in names)


def test_archive_is_an_executable_with_a_shebang(archive: Path) -> None:
    assert archive.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert archive.stat().st_mode & stat.S_IXUSR


def test_new_modules_are_picked_up_and_tests_left_out(tmp_path: Path) -> None:
    project = tmp_path / "projeto"
    project.mkdir()
    for name in ("protocolo.py", "servidor.py", "cliente.py", "empacotar.py"):
        (project / name).write_text("x = 1\n", encoding="utf-8")
    for name in ("sessao.py", "test_algo.py", "conftest.py", "setup.py"):
        (project / name).write_text("x = 1\n", encoding="utf-8")
    (project / "notas.txt").write_text("não é módulo\n", encoding="utf-8")
    target = tmp_path / "chat.pyz"
    assert empacotar.build_archive(target, project) == ["cliente", "protocolo", "servidor",
                                                         "sessao"]
    with zipfile.ZipFile(target) as packed:
        assert sorted(packed.namelist()) == ["__main__.py", "cliente.py", "protocolo.py",
                                             "servidor.py", "sessao.py"]


def test_a_missing_or_broken_module_is_refused_in_portuguese(tmp_path: Path) -> None:
    project = tmp_path / "projeto"
    project.mkdir()
    (project / "protocolo.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(empacotar.PackagingError, match=r"faltam módulos.*servidor\.py"):
        empacotar.build_archive(tmp_path / "a.pyz", project)
    for name in ("servidor.py", "cliente.py"):
        (project / name).write_text("x = 1\n", encoding="utf-8")
    (project / "quebrado.py").write_text("def f(:\n", encoding="utf-8")
    with pytest.raises(empacotar.PackagingError, match=r"quebrado\.py não compila"):
        empacotar.build_archive(tmp_path / "a.pyz", project)
    assert not (tmp_path / "a.pyz").exists()


def test_help_explains_both_modes_in_portuguese(archive: Path, tmp_path: Path) -> None:
    done = run_archive(archive, "--help", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "chat.pyz servidor" in done.stdout
    assert "abre o cliente gráfico" in done.stdout
    assert "roda o servidor do chat" in done.stdout


def test_server_help_comes_from_the_server(archive: Path, tmp_path: Path) -> None:
    done = run_archive(archive, "servidor", "--help", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout and "porta TCP" in done.stdout


def _server_flags(archive: Path, home: Path) -> list[str]:
    """Flags that keep the server off the disk, when this version of it has them."""
    help_text = run_archive(archive, "servidor", "--help", home=home).stdout
    return ["--efemero"] if "--efemero" in help_text else []


def test_server_mode_listens_answers_ping_and_stops_on_sigterm(archive: Path,
                                                               tmp_path: Path) -> None:
    proc = subprocess.Popen(
        simulacao.python_command(archive, "servidor", "--port", "0", "--host", "127.0.0.1",
                                 *_server_flags(archive, tmp_path)),
        cwd=tmp_path, env=_isolated_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = read_line(proc.stderr, TIMEOUT)
        while "escutando" not in line:  # bounded: each read has its timeout, EOF raises
            line = read_line(proc.stderr, TIMEOUT)
        port = int(line.split(" porta ")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"PING empacotado\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = client.recv(100)
                assert chunk, "the server closed the connection"
                reply += chunk
        assert reply == b"PONG empacotado\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stderr.close()
    assert not any(tmp_path.iterdir()), "the server wrote into its working folder"


def test_client_mode_without_a_display_fails_cleanly(archive: Path, tmp_path: Path) -> None:
    done = run_archive(archive, home=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    if importlib.util.find_spec("tkinter") is None:
        assert "o tkinter não está instalado" in done.stderr
    else:
        assert "não foi possível abrir a janela" in done.stderr
    explicit = run_archive(archive, "cliente", home=tmp_path)
    assert explicit.returncode == done.returncode
    assert explicit.stderr.splitlines()[-1] == done.stderr.splitlines()[-1]


def test_build_command_reports_errors_in_portuguese(tmp_path: Path) -> None:
    blocker = tmp_path / "arquivo"
    blocker.write_text("não é uma pasta\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "empacotar.py"), "--saida",
                           str(blocker / "chat.pyz")], capture_output=True, text=True,
                          timeout=TIMEOUT, env=_isolated_env(tmp_path), check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("erro: não foi possível gerar")
    assert "Traceback" not in done.stderr
