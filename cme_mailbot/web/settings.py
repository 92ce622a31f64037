"""The `[web]` section of the configuration: the console's switches, with safe defaults.

Kept free of other project imports so that `cme_mailbot.config` can import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WebSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # "auto": cookies are Secure when the request arrived over https (directly, or through a
    # proxy on 127.0.0.1 that sends X-Forwarded-Proto); "always" behind any TLS proxy.
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    session_max_hours: int = Field(default=10, ge=1, le=7 * 24)
    max_failed_sign_ins: int = Field(default=5, ge=1)  # per username, then locked
    max_failed_sign_ins_per_ip: int = Field(default=20, ge=1)  # per client address
    lockout_minutes: int = Field(default=15, ge=1)
    page_size: int = Field(default=50, ge=5, le=500)
    max_upload_bytes: int = Field(default=1024 * 1024, ge=1024)  # contacts CSV upload
    min_password_length: int = Field(default=12, ge=8)
    # /metrics answers a request bearing this token (from the named environment variable),
    # or, with none configured, only direct requests from this machine (no proxy headers).
    metrics_token_env: str | None = None


def web_settings(settings: Any) -> WebSettings:
    """The `[web]` section once it is wired into Settings; the defaults until then."""
    web = getattr(settings, "web", None)
    return web if isinstance(web, WebSettings) else WebSettings()
