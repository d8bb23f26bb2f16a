"""An instance loads only what its configuration uses: SQLite only with --state-dir."""

import pytest


def mapped(pid, fragment):
    """Whether a file whose path contains ``fragment`` is mapped into process ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        return any(fragment in line for line in f)


@pytest.mark.parametrize("with_store", [False, True], ids=["no-state-dir", "state-dir"])
def test_sqlite_is_loaded_only_with_a_state_dir(spawn_instance, tmp_path, with_store):
    args = ["--state-dir", str(tmp_path / "state")] if with_store else []
    child = spawn_instance(*args)
    assert mapped(child.proc.pid, "_sqlite3") is with_store
