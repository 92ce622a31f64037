"""The web console: council officers keep the approved-sender list and work referrals and the
quarantine in a browser.

Its tables (users, sign-in attempts, sessions) are in `cme_mailbot.web.models`, which
`cme_mailbot.db` imports so that `create_all` makes them. Nothing is imported with the package
itself: `cme_mailbot.config` reads `cme_mailbot.web.settings`, and the sandbox worker, which reads
the configuration's limits, must not pay for SQLAlchemy at every start. The app (Starlette) is
built by `create_app`, imported lazily so that the command line does not pay for the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from starlette.applications import Starlette

    from cme_mailbot.config import Settings


def create_app(settings: Settings, engine: Engine | None = None, **kwargs: Any) -> Starlette:
    """The console as an ASGI app; see `cme_mailbot.web.app.create_app`."""
    from cme_mailbot.web.app import create_app as _create_app

    return _create_app(settings, engine, **kwargs)


__all__ = ["create_app"]
