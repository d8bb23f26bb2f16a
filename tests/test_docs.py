"""The documentation against the code: every flag is in docs/flags.md's table with its
default, every error code in docs/api.md's error table with its status, and every relative
link in the README and docs/ leads to a file that exists."""

import inspect
import os
import re

from helpers import REPO

from taskrunner import errors
from taskrunner.config import Config, settings
from taskrunner.deploy import settings as deploy_settings

# [text](target#anchor): the target up to a space or a closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(?:#([^)\s]*))?\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)

def read(path: str) -> str:
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def documents() -> list[str]:
    docs = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
                  if name.endswith(".md"))
    return ["README.md", *docs]


def _flag_rows(path: str) -> dict[str, str]:
    """The rows of ``path``'s flag table: each flag and the default it shows."""
    rows = re.findall(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \|", read(path), re.MULTILINE)
    return {flag: shown.strip().strip("`") for flag, shown in rows}


def _shown_default(name: str) -> str:
    default = getattr(Config(), name)
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return "" if default in ("", (), None) else str(default)


def test_every_flag_is_in_the_flag_table_with_its_default():
    table = _flag_rows("docs/flags.md")
    flags = {"--" + setting.name.replace("_", "-"): setting.name for setting in settings()}
    for flag, name in flags.items():
        assert flag in table, f"{flag} is missing from docs/flags.md"
        assert table[flag] == (_shown_default(name) or "(none)"), (flag, table[flag])
    assert set(table) == set(flags), f"docs/flags.md names no such flag: {set(table) - set(flags)}"


def test_the_readmes_few_flags_are_real_and_show_their_defaults():
    table = _flag_rows("README.md")
    assert 5 <= len(table) <= 12, "the README names the flags a first user needs, no more"
    for flag, shown in table.items():
        name = flag[2:].replace("-", "_")
        assert name in {setting.name for setting in settings()}, f"README: no flag {flag}"
        assert shown == (_shown_default(name) or "(none)"), (flag, shown)


def test_the_deploy_flag_table_is_the_deploy_settings():
    """docs/deploy.md's table of taskrunner-deploy's flags is `Settings`' own text: every
    field, its default, the commands that take it and its help, nothing else."""
    text = read("docs/deploy.md").split("\n### taskrunner-deploy\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(--[a-z-]+)` \| .*$", text, re.MULTILINE)
    flags = [deploy_settings.flag(s) for s in deploy_settings.settings()]
    assert rows == flags, f"docs/deploy.md's taskrunner-deploy table names {rows}, not {flags}"
    assert deploy_settings.table() in text, \
        "docs/deploy.md's taskrunner-deploy table differs from taskrunner.deploy.settings.table()"


def test_the_local_clusters_up_flags_are_its_settings():
    """docs/deploy.md's table of ``scripts/cluster up``'s flags: a row per field of its
    `Settings`, as the field makes the flag (default and help)."""
    import dataclasses

    from lab.cluster import Settings

    text = read("docs/deploy.md").split("| flag of `up` |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    fields = dataclasses.fields(Settings)
    assert rows[:len(fields)] == [deploy_settings.row(f, commands=False) for f in fields]


def test_every_error_code_is_in_the_api_error_table_with_its_status():
    """Every error a client can get; the base classes are categories to catch, not codes."""
    text = read("docs/api.md")
    classes = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.TaskRunnerError)]
    for cls in classes:
        is_category = any(other is not cls and issubclass(other, cls) for other in classes)
        if cls is errors.TaskRunnerError or is_category:
            continue
        row = re.search(rf"^\| (\d+) \| `{re.escape(cls.code)}` \|", text, re.MULTILINE)
        assert row, f"error code {cls.code} is not in docs/api.md's error table"
        assert int(row.group(1)) == cls.status, (cls.code, row.group(1), cls.status)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    made hyphens (a repeated heading's "-1" suffix is not needed here)."""
    headings = HEADING.findall(FENCE.sub("", text))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_leads_to_a_file_and_heading():
    for document in documents():
        base = os.path.dirname(os.path.join(REPO, document))
        for target, anchor in LINK.findall(read(document)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # a URL
                continue
            path = os.path.normpath(os.path.join(base, target or os.path.basename(document)))
            assert os.path.exists(path), f"{document}: link to {target}, which does not exist"
            if anchor and path.endswith(".md"):
                with open(path) as f:
                    assert anchor in anchors(f.read()), \
                        f"{document}: link to {target}#{anchor}, a heading that does not exist"


def test_the_readme_is_read_in_ten_minutes():
    """The front door stays short; the manual is docs/ (issue 12: at most 1,800 words)."""
    words = len(read("README.md").split())
    assert words <= 1800, f"README.md has {words} words; move detail into docs/"


def test_no_date_in_the_code():
    """A measured figure lives once, dated, in docs/bench.md; code keeps the contract and the
    reason, so a date in the package means a measurement that belongs there."""
    date = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    for folder, _, names in os.walk(os.path.join(REPO, "taskrunner")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    found = date.search(f.read())
                assert found is None, f"{os.path.relpath(path, REPO)}: {found.group()}"
