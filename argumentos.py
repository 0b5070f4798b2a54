"""argparse in Portuguese: the one home of it for every command line of the project.

argparse writes its own words in English ("usage:", "options",
"unrecognized arguments"...), and everything a user of this project reads
is in Portuguese. ``PortugueseArgumentParser`` is an ordinary
``ArgumentParser`` with those words translated; ``servidor.py``,
``cliente.py``, ``descoberta.py``, ``empacotar.py`` and the accounts command
line all build theirs from it.
"""

from __future__ import annotations

import argparse
import sys

_ARGPARSE_TEXTS = (
    ("the following arguments are required", "faltam os argumentos"),
    ("unrecognized arguments", "argumentos não reconhecidos"),
    ("expected one argument", "falta o valor"),
    ("not allowed with argument", "não pode ser usado com o argumento"),
    ("ambiguous option", "opção ambígua"),
    ("could match", "pode ser"),
    ("invalid choice", "escolha inválida"),
    ("invalid int value", "número inteiro inválido"),
    ("invalid float value", "número inválido"),
    ("ignored explicit argument", "valor não esperado"),
    ("argument ", "opção "),
)
"""argparse's own error texts and their Portuguese, applied in this order."""


class _PortugueseFormatter(argparse.HelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):  # type: ignore[no-untyped-def]
        return super().add_usage(usage, actions, groups, "uso: " if prefix is None else prefix)


def translate(message: str) -> str:
    """One of argparse's error messages, in Portuguese where it is one we know."""
    for english, portuguese in _ARGPARSE_TEXTS:
        message = message.replace(english, portuguese)
    return message


class PortugueseArgumentParser(argparse.ArgumentParser):
    """argparse with its own words in Portuguese (``uso:``, ``opções``, ``erro:``)."""

    def __init__(self, **options: object) -> None:
        super().__init__(formatter_class=_PortugueseFormatter, add_help=False,
                         **options)  # type: ignore[arg-type]
        self._optionals.title = "opções"
        self._positionals.title = "argumentos"
        self.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS,
                          help="mostra esta ajuda e sai")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: erro: {translate(message)}\n")
