"""Run mutmut 3 over the guard functions, each mutant against the test files that guard it.

Run by scripts/mutate inside its scratch copy of the repository (cwd), with mutmut
installed; arguments: the number of workers, then mutant names or globs (default: the
keys of `GUARDS`; a mutant outside them has no tests).

mutmut picks a mutant's tests from a first run that records which test calls which
function, in its own process only: a test that starts the instance as a child process
(startup errors, the symlink race, a seccomp filter) is never picked, though the child
would run the mutant. So here each guard function's tests are the whole test files listed
for it in `GUARDS` (mutmut's -x stops at the first failure, so a killed mutant is cheap).
Built on mutmut's internals (`collect_or_load_stats`, `state`): pinned to the version in
scripts/mutate.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys

import mutmut.__main__ as mutmut_main
from mutmut.configuration import config
from mutmut.state import state
from mutmut.utils.format_utils import mangled_name_from_mutant_name

# mutant-name glob -> the test files that should kill its mutants
GUARDS: dict[str, tuple[str, ...]] = {
    "taskrunner.web.auth.*": (
        "tests/web/test_auth.py",
    ),
    "taskrunner.process.allowlist.*": (
        "tests/process/test_allowlist.py",
        "tests/process/test_containment.py",
    ),
    "taskrunner.process.launcher.*": (
        "tests/process/test_launcher.py",
        "tests/process/test_allowlist.py",
        "tests/process/test_containment.py",
        "tests/process/test_admission.py",
        "tests/web/test_resources.py",
    ),
    "taskrunner.process.containment.*": (
        "tests/process/test_containment.py",
        "tests/process/test_allowlist.py",
    ),
    "taskrunner.web.validation.*": (
        "tests/web/test_validation.py",
        "tests/web/test_run.py",
        "tests/web/test_errors.py",
    ),
    # the body limit
    "taskrunner.web.base.xǁBodyHandlerǁ*": (
        "tests/web/test_errors.py",
        "tests/web/test_slow_clients.py",
        "tests/web/test_run.py",
    ),
    # the timeout
    "taskrunner.process.engine.xǁCommandǁ_on_timeout*": (
        "tests/web/test_run.py",
        "tests/jobs/test_jobs.py",
    ),
    # who a token is: the digest comparison, the implicit caller, the callers file
    "taskrunner.web.callers.*": (
        "tests/web/test_callers.py",
        "tests/web/test_auth.py",
    ),
    # a listing of the index: the caller's filter, states as shown, the cursor
    "taskrunner.jobs.index.*": (
        "tests/web/test_callers.py",
        "tests/jobs/test_index.py",
    ),
    # the listing without an index, and the page built from either
    "taskrunner.jobs.registry.xǁJobRegistryǁ_matching*": (
        "tests/jobs/test_jobs.py",
        "tests/web/test_callers.py",
    ),
    "taskrunner.jobs.registry.xǁJobRegistryǁpage*": (
        "tests/jobs/test_jobs.py",
        "tests/web/test_callers.py",
        "tests/jobs/test_index.py",
    ),
    # judging lost owners (the warm-up rule)
    "taskrunner.jobs.store.xǁJobStoreǁlost_owners*": (
        "tests/jobs/test_index_outage.py",
        "tests/jobs/test_index.py",
    ),
    # callback delivery and its retries
    "taskrunner.jobs.callbacks.*": (
        "tests/jobs/test_callbacks.py",
    ),
    # the sandbox's bubblewrap arguments and work roots
    "taskrunner.process.sandbox.*": (
        "tests/process/test_sandbox.py",
        "tests/web/test_sandboxed_run.py",
    ),
    # cgroup limits, kills and OOM counting (v1 here, v2 where its controllers exist)
    "taskrunner.process.cgroups.*": (
        "tests/process/test_cgroups.py",
        "tests/web/test_cgroup_limits.py",
    ),
}
DESELECT = "not ten_thousand_runs"  # 13 s of spawning per mutant, caught by others
UNKNOWN_DURATION = 2.0  # seconds, for a test mutmut's first run did not time


def collect_tests(files: set[str]) -> list[str]:
    env = {**os.environ, "MUTANT_UNDER_TEST": ""}
    listing = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-k", DESELECT, *sorted(files)],
        cwd="mutants", env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "::" in line]


def guard_files(mutant: str) -> set[str]:
    return {f for pattern, files in GUARDS.items() if fnmatch.fnmatch(mutant, pattern)
            for f in files}


def with_test_files(globs: list[str]) -> None:
    original = mutmut_main.collect_or_load_stats

    def collect_or_load_stats(runner, **kwargs):  # type: ignore[no-untyped-def]
        original(runner, **kwargs)
        mutants, _ = mutmut_main.collect_source_file_mutation_data(mutant_names=globs)
        guarding = {mangled_name_from_mutant_name(name): guard_files(name)
                    for _, name, _ in mutants}
        tests = collect_tests(set().union(*guarding.values()))
        st = state()
        for function, files in guarding.items():
            chosen = {test for test in tests if test.split("::")[0] in files}
            st.tests_by_mangled_function_name[function] = chosen
            for test in chosen:
                st.duration_by_test.setdefault(test, UNKNOWN_DURATION)

    mutmut_main.collect_or_load_stats = collect_or_load_stats


def select_test_files(globs: list[str]) -> None:
    # mutmut's first (stats) run runs every test file of its configuration; only the files
    # that guard the mutants asked for are needed (a run of a few modules stays short).
    files = {f for pattern, guarded in GUARDS.items() for f in guarded
             if any(fnmatch.fnmatch(pattern, glob) or fnmatch.fnmatch(glob, pattern)
                    for glob in globs)}
    config().pytest_add_cli_args_test_selection = sorted(files)


if __name__ == "__main__":
    workers, *names = sys.argv[1:]
    globs = names or list(GUARDS)
    select_test_files(globs)
    with_test_files(globs)
    mutmut_main._run(globs, int(workers))
