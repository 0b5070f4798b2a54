"""Build the lab's one-file chat: a ``zipapp`` holding every runtime module.

``python3 empacotar.py [--saida dist/chat.pyz]`` writes an archive that any
machine with Python 3.10+ runs as is -- no installation, no venv:
``python3 chat.pyz`` opens the client, ``python3 chat.pyz servidor`` runs the
server. Only the standard library's ``zipapp`` is used.

The modules packed are every top-level ``*.py`` file of the project except
the ones in ``EXCLUDED`` (and test files), so a module added later is picked
up without touching this script. The entry point, ``__main__.py``, is
generated here (``MAIN_TEMPLATE``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

import argumentos

ROOT = Path(__file__).resolve().parent
DEFAULT_TARGET = ROOT / "dist" / "chat.pyz"
INTERPRETER = "/usr/bin/env python3"
EXCLUDED = frozenset({"empacotar.py", "conftest.py", "setup.py", "__main__.py"})
"""Top-level files that are not part of the running chat."""
REQUIRED = ("protocolo.py", "servidor.py", "cliente.py")
"""Without these the archive could not run either mode."""

MAIN_TEMPLATE = '''\
# -*- coding: utf-8 -*-
"""Ponto de entrada do chat empacotado (gerado por empacotar.py; não edite)."""

import os
import sys

MODULES = @MODULES@

HELP = """\\
Chat em rede local, num arquivo só.

uso:
  python3 %(prog)s [opções do cliente]     abre o cliente gráfico
  python3 %(prog)s cliente [opções]        o mesmo
  python3 %(prog)s servidor [opções]       roda o servidor do chat
  python3 %(prog)s descobrir [endereços]   lista os servidores da rede local

As opções de cada modo:
  python3 %(prog)s cliente --help
  python3 %(prog)s servidor --help

Módulos incluídos: %(modules)s
"""


def main(argv):
    if sys.version_info < (3, 10):
        sys.stderr.write("erro: o chat precisa do Python 3.10 ou mais novo\\n")
        return 1
    if argv[:1] in (["-h"], ["--help"], ["ajuda"]):
        prog = os.path.basename(sys.argv[0]) or "chat.pyz"
        print(HELP % {"prog": prog, "modules": ", ".join(MODULES)})
        return 0
    if argv[:1] == ["servidor"]:
        import servidor
        return servidor.main(argv[1:])
    if argv[:1] == ["descobrir"]:
        import descoberta
        return descoberta.main(argv[1:])
    if argv[:1] == ["cliente"]:
        argv = argv[1:]
    import cliente
    return cliente.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


class PackagingError(Exception):
    """Why the archive could not be built (a message for the user, in Portuguese)."""


def modules_to_pack(root: Path = ROOT) -> list[Path]:
    """The top-level modules of ``root`` that the running chat needs, sorted by name."""
    modules = sorted(path for path in root.glob("*.py")
                     if path.is_file() and path.name not in EXCLUDED
                     and not path.name.startswith("test_") and not path.name.endswith("_test.py"))
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise PackagingError(f"faltam módulos em {root}: {', '.join(missing)}")
    return modules


def _check_compiles(modules: list[Path]) -> None:
    """Refuse to pack a module with a syntax error: better here than on a lab machine."""
    for path in modules:
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise PackagingError(f"{path.name} não compila (linha {exc.lineno}): {exc.msg}"
                                 ) from None


def main_module_source(module_names: list[str]) -> str:
    """The generated ``__main__.py``, naming the modules in its ``--help``."""
    return MAIN_TEMPLATE.replace("@MODULES@", repr(tuple(module_names)))


def build_archive(target: Path, root: Path = ROOT) -> list[str]:
    """Write the archive to ``target`` (replacing it whole); return the module names packed.

    The modules are staged in a temporary folder so nothing else of ``root``
    (caches, editor files) can slip in, and the archive is written next to
    ``target`` first and renamed, so a failed build never leaves half a file.
    """
    modules = modules_to_pack(root)
    _check_compiles(modules)
    names = [path.stem for path in modules]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".parcial")
    with tempfile.TemporaryDirectory(prefix="chat-pyz-") as staging_dir:
        staging = Path(staging_dir)
        for path in modules:
            shutil.copyfile(path, staging / path.name)
        (staging / "__main__.py").write_text(main_module_source(names), encoding="utf-8")
        try:
            zipapp.create_archive(staging, partial, interpreter=INTERPRETER, compressed=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argumentos.PortugueseArgumentParser(
        prog="empacotar.py",
        description="Gera um arquivo único (zipapp) com o chat: 'python3 chat.pyz' abre o "
                    "cliente e 'python3 chat.pyz servidor' roda o servidor. Basta o Python "
                    "3.10 ou mais novo na máquina de destino.")
    parser.add_argument("--saida", type=Path, default=DEFAULT_TARGET,
                        help="arquivo a gerar (padrão: dist/chat.pyz na pasta do projeto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = build_archive(args.saida)
    except PackagingError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"erro: não foi possível gerar {args.saida}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    size_kib = args.saida.stat().st_size / 1024
    print(f"pacote criado: {args.saida} ({size_kib:.0f} KiB; módulos: {', '.join(names)})")
    print(f"cliente:  python3 {args.saida}")
    print(f"servidor: python3 {args.saida} servidor --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
