"""The consoles fewtune prints on, and its one way to style a line: text is printed as given, never read as
rich markup (lightweight: the CLI imports it at start-up)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def plain_console(stderr: bool = False) -> Console:
    """A console that prints text as given. Messages carry the user's data (labels such as "[NAME]" or "[/]",
    paths, model names) that rich would read as markup: a stray closing tag raised MarkupError, a traceback
    in place of the one-line error it was printing. Styles go in :func:`styled`."""
    return Console(stderr=stderr, markup=False)


def styled(prefix: str, style: str, rest: str = "") -> Text:
    """``prefix`` in ``style``, then ``rest`` as plain text (never read as markup)."""
    return Text.assemble((prefix, style), rest)
