"""Who may call: the bearer token and protected mode.

The token comes from ``--token-file`` (which wins) or the ``TASKRUNNER_TOKEN`` environment
variable, surrounding whitespace stripped; an empty one stops the instance. It is never
stored in `Config` (which is logged and shown); it becomes the one implicit caller
(`taskrunner.web.callers`). With ``--callers`` the callers file names the tokens instead,
and a token beside it is refused at startup: an all-scope token next to scoped callers
would make their scopes moot. `JSONHandler.prepare` identifies the caller first thing, so
every route — including unknown paths, which would otherwise tell a stranger which paths
exist — is covered; only the probes (``GET /healthz``, ``/livez``, ``/readyz``) and the
page's files are public, so a load balancer can probe without a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from taskrunner.config import Config
from taskrunner.errors import StartupError

TOKEN_ENV = "TASKRUNNER_TOKEN"



def load_token(config: Config, environ: Mapping[str, str]) -> str | None:
    """The bearer token, or None; raise `StartupError` if it is unusable (empty, or holding
    whitespace, control or non-ASCII characters inside: no client could send it) or missing
    when the instance would listen beyond loopback (protected mode)."""
    token: str | None = None
    if config.token_file:
        try:
            with open(config.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read --token-file {config.token_file!r}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise StartupError(f"--token-file {config.token_file!r} is empty")
        check_token(token, f"--token-file {config.token_file!r}")
    elif TOKEN_ENV in environ:
        token = environ[TOKEN_ENV].strip()
        if not token:  # e.g. TASKRUNNER_TOKEN="$(cat a-missing-file)": fail, don't open up
            raise StartupError(f"{TOKEN_ENV} is set but empty")
        check_token(token, TOKEN_ENV)
    if token is not None and config.callers:
        raise StartupError(
            f"--callers and a token ({'--token-file' if config.token_file else TOKEN_ENV}) "
            "are both set: give the token an entry of its own in the callers file "
            "(python -m taskrunner hash-token), and drop it")
    if token is None and not config.callers and not is_loopback(config.address):
        raise StartupError(
            f"refusing to listen on {config.address!r} without a token: anyone who can reach "
            f"it could run commands. Set --callers FILE, --token-file PATH or {TOKEN_ENV}, "
            "or listen on 127.0.0.1"
        )
    return token


def check_token(token: str, source: str) -> None:
    """`StartupError` if no client could send ``token`` in an ``Authorization`` header."""
    # A token no client can send would start an instance that refuses every request: an
    # Authorization header is one line, split at whitespace, and read as Latin-1 (so a
    # UTF-8 token never matches). The token itself is never shown, only where it breaks.
    for index, char in enumerate(token):
        if not "\x21" <= char <= "\x7e":
            what = ("a line break" if char in "\r\n" else "whitespace" if char.isspace()
                    else "a control character" if char.isascii() else "a non-ASCII character")
            raise StartupError(f"{source}: the token holds {what} at character {index + 1}; "
                               "a token is one line of printable ASCII without spaces")


def is_loopback(address: str) -> bool:
    """True when ``address`` only accepts connections from this machine."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "" (every address) or a host name: assume reachable from outside

