"""``--print-completion bash|zsh``: scripts generated from the parsers, loaded in a real
bash and a real zsh, complete what a user types (taskrunner/completion.py).

bash: the script is sourced, ``complete -p`` shows it registered, and its function, called
as bash calls it on Tab (``COMP_WORDS``, ``COMP_CWORD``), offers the words. zsh: an
interactive zsh on a pseudo-terminal (zsh/zpty) evals the script and completes the line as
Tab does; the line it leaves is compared.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import PY

TRUN = [PY, "-m", "taskrunner.client"]
SERVER = [PY, "-m", "taskrunner"]


def script(entry: list[str], shell: str) -> str:
    done = subprocess.run([*entry, "--print-completion", shell], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def bash_complete(source: str, command: str, words: list[str]) -> list[str]:
    """What Tab offers in bash after ``words`` (the last one being typed)."""
    program = f"""
source /dev/stdin
spec=$(complete -p {command}) || exit 3
function=${{spec##*-F }}; function=${{function%% *}}
COMP_WORDS=({" ".join(words)}); COMP_CWORD={len(words) - 1}
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
"$function" {command} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], input=source,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize(("entry", "command", "words", "offered"), [
    (TRUN, "trun", ["trun", "r"], ["run"]),
    (TRUN, "trun", ["trun", "run", "--ti"], ["--timeout"]),
    (TRUN, "trun", ["trun", "--print-completion", ""], ["bash", "zsh"]),
    (SERVER, "taskrunner", ["taskrunner", "--max-con"], ["--max-connections"]),
], ids=["trun-subcommand", "trun-run-option", "trun-shells", "server-flag"])
def test_bash_completes(entry, command, words, offered):
    source = script(entry, "bash")
    assert bash_complete(source, command, words) == offered


# Type a line, then complete it as Tab does and print the line between markers (split in
# the definition, so that the terminal's echo of it does not match them).
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "autoload -U compinit; compinit -u -D; eval \"\$(<$1)\""
zpty -w z 'dump() { zle expand-or-complete; print -r -- "<""<<${BUFFER}>"">>" >/dev/tty }'
zpty -w z "zle -N dump; bindkey '^T' dump"
zpty -w -n z "$2"$'\x14'
zpty -r z out '*<<<*>>>*'
zpty -d z
out=${out##*<<<}
print -r -- "${out%%>>>*}"
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (scripts/install)")
@pytest.mark.parametrize(("entry", "typed", "completed"), [
    (TRUN, "trun r", "trun run "),
    (TRUN, "trun --u", "trun --url "),
    (SERVER, "taskrunner --max-con", "taskrunner --max-connections "),
], ids=["trun-subcommand", "trun-option", "server-flag"])
def test_zsh_completes(tmp_path, entry, typed, completed):
    source = tmp_path / "completion.zsh"
    source.write_text(script(entry, "zsh"))
    driver = tmp_path / "driver.zsh"
    driver.write_text(ZSH_DRIVER)
    done = subprocess.run(["zsh", "-f", str(driver), str(source), typed], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == completed + "\n"


def test_an_unknown_shell_is_a_usage_error():
    done = subprocess.run([*TRUN, "--print-completion", "fish"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "invalid choice: 'fish'" in done.stderr
