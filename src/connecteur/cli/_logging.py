"""How ``connecteur serve`` logs on stderr: ``connecteur: message`` lines, or one JSON object per line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS: Final = ("text", "json")
"""``--log-format`` choices: for people, and for log collectors."""

TEXT_FORMAT: Final = "connecteur: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
    ``message``, ``pid`` (workers share stderr); with an exception,
    ``exc_type`` and ``exc`` (the traceback, as one string); with
    ``stack_info``, ``stack``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object, without a newline."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and record.exc_info[0] is not None:
            kind = record.exc_info[0]
            entry["exc_type"] = (
                kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            )
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: json.dumps escapes every control character, but with
        # ensure_ascii=False it would let U+2028 and U+0085 through, which
        # some readers (and str.splitlines) take for line breaks.
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(log_format: str, *, verbose: bool) -> None:
    """Log to stderr in `log_format`: INFO and above when `verbose`, else WARNING and above.

    Like `logging.basicConfig`, which it calls, it does nothing when the root
    logger already has handlers (the caller configured logging itself).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
