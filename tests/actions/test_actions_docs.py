"""docs/actions.md's examples are files the instance takes as they are written."""

import pathlib
import re

from taskrunner.actions.actionfile import load_actions
from taskrunner.config import Config

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "actions.md"


def test_every_actions_file_in_the_docs_loads(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    files = [block for block in blocks if block.startswith("[actions.")]
    assert len(files) >= 4
    for index, text in enumerate(files):
        path = tmp_path / f"{index}.toml"
        path.write_text(text)
        assert load_actions(str(path), Config(port=0)).names
