"""DataFusion and catalog exceptions as typed engine errors, with one-line messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from catalog import AlreadyExists, CatalogError, NamespaceNotFound, TableNotFound
from engine.errors import (
    EngineError,
    InvalidQuery,
    NotAllowed,
    ObjectNotFound,
    ResourceExhausted,
)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn DataFusion and catalog exceptions into typed engine errors."""
    try:
        yield
    except (EngineError, AlreadyExists):
        raise
    except (TableNotFound, NamespaceNotFound) as exc:
        raise ObjectNotFound(str(exc)) from None
    except CatalogError as exc:
        raise InvalidQuery(str(exc)) from None
    except Exception as exc:
        raise classify_datafusion_error(exc) from None


_PREFIXES = re.compile(
    r"^(DataFusion error: |Error during planning: |SQL error: |Execution error: |"
    r"Schema error: |Optimizer rule '[^']*' failed\s*(caused by)?\s*|Internal error: )+"
)


def one_line(message: str) -> str:
    text = " ".join(message.split())
    text = _PREFIXES.sub("", text)
    return text[:500]


def classify_datafusion_error(exc: Exception) -> EngineError:
    message = one_line(str(exc))
    lowered = message.lower()
    if "resources exhausted" in lowered or ("memory" in lowered and "exhaust" in lowered):
        return ResourceExhausted(f"query exceeded its memory limit: {message}")
    if re.search(r"(ddl|dml|statement) not supported", lowered):
        return NotAllowed(f"statement not allowed on this server: {message}")
    if re.search(r"table '.*' not found|no table named|schema '.*' (does not exist|not found)",
                 lowered):
        return ObjectNotFound(message)
    return InvalidQuery(message)
