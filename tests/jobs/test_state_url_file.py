"""``--state-url-file`` as a Kubernetes Secret mounts it for a non-root pod: root's, readable
by the pod's group (fsGroup) as well. Taken from root only; the same mode from anyone else,
or any right for others or a group's write, is refused as before."""

from __future__ import annotations

import os
import pwd

import pytest

from taskrunner.config import Config
from taskrunner.errors import StartupError
from taskrunner.jobs.state_url import state_url

URL = "postgresql://tr:secret@db.example:5432/jobs"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the files are made root's and nobody's: needs root")


def url_file(tmp_path, mode: int, owner: int = 0) -> str:
    path = tmp_path / "state-url"
    path.write_text(URL + "\n")
    os.chown(path, owner, pwd.getpwnam("nobody").pw_gid)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o400, 0o440, 0o640])
def test_a_root_owned_file_its_group_may_read_is_taken(tmp_path, mode):
    assert state_url(Config(state_url_file=url_file(tmp_path, mode))) == URL


@pytest.mark.parametrize("mode,owner", [
    (0o444, "root"),  # others may read
    (0o460, "root"),  # the group may write
    (0o440, "nobody"),  # a group's read is root's to give, not a user's
])
def test_others_or_a_non_root_owners_group_are_refused(tmp_path, mode, owner):
    path = url_file(tmp_path, mode, pwd.getpwnam(owner).pw_uid)
    with pytest.raises(StartupError, match=f"group or others may read or write it "
                                           f"\\(mode {mode:04o}\\)") as refused:
        state_url(Config(state_url_file=path))
    assert "secret" not in str(refused.value)
