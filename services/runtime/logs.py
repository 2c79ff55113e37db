"""JSON logs, one line per event, so that log pipelines parse them without rules.

Each line carries the trace and span ids of the span current when it was
written, so a log line leads to its trace and a trace to its logs. Content
(questions, answers, prompts, document text) stays out of logs unless
RAG_LOG_CONTENT is true: fields named in CONTENT_FIELDS are replaced by their
length, whatever code passed them in `extra=`.
"""

import json
import logging
import sys
import time
from typing import Any

from services.runtime.telemetry import current_ids

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

CONTENT_FIELDS = frozenset(
    {"question", "answer", "prompt", "text", "texts", "chunk_text", "document_text", "content"}
)
"""`extra=` keys that hold user or document content, redacted unless allowed."""


def redacted(value: object) -> str:
    """What a content field shows when content logging is off: its size only."""
    size = len(value) if isinstance(value, str | bytes | list | tuple) else 1
    return f"<redacted: {size} {'chars' if isinstance(value, str) else 'items'}>"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; extra= fields become top-level keys."""

    def __init__(self, service: str, log_content: bool = False) -> None:
        super().__init__()
        self.service = service
        self.log_content = log_content

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                hidden = key in CONTENT_FIELDS and not self.log_content
                entry[key] = redacted(value) if hidden else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str, log_content: bool = False) -> None:
    """Route every logger to stderr as JSON lines; `log_content` lets content fields through."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, log_content))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
