"""The instance's configuration: one frozen dataclass, each setting with its default and help.

The CLI builds a `Config` from the command line (see `taskrunner.cli`); everything else
receives it explicitly. Each field's ``metadata["help"]`` is the text of its ``--flag``, so
the flag table in the README, ``--help`` and this file cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Every setting of one taskrunner instance."""

    address: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8885, "TCP port to listen on")
    default_timeout: float = _setting(
        30.0, "seconds a command may run when the request names no timeout"
    )
    max_timeout: float = _setting(3600.0, "largest timeout a request may ask for, in seconds")
    max_output: int = _setting(
        MIB, "bytes of stdout and of stderr kept per command; the rest is drained and dropped"
    )
    max_body: int = _setting(MIB, "largest request body in bytes; larger bodies get a 413")
    grace: float = _setting(
        10.0,
        "on SIGTERM/SIGINT, seconds running commands may still finish before they are killed",
    )
    max_requests: int = _setting(
        0, "after this many requests, stop accepting, drain and exit 0 so a supervisor starts "
        "a fresh process (0: never)"
    )
    recycle_lock: str = _setting(
        "", "file shared by the instances of one deployment so that only one of them "
        "recycles (--max-requests) at a time ('': no coordination)"
    )
    log_format: str = _setting("text", "log line format: text or json")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for name in ("default_timeout", "max_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.default_timeout > self.max_timeout:
            raise ValueError("default_timeout must not exceed max_timeout")
        for name in ("max_output", "max_body"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")


def settings() -> list[dataclasses.Field[Any]]:
    """The fields of `Config`, in declaration order."""
    return list(dataclasses.fields(Config))
