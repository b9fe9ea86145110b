"""``--help`` that states every default, so the help and the README can agree.

A flag whose default is a value (not None, not off) gets ``(default: X)`` after its help, unless the help
already says what its default is. The descriptions keep their line breaks. tests/test_docs_commands.py checks
the CLIs that use it.
"""
from __future__ import annotations

import argparse


def states_a_value(default) -> bool:
    """Whether a flag's default is a value worth saying (0 is; None, off, SUPPRESS and empty are not)."""
    return not (default is None or default is False or default is argparse.SUPPRESS or default == [] or default == "")


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and states_a_value(action.default) and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text
