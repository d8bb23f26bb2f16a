"""The README is the user's manual: every flag and every error code must be in it."""

import inspect
import os
import re

from conftest import REPO

from taskrunner import errors
from taskrunner.config import Config, settings


def readme() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def test_every_flag_is_in_the_readme_table_with_its_default():
    text = readme()
    for setting in settings():
        flag = "--" + setting.name.replace("_", "-")
        row = re.search(rf"^\| `{re.escape(flag)}` \| ([^|]*) \|", text, re.MULTILINE)
        assert row, f"{flag} is missing from the README's flag table"
        default = getattr(Config(), setting.name)
        shown = row.group(1).strip().strip("`")
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        expected = "" if default in ("", (), None) else str(default)
        assert shown == (expected or "(none)"), (flag, shown)


def test_every_error_code_is_in_the_readme():
    """Every error a client can get; the base classes are categories to catch, not codes."""
    text = readme()
    classes = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.TaskRunnerError)]
    for cls in classes:
        is_category = any(other is not cls and issubclass(other, cls) for other in classes)
        if cls.status < 500 and not is_category:
            assert f"`{cls.code}`" in text, f"error code {cls.code} is not documented"
