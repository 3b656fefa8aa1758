"""Click options built from the one table of defaults, :class:`taskmaster.options.Options`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from taskmaster.options import Options
from taskmaster.record import MISSING, Field, fields

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

_TYPES: dict[str, Any] = {"int": int, "int | None": int, "float": float, "float | None": float}


def _click_option(f: Field, cli_default: Any) -> Decorator:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    names = [flag, *([meta["short"]] if "short" in meta else []), f.name]
    help_text = meta["help"] + (
        f" [default: {meta['default_text']}]" if "default_text" in meta else ""
    )
    if f.type == "bool":
        return click.option(*names, is_flag=True, help=help_text)
    kind = click.Path(dir_okay=False) if meta.get("path") else _TYPES[str(f.type)]
    return click.option(
        *names,
        type=kind,
        default=cli_default,
        show_default=cli_default is not None,
        help=help_text,
    )


def table_options(**cli_defaults: Any) -> Decorator:
    """Every Options field that has help, as click options, in the table's order.

    ``cli_defaults`` overrides a default on the command line only (e.g. ``workers=None``, so
    that a worker count given twice can be told apart).
    """
    options = []
    for f in fields(Options):
        if "help" not in f.metadata:
            continue
        default = cli_defaults.get(f.name, f.default)
        if default is MISSING:
            default = None
        options.append(_click_option(f, default))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate
