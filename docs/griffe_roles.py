"""Griffe extension for the docs build: Sphinx roles in docstrings become code spans.

ltau's docstrings use reStructuredText roles such as :class:`~ltau.calibration.DistanceWidening`.
Markdown has no such roles, so this turns each into inline code: the last dotted part with
a leading ``~``, the whole target otherwise. It changes the rendered docs only, never the source.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring that griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code_span, obj.docstring.value)
