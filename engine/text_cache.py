"""Answers kept by the text they were computed from (SQL, serialized plans).

Clients repeat their statements and one execution asks the same questions of them
several times; a text too long is computed afresh each time rather than kept, so a
cache of generated statements (a megabyte of VALUES) cannot grow to gigabytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

KEPT_LENGTH = 65_536

Result = TypeVar("Result")


def by_short_text(maxsize: int) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """An LRU cache of `maxsize` answers, keyed by all arguments, for calls whose first
    argument is at most KEPT_LENGTH long."""

    def wrap(function: Callable[..., Result]) -> Callable[..., Result]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def call(text: str | bytes, *rest: Any) -> Result:
            if len(text) > KEPT_LENGTH:
                return function(text, *rest)
            return cached(text, *rest)

        return call

    return wrap
