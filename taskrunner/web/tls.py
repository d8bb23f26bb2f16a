"""TLS on the instance (``--certfile``, ``--keyfile``) and protected mode's TLS half.

`server_context` builds the one `ssl.SSLContext` the instance serves with, once, at startup:
TLS 1.2 or later; on TLS 1.2 only `TLS12_CIPHERS` (the standard library's server defaults
still offer CBC suites there), TLS 1.3's suites as OpenSSL has them (all AEAD);
renegotiation off, ALPN ``http/1.1`` (Tornado speaks nothing else). Every way the files
can be unusable — missing, unreadable, not PEM, a key with a passphrase, a key that does
not belong to the certificate — is a `StartupError` naming the file and the reason, never
a traceback and never a passphrase prompt on a terminal nobody watches.

`check_protected` is protected mode's second rule: an instance reachable from other
machines serves HTTPS unless ``--insecure-http`` says a TLS proxy does it (the first rule,
a token, is `taskrunner.web.auth.load_token`'s).
"""

from __future__ import annotations

import logging
import ssl

from taskrunner.config import TLS12_CIPHERS, Config
from taskrunner.errors import StartupError
from taskrunner.web.auth import is_loopback

log = logging.getLogger("taskrunner.tls")

ALPN = ["http/1.1"]


# What OpenSSL's reason codes mean for someone holding the two files.
_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "EE_KEY_TOO_SMALL": "the certificate's key is too small for TLS 1.2 (at least "
                        "2048-bit RSA or a 224-bit curve)",
    "CA_MD_TOO_WEAK": "the certificate is signed with a digest too weak for TLS 1.2 "
                      "(MD5 or SHA-1)",
}


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # Called by OpenSSL only for an encrypted key: refuse instead of prompting on a tty.
    raise _EncryptedKey


def _read_pem(path: str, flag: str, marker: bytes, what: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StartupError(f"cannot read {flag} {path!r}: {exc.strerror or exc}") from None
    if marker not in data:
        raise StartupError(f"{flag} {path!r} holds no PEM {what}")


def server_context(certfile: str, keyfile: str = "") -> ssl.SSLContext:
    """The server-side TLS context for ``certfile`` (PEM, the chain after the certificate)
    and ``keyfile`` (PEM; empty: the key is in ``certfile``); raise `StartupError` if
    they cannot be used."""
    _read_pem(certfile, "--certfile", b"-----BEGIN CERTIFICATE-----", "certificate")
    if keyfile:
        _read_pem(keyfile, "--keyfile", b"PRIVATE KEY-----", "private key")
    else:
        _read_pem(certfile, "--certfile", b"PRIVATE KEY-----", "private key (or give "
                  "--keyfile)")
    files = f"--certfile {certfile!r}" + (f" and --keyfile {keyfile!r}" if keyfile else "")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(certfile, keyfile or None, password=_no_passphrase)
    except _EncryptedKey:
        raise StartupError(f"{files}: the private key is encrypted; give a key without "
                           "a passphrase, readable only by the service's user") from None
    except ssl.SSLError as exc:
        reason = _REASONS.get(exc.reason or "", "not a usable certificate and private "
                              f"key ({exc.reason or exc})")
        raise StartupError(f"{files}: {reason}") from None
    return context


def check_protected(config: Config) -> None:
    """Raise `StartupError` if the instance would serve plain HTTP to other machines
    without ``--insecure-http``: its token and every command's output would cross the
    network in clear text. With ``--insecure-http`` it starts, and says so in the log."""
    if config.certfile or is_loopback(config.address):
        return
    if config.insecure_http:
        log.warning("serving plain HTTP on %r (--insecure-http): tokens and outputs are "
                    "in clear text up to the TLS proxy in front", config.address)
        return
    raise StartupError(
        f"refusing to listen on {config.address!r} without TLS: the token and every "
        "command and its output would cross the network in clear text. Give --certfile "
        "(and --keyfile), or --insecure-http if a TLS proxy in front does it, or listen "
        "on 127.0.0.1"
    )
