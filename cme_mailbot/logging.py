"""structlog set-up: JSON lines in production, readable lines on a terminal, child data scrubbed.

Every event passes `scrub_child_data`, which drops keys named after personal form fields and
replaces any value the pipeline registered as sensitive for the message in hand (the child's
name, date of birth, UPN, address...) and anything UPN-shaped. Third-party libraries' stdlib
logging goes through the same processors.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from cme_mailbot.redact import REDACTED, scrub
from cme_mailbot.schema import default_schema


def scrub_child_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    personal = default_schema().personal_ids
    for key in list(event_dict):
        value = event_dict[key]
        if key in personal:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = scrub(value)
        elif isinstance(value, (list, tuple)):
            event_dict[key] = [scrub(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, BaseException):
            event_dict[key] = scrub(f"{type(value).__name__}: {value}")
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_child_data,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # mail-parser logs attachment file names (which can name a child) at debug and info.
    for noisy in ("mailparser", "imapclient"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A tick skipped while the previous cycle runs is by design (max_instances=1, coalesce).
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # pypdf's and pikepdf's warnings can quote bytes of the file being read.
    for reader in ("pypdf", "pikepdf"):
        logging.getLogger(reader).setLevel(logging.ERROR)
