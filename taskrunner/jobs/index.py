"""The job index: what every backend of the job store shares, and how a listing is asked.

The index is where the instances of one deployment write their jobs: a SQLite file under
``--state-dir`` shared by the instances of one host, or PostgreSQL (``--state-url``) shared
by the hosts of a cluster (`taskrunner.jobs.backends`). Each instance writes only its own
jobs, and its heartbeat (the ``instances`` table). Any instance reads them all:

- `JobQuery`: a page of a listing, newest first (``created``, then ``id``), filtered by
  state, instance, owner and a search (`Search`), continued with the opaque cursor of its
  last job.
- Owners: a job belongs to its realm and caller (`in_view`): the realm is the namespace of
  the callers file that named the caller, so a caller of another file with the same name
  owns nothing of it, while a caller whose token changed keeps its jobs. Instances sharing
  an index serve one realm: one that meets a live sibling of another refuses to start.
- A listing shows a few KiB of each job's args (`summary_args`), and the SELECT reads no
  more of them than that needs (`LISTED_ARGS_HEAD`): a job's args may be megabytes.
- Lost owners: a job stored ``queued`` or ``running`` whose owner's heartbeat is older than
  ``--lost-after`` is *reported* ``lost`` (`present`), finished at that heartbeat; nothing
  is written for it. Its owner, coming back, marks it lost for good at its restart.

`Pending` and `Change` are what the store's writer hands a backend to write.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskrunner.errors import InvalidField
from taskrunner.jobs.schema import COLUMNS, Chunk, JobRecord

UNFINISHED = ("queued", "running")
MAX_PAGE = 1000
"""The most jobs one listing page holds (``limit``)."""
DEFAULT_PAGE = 100
DEFAULT_REALM = "-"
"""The realm of an instance without ``--callers`` (its one implicit caller's); a callers
file cannot name it."""


def in_view(job_realm: str | None, job_caller: str | None, realm: str,
            caller: str | None) -> bool:
    """Does a job stored with ``job_realm`` and ``job_caller`` show to ``caller`` of
    ``realm``? ``caller`` None is an admin of the realm: it sees every job of the realm,
    and those stored before jobs had a realm (their owner cannot be told any more)."""
    if caller is None:
        return job_realm == realm or job_realm is None
    return job_realm == realm and job_caller == caller


@dataclass(frozen=True)
class JobQuery:
    """One page of ``GET /jobs``: its filters, its size, where the previous page ended."""

    state: str | None = None
    instance: str | None = None
    caller: str | None = None
    """Only this caller's jobs (a caller without the ``admin`` scope); None: everyone's."""
    realm: str | None = None
    """Only the jobs `in_view` of ``caller`` of this realm; None: every realm's."""
    limit: int = DEFAULT_PAGE
    before: tuple[float, str] | None = None
    """(created, id) of the last job of the previous page: this page starts after it."""
    search: str | None = None
    """Only jobs with this text in their args, their caller or their id (`Search`)."""


MAX_SEARCH = 200
"""The longest search (``q``) a listing takes, in characters."""


@dataclass(frozen=True)
class Search:
    """``q`` of ``GET /jobs``: a substring of the args joined by spaces (``sh -c`` finds
    ``["sh", "-c", ...]``), of the caller or of the id, ASCII letters in either case. The
    index stores args as ASCII JSON, so the text is looked for as JSON writes it (a quote as
    ``\\"``, an ``é`` as ``\\u00e9``), in that JSON with each ``", "`` between two args
    made a space (inside an arg a quote is escaped, so ``", "`` is only ever between two):
    the same test in SQLite, in PostgreSQL (both through `like`) and in memory (`matches`)."""

    text: str

    @functools.cached_property
    def in_args(self) -> str:
        """The text as it stands in the args' JSON, lower-cased."""
        return json.dumps(self.text)[1:-1].lower()

    @functools.cached_property
    def raw(self) -> str:
        """The text as it stands in a caller or an id, its ASCII letters lower-cased."""
        return _ascii_lower(self.text)

    def like(self, mark: str) -> tuple[str, list[str]]:
        """The WHERE clause and its parameters: LIKE with ``%`` and ``_`` escaped, on
        lower() of each column, so both backends ignore the case of ASCII letters alike."""
        clause = " OR ".join(f"lower({column}) LIKE {mark} ESCAPE '\\'"
                             for column in (_JOINED, "caller", "id"))
        return f"({clause})", [f"%{_escape_like(p)}%"
                               for p in (self.in_args, self.raw, self.raw)]

    def matches(self, args: list[str], caller: str | None, job_id: str) -> bool:
        """The same test as `like`, on a job in memory."""
        return (self.in_args in json.dumps(args).replace(_BETWEEN, " ").lower()
                or (caller is not None and self.raw in _ascii_lower(caller))
                or self.raw in _ascii_lower(job_id))


_BETWEEN = '", "'  # what json.dumps writes between two args, and the index keeps
_JOINED = f"replace(args, '{_BETWEEN}', ' ')"


def _ascii_lower(text: str) -> str:
    # SQLite's lower() changes only ASCII letters: PostgreSQL's is given nothing else to change.
    return text.translate(_LOWER)


_LOWER = {ord(c): ord(c) + 32 for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def cursor(record_created: float, job_id: str) -> str:
    """The ``before`` value that continues a listing after this job."""
    return f"{record_created!r}~{job_id}"


CURSOR_PATTERN = r"^[0-9]{1,17}(\.[0-9]{1,17})?~[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{1,64}$"
"""What `cursor` makes (a Unix time is printed without an exponent), in the OpenAPI document
too."""


def parse_cursor(text: str) -> tuple[float, str]:
    """A ``before`` value back into (created, id); `InvalidField` if it is not one."""
    if not re.match(CURSOR_PATTERN, text):
        raise InvalidField("'before' is not a cursor of this API: pass the 'next' value of "
                           "the previous page as it was")
    created, _, job_id = text.partition("~")
    return float(created), job_id


SUMMARY_ARG_CHARS = 256
"""A listing (``GET /jobs``) shows at most this many characters of each arg,"""
SUMMARY_ARGS_CHARS = 4096
"""at most this many characters of args in all,"""
SUMMARY_ARGS = 64
"""and at most this many args: a job's summary stays a few KiB whatever its args, and
``args_truncated`` says when they were cut. ``GET /jobs/<id>`` has them whole."""


LISTED_ARGS_HEAD = 12 * SUMMARY_ARGS_CHARS + 4 * SUMMARY_ARGS + 64
"""How much of a job's stored args (JSON, ASCII) a listing's SELECT reads, so that a page
of jobs with megabytes of args each reads kilobytes of each from the index. Args whose JSON
fits are summarised exactly as from memory. Longer ones may show less (a character takes up
to 12 characters of JSON, as ``\\ud83d\\ude00``, and a long arg takes its whole length
before the next), never more, and are always said to be cut: the head holds more than a
summary keeps (64 args of quotes and ``", "``, 4,096 characters of 12 each, fit in it with
room to spare)."""


def summary_args(args: list[str]) -> tuple[list[str], bool]:
    """``args`` cut for a listing (see `SUMMARY_ARGS_CHARS`), and whether anything was cut."""
    kept: list[str] = []
    room = SUMMARY_ARGS_CHARS
    for arg in args[:SUMMARY_ARGS]:
        if room <= 0:
            break
        kept.append(arg[:min(SUMMARY_ARG_CHARS, room)])
        room -= len(kept[-1])
    truncated = len(kept) < len(args) or any(
        len(cut) < len(arg) for cut, arg in zip(kept, args, strict=False))
    return kept, truncated


_ARGS_AT = COLUMNS.index("args")
_LISTED = ", ".join(f"substr(args, 1, {LISTED_ARGS_HEAD})" if name == "args" else name
                    for name in COLUMNS)
"""The columns a listing reads: every one, the args' head only (`LISTED_ARGS_HEAD`)."""


def listed_record(row: tuple[Any, ...]) -> JobRecord:
    """A record from a row of `listing_sql`: its args as far as the row's head of them
    holds them (every whole one, and what a cut last one decodes to)."""
    record = JobRecord.from_row((*row[:_ARGS_AT], "[]", *row[_ARGS_AT + 1:]))
    return dataclasses.replace(record, args=_args_head(row[_ARGS_AT]))


def _args_head(text: str) -> list[str]:
    try:
        args: list[str] = json.loads(text)
        return args
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    args, at = [], 1  # after "["
    while at < len(text):
        if text[at] in ", ":
            at += 1
            continue
        try:
            arg, at = decoder.raw_decode(text, at)
            args.append(arg)
            continue
        except ValueError:
            pass
        tail = text[at:]  # the cut arg: drop what is left of a cut escape
        for end in range(len(tail), max(len(tail) - 12, 0), -1):
            try:
                cut = json.loads(tail[:end] + '"')
            except ValueError:
                continue
            args.append(cut[:-1] if cut and "\ud800" <= cut[-1] <= "\udbff" else cut)
            break
        break
    return args


def present(record: JobRecord, lost_owners: Mapping[str, float]) -> JobRecord:
    """The record as the API shows it: an unfinished job of a lost owner is ``lost``,
    finished at the owner's last heartbeat."""
    beat = lost_owners.get(record.instance)
    if beat is None or record.state not in UNFINISHED:
        return record
    return dataclasses.replace(record, state="lost", finished=max(record.created, beat))


def listing_sql(query: JobQuery, lost_owners: Mapping[str, float],
                mark: str) -> tuple[str, list[Any]]:
    """The SELECT of one listing page; ``mark`` is the driver's placeholder (``?``, ``%s``).

    A state filter sees states as `present` shows them: ``lost`` includes the unfinished
    jobs of lost owners, ``running`` and ``queued`` exclude them.
    """
    where: list[str] = []
    params: list[Any] = []
    lost = sorted(lost_owners)
    owners = f"({', '.join(mark for _ in lost)})"
    unfinished = f"state IN ('{UNFINISHED[0]}', '{UNFINISHED[1]}')"
    if query.state == "lost" and lost:
        where.append(f"(state = 'lost' OR ({unfinished} AND instance IN {owners}))")
        params += lost
    elif query.state is not None:
        where.append(f"state = {mark}")
        params.append(query.state)
        if query.state in UNFINISHED and lost:
            where.append(f"instance NOT IN {owners}")
            params += lost
    if query.instance is not None:
        where.append(f"instance = {mark}")
        params.append(query.instance)
    if query.caller is not None:
        where.append(f"caller = {mark}")
        params.append(query.caller)
    if query.realm is not None:  # as in_view
        where.append(f"realm = {mark}" if query.caller is not None
                     else f"(realm = {mark} OR realm IS NULL)")
        params.append(query.realm)
    if query.search is not None:
        clause, patterns = Search(query.search).like(mark)
        where.append(clause)
        params += patterns
    if query.before is not None:
        where.append(f"(created, id) < ({mark}, {mark})")
        params += list(query.before)
    sql = f"SELECT {_LISTED} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY created DESC, id DESC LIMIT {int(query.limit)}"
    return sql, params


@dataclass
class Change:
    """What one job needs written; changes of one job merge into one."""

    record: JobRecord | None = None
    chunks: list[Chunk] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Pending:
    """Every change not yet written, merged per job, and the newest heartbeat."""

    jobs: dict[str, Change] = field(default_factory=dict)
    heartbeat: float | None = None

    def __bool__(self) -> bool:
        return bool(self.jobs) or self.heartbeat is not None

    def change(self, job_id: str) -> Change:
        """The change of ``job_id``, made empty if there is none yet."""
        return self.jobs.setdefault(job_id, Change())

    def written(self) -> list[JobRecord]:
        """The job records this pending write holds."""
        return [change.record for change in self.jobs.values() if change.record is not None]


@dataclass(frozen=True)
class Opened:
    """What an instance finds of itself in the index when it starts."""

    records: list[JobRecord]
    """Its rows, oldest first."""
    heartbeat: float | None
    """Its last heartbeat (Unix time), from its previous run."""
    holder: str | None
    """Who runs under its name now: the host and address of the process that claimed it,
    or None once that process stopped cleanly."""
    age: float | None
    """Seconds since that heartbeat, by the index's clock."""


@dataclass(frozen=True)
class Sibling:
    """Another instance of the index as `Backend.claim` finds it."""

    name: str
    realm: str | None
    """The realm it serves; None if it never said (a version before realms)."""
    holder: str | None
    """The process that runs as it, or None once it stopped cleanly."""
    age: float
    """Seconds since its last heartbeat, by the index's clock."""


class Backend(Protocol):
    """A database the job store writes to (from its writer thread) and reads from (on the
    event loop, without blocking it). Every method raises one of `errors` on failure."""

    where: str
    """The database, for messages (a path, or a URL without its password)."""
    errors: tuple[type[Exception], ...]

    def open(self, instance: str) -> Opened:
        """Connect, bring the schema up to date; return what the index holds of
        ``instance``. `taskrunner.errors.StoreError` if unusable."""

    def claim(self, instance: str, holder: str, realm: str, url: str | None,
              check: Callable[[list[Sibling]], None]) -> None:
        """In one transaction that no other claim runs beside: read the other instances
        and hand them to ``check``, which raises to refuse; else write ``instance``'s
        heartbeat now, who holds its name, the realm it serves and the URL its siblings
        reach it at."""

    def release(self, instance: str, holder: str) -> None:
        """Give the name up (a clean stop): another process may take it at once, and
        nobody is sent there any more (its URL is cleared)."""

    def insert(self, records: list[JobRecord]) -> None:
        """Insert new jobs' rows, in one transaction."""

    def write(self, pending: Pending, instance: str) -> None:
        """Write states, chunks, deletions and ``instance``'s heartbeat, in one transaction."""

    def close(self) -> None:
        """Close every connection."""

    async def heartbeats(self) -> dict[str, tuple[float, float]]:
        """Each instance's last heartbeat and its age in seconds, by the database's clock."""

    async def find(self, query: JobQuery, lost_owners: Mapping[str, float]) -> list[JobRecord]:
        """One listing page (see `listing_sql`)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """One job's row."""

    async def instance_url(self, instance: str) -> str | None:
        """The URL ``instance`` advertised, while a process holds its name; else None."""

    async def output(self, job_id: str) -> list[tuple[str, bytes]]:
        """One job's stored output, in the order written."""

    async def close_reads(self) -> None:
        """Release what the reads hold (a thread, a pool); call on the event loop."""
