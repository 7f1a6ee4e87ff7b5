"""Typer option helpers shared by the stage commands."""

from __future__ import annotations

import typer


def parse_bool(value) -> bool:
    """'true'/'false' as DVC renders booleans from params.yaml into a command line."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise typer.BadParameter(f"expected true or false, got {value!r}")


def bool_option(default: bool, *names: str, help: str):
    """An option that takes a value (``--flag true``), so dvc.yaml can pass ``${param}`` through."""
    return typer.Option(default, *names, parser=parse_bool, metavar="BOOL", help=help)
