"""Who is calling: the callers of ``--callers`` (or the one implicit caller), found by token.

The callers file is TOML: its ``realm``, then one table under ``callers`` per caller, by
name. Every key that bounds a caller is written out, with ``"instance"`` where the
instance's own setting is to hold, so that a file cut short (a copy half-written, an editor
that saved half) is refused instead of read as "no bound"::

    realm = "ci-prod"                      # the callers' namespace in a shared job index

    [callers.ci]
    token_sha256 = "9f86d081884c7d65..."  # python -m taskrunner hash-token < token
    scopes = ["run", "jobs"]               # any of run, jobs, admin
    allow = ["make", "pytest"]             # or "instance" (--allow), or "any" (no list)
    max_running = 4                        # its share of the slots; or "instance" (none)
    limits = "instance"                    # or a table naming every per-caller setting
    actions = ["restart"]                  # with the actions scope only: the actions
                                           # (--actions) it may use, or "all"

A job's owner is its realm and its caller's name (`taskrunner.jobs.index.in_view`): a caller
of another file that shares an index and a name owns nothing of this file's callers' jobs,
and a caller whose token is replaced (same realm, same name) keeps its jobs. Instances
sharing an index serve one realm (the store refuses to start beside a live sibling of
another), and a reload cannot change it.

Only the SHA-256 of each token is kept, in the file and in memory. A request's token is
hashed and compared with every caller's hash with `hmac.compare_digest`, all of them each
time, so neither the time taken nor an early exit tells a stranger which bytes matched.

A caller's limits are the instance's `Config` with its overrides put in
(`dataclasses.replace`) and built into a wrapper by the instance's own factory, so every
setting marked per-caller in `taskrunner.config` can be overridden and is checked the same
way as its flag. A file that cannot be used is refused whole (`StartupError`, one line
naming the caller and the key): at startup the instance stops; on a reload the old callers
stay.

Without ``--callers`` the instance has one implicit caller: ``token`` (the ``--token-file``
or ``TASKRUNNER_TOKEN`` token) or, without a token, ``anonymous``; it has every scope and
the instance's own policy, in the realm ``-`` (`DEFAULT_REALM`), which no file can name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskrunner.config import Config, per_caller_settings
from taskrunner.errors import MissingScope, SpawnError, StartupError, Unauthorized
from taskrunner.jobs.index import DEFAULT_REALM, in_view
from taskrunner.process.admission import Share
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.containment import Containment
from taskrunner.process.launcher import Policy
from taskrunner.tomlfile import read_toml

SCOPES = ("run", "jobs", "admin", "actions")
"""``run``: ``POST /run``; ``jobs``: the jobs routes, for its own jobs; ``admin``: every
job, and ``/metrics``; ``actions``: the actions its ``actions`` key names, and reading,
following and cancelling the jobs they made."""

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # never DEFAULT_REALM
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = ("token_sha256", "scopes", "allow", "max_running", "limits")
"""Every caller's keys, each required: a missing one is refused, never read as no bound."""
ALL_ACTIONS = "all"
"""A caller's ``actions`` that names every action of ``--actions``, as it is now."""
INSTANCE = "instance"
"""The value that says "the instance's own setting holds for this caller"."""


def hash_token(token: str) -> str:
    """The SHA-256 of ``token`` in hex: what the callers file keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """One caller: its name, scopes and policy (allowlist, wrapper, share)."""

    name: str
    scopes: frozenset[str]
    policy: Policy | None = None
    """None: the instance's own policy."""
    digest: bytes = field(default=b"", repr=False)
    realm: str = DEFAULT_REALM
    """The callers file's realm: with the name, what owns this caller's jobs."""
    config: Config | None = field(default=None, repr=False)
    """Its limits as a whole `Config` (None: the instance's), which an action's limits
    override key by key."""
    actions: frozenset[str] | None = None
    """The actions it may use (with the ``actions`` scope); None: every one."""

    @property
    def sees_all(self) -> bool:
        """True for ``admin``: it sees, follows and cancels every job, not only its own."""
        return "admin" in self.scopes

    def require(self, scope: str | tuple[str, ...] | None) -> None:
        """`MissingScope` unless this caller has ``scope`` (or one of them; ``admin`` covers
        ``jobs``)."""
        wanted = (scope,) if isinstance(scope, str) else scope or ()
        if scope is None or any(self.has(s) for s in wanted):
            return
        raise MissingScope(f"caller {self.name!r} lacks the {' or '.join(map(repr, wanted))} "
                           f"scope this route needs (it has: "
                           f"{', '.join(sorted(self.scopes)) or 'none'})")

    def has(self, scope: str) -> bool:
        """Does this caller have ``scope`` (``admin`` covers ``jobs``)?"""
        return scope in self.scopes or (scope == "jobs" and self.sees_all)

    def may_use(self, action: str) -> bool:
        """May this caller run the action ``action`` (it has the scope and the name)?"""
        return "actions" in self.scopes and (self.actions is None or action in self.actions)

    def owns(self, job_realm: str | None, job_caller: str | None) -> bool:
        """May this caller see a job that ``job_caller`` of ``job_realm`` submitted?"""
        return in_view(job_realm, job_caller, self.realm, None if self.sees_all else self.name)


class Callers:
    """The callers an instance knows now; replaced whole when the file is re-read."""

    def __init__(self, callers: list[Caller], open_to: Caller | None = None,
                 source: str = "", held: Mapping[str, Share] | None = None,
                 realm: str = DEFAULT_REALM) -> None:
        self.callers = callers
        self.realm = realm
        """The realm of every caller here (``-`` for the implicit one)."""
        self.open_to = open_to
        """The caller every request is, without a token (no --callers, no token)."""
        self.source = source
        # Shares still held by commands of callers this file no longer names (or names
        # without max_running): kept, so a caller named again finds its count.
        self.shares: dict[str, Share] = {
            name: share for name, share in (held or {}).items() if share.held > 0}
        self.shares.update({c.name: c.policy.share for c in callers
                            if c.policy is not None and c.policy.share is not None})

    @property
    def names(self) -> list[str]:
        """Every caller's name."""
        return [c.name for c in self.callers] or ([self.open_to.name] if self.open_to else [])

    def retire(self) -> None:
        """This set was replaced: each caller's sandbox goes once no command of it runs."""
        for caller in self.callers:
            if caller.policy is not None:
                caller.policy.containment.retire()

    def close(self) -> None:
        """Release every caller's wrappers now (at shutdown, when nothing runs)."""
        for caller in self.callers:
            if caller.policy is not None:
                caller.policy.containment.close()

    def identify(self, authorization: str | None) -> Caller:
        """The caller whose token the ``Authorization`` header carries; `Unauthorized` if none."""
        if self.open_to is not None:
            return self.open_to
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("this route requires an 'Authorization: Bearer <token>' header")
        digest = hashlib.sha256(given.strip().encode("utf-8")).digest()
        found = None
        for caller in self.callers:  # every one, matched or not: the same work for all
            if hmac.compare_digest(digest, caller.digest):
                found = caller
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return found


def implicit_callers(token: str | None) -> Callers:
    """The one implicit caller of an instance without ``--callers``: every scope, the
    instance's policy; ``token`` when there is a token, else every request is ``anonymous``."""
    scopes = frozenset(SCOPES)
    if token is None:
        return Callers([], open_to=Caller("anonymous", scopes))
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    return Callers([Caller("token", scopes, None, digest)])


ContainmentFactory = Callable[[Config, Mapping[str, str]], Containment]


def load_callers(path: str, config: Config, environ: Mapping[str, str],
                 base_env: Mapping[str, str], containment: ContainmentFactory,
                 previous: Callers | None = None) -> Callers:
    """Read the callers file at ``path``; `StartupError` (one line) if it cannot be used.

    ``containment`` builds a caller's wrapper from its `Config`; ``base_env`` is what its
    ``allow`` list is resolved through. A caller that ``previous`` knew keeps its `Share`
    (with the new limit), so its commands still running count against it.
    """
    where = f"--callers {path!r}"
    data = read_toml(path, where)
    if set(data) - {"realm", "callers"}:
        raise StartupError(f"{where}: unknown top-level key(s) "
                           f"{', '.join(sorted(set(data) - {'realm', 'callers'}))}; expected "
                           "realm and [callers.NAME]")
    realm = _realm(data.get("realm"), where, previous)
    table = data.get("callers")
    if not isinstance(table, dict) or not table:
        raise StartupError(f"{where}: no callers; expected at least one [callers.NAME] table")
    old_shares = previous.shares if previous is not None else {}
    callers: list[Caller] = []
    seen: dict[bytes, str] = {}
    try:
        for name, entry in table.items():
            caller = _caller(name, entry, f"{where}: caller {name!r}", config, environ,
                             base_env, containment, old_shares, realm)
            callers.append(caller)
            if caller.digest in seen:
                raise StartupError(f"{where}: callers {seen[caller.digest]!r} and {name!r} "
                                   "have the same token")
            seen[caller.digest] = name
    except BaseException:
        Callers(callers, realm=realm).close()  # the sandboxes made for a file that is refused
        raise
    return Callers(callers, source=path, held=old_shares, realm=realm)


def _realm(realm: Any, where: str, previous: Callers | None) -> str:
    # Required, and fixed for the instance's life: its jobs and its siblings' were checked
    # against it when it opened the index.
    if realm is None:
        raise StartupError(f"{where}: realm missing: write realm = \"NAME\" before the callers "
                           "(the namespace of their jobs in a shared job index)")
    if not isinstance(realm, str) or not _REALM.fullmatch(realm):
        raise StartupError(f"{where}: realm must be 1-64 letters, digits, '.', '-' or '_', "
                           "starting with a letter or digit")
    if previous is not None and realm != previous.realm:
        raise StartupError(f"{where}: realm {realm!r} is not {previous.realm!r}, the realm "
                           "this instance started with: a reload cannot change it (restart "
                           "every instance sharing the job index)")
    return realm


def _caller(name: str, entry: Any, where: str, config: Config, environ: Mapping[str, str],
            base_env: Mapping[str, str], containment: ContainmentFactory,
            old_shares: Mapping[str, Share], realm: str) -> Caller:
    if not _NAME.fullmatch(name):
        raise StartupError(f"{where}: a name is 1-64 letters, digits, '.', '-' or '_'")
    if not isinstance(entry, dict):
        raise StartupError(f"{where}: expected a table")
    unknown = set(entry) - {*_KEYS, "actions"}
    if unknown:
        raise StartupError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                           f"{', '.join(sorted(_KEYS))}")
    missing = [key for key in _KEYS if key not in entry]
    if missing:
        raise StartupError(
            f"{where}: {', '.join(missing)} missing: every key that bounds a caller is "
            f"written out (\"{INSTANCE}\" for the instance's own), and a file without one "
            "is refused rather than read as no bound")
    token_hash = entry.get("token_sha256")
    if not isinstance(token_hash, str) or not _HEX_SHA256.fullmatch(token_hash.lower()):
        raise StartupError(f"{where}: token_sha256 must be 64 hex digits (the SHA-256 of the "
                           "token: python -m taskrunner hash-token)")
    scopes = entry.get("scopes")
    if (not isinstance(scopes, list) or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)):
        raise StartupError(f"{where}: scopes must be a non-empty list of {', '.join(SCOPES)}")
    caller_config = _caller_config(entry["limits"], where, config)
    actions = _actions(entry, scopes, where)
    try:
        wrapper = containment(caller_config, environ)
    except StartupError as exc:
        raise StartupError(f"{where}: limits: {exc}") from None
    try:
        caller = _policed(name, entry, where, config, base_env, wrapper, old_shares,
                          bytes.fromhex(token_hash), frozenset(scopes), realm)
        return dataclasses.replace(caller, actions=actions, config=(
            None if caller_config is config else caller_config))
    except BaseException:
        wrapper.close()
        raise


def _policed(name: str, entry: dict[str, Any], where: str, config: Config,
             base_env: Mapping[str, str], wrapper: Containment,
             old_shares: Mapping[str, Share], digest: bytes, scopes: frozenset[str],
             realm: str) -> Caller:
    env = {**base_env, **wrapper.env}
    allowlist = None
    allow = entry["allow"]
    if allow == INSTANCE:
        allow = list(config.allow) if config.allow else None
    elif allow == "any":
        allow = None
    elif not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
        raise StartupError(f"{where}: allow must be a list of program names, \"{INSTANCE}\" "
                           "(the instance's --allow) or \"any\" (any program)")
    if allow is not None:
        try:
            allowlist = Allowlist(allow, env)
        except SpawnError as exc:
            raise StartupError(f"{where}: allow: {exc.message}") from None
    share = None
    limit = entry["max_running"]
    if limit != INSTANCE:
        if type(limit) is not int or limit < 1:
            raise StartupError(f"{where}: max_running must be an integer >= 1, or "
                               f"\"{INSTANCE}\" (no share of its own)")
        share = old_shares.get(name) or Share(name, limit)
        share.limit = limit
    return Caller(name, scopes, Policy(allowlist, wrapper, share), digest, realm)


def _actions(entry: dict[str, Any], scopes: list[str], where: str) -> frozenset[str] | None:
    # Written out with the actions scope (a file cut before it is refused), and only then.
    value = entry.get("actions")
    if "actions" not in scopes:
        if value is not None:
            raise StartupError(f"{where}: actions needs the 'actions' scope")
        return frozenset()
    if value is None:
        raise StartupError(f"{where}: actions missing: with the 'actions' scope, name the "
                           f"actions it may use, or \"{ALL_ACTIONS}\"")
    if value == ALL_ACTIONS:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise StartupError(f"{where}: actions must be a list of action names or "
                           f"\"{ALL_ACTIONS}\"")
    return frozenset(value)


def _caller_config(limits: Any, where: str, config: Config) -> Config:
    # The instance's Config with the caller's overrides, checked as the flags are. A table
    # names every per-caller setting: one cut off the end of a table would widen the caller.
    if limits == INSTANCE:
        return config
    if not isinstance(limits, dict):
        raise StartupError(f"{where}: limits must be \"{INSTANCE}\" or a table")
    allowed = per_caller_settings()
    changes = {}
    given = set()
    for key, value in limits.items():
        name = key.replace("-", "_")
        setting = allowed.get(name)
        if setting is None:
            raise StartupError(f"{where}: limits: {key!r} is not a per-caller setting; "
                               f"known: {', '.join(n.replace('_', '-') for n in allowed)}")
        given.add(name)
        if value == INSTANCE:
            continue
        kind = type(setting.default)
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise StartupError(f"{where}: limits: {key} must be a {kind.__name__} or "
                               f"\"{INSTANCE}\"")
        changes[name] = kind(value)
    missing = [name.replace("_", "-") for name in allowed if name not in given]
    if missing:
        raise StartupError(f"{where}: limits: {', '.join(missing)} missing: a limits table "
                           f"names every per-caller setting (\"{INSTANCE}\" for the "
                           "instance's own), or is limits = \"instance\"")
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as exc:
        raise StartupError(f"{where}: limits: {exc}") from None
