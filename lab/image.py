"""The container image: its build context, its build with podman, and a local base.

    python -m lab.image build [--base IMAGE] [--tag TAG] [--keep-context DIR]
    python -m lab.image base [--tag TAG] [--suite bookworm] [--rebuild]

``build`` builds the repository's ``Containerfile`` with ``podman build --network=none``:
everything the build installs is put into its context first, on the host, where the
network is — the wheels of the runtime dependencies fetched by pip from the hash-checked
lock (``requirements/serve.txt``; the image checks the hashes again), for the base's own
Python version, and the wheel of taskrunner built from the checkout's files. ``--base`` is
any Debian-like image with ``python3`` (>= 3.11, with its venv module) and ``useradd``:
for users an official one (``docker.io/library/python:3.11-slim``), for the tests the one
``base`` makes.

``base`` makes a Debian base without a registry: ``mmdebstrap --variant=minbase`` with
python3 and its venv module, from Debian's archive, piped into ``podman import``. The podman
store is its cache: an image already there under that tag is kept (``--rebuild`` makes it
again), so a machine pays for it once.

Both take a lock (`LOCK`) while they work, so two test sessions or a test and an operator
do not build the same tag at once. Not shipped: a build needs a checkout (its Containerfile
and source); the wheel holds ``taskrunner`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_BASE = "docker.io/library/python:3.11-slim"
LOCAL_BASE = "localhost/taskrunner-base:bookworm"
DEFAULT_TAG = "localhost/taskrunner:latest"
WHEEL_CACHE = "/var/tmp/taskrunner-image-cache"
"""The lock's wheels, one directory per lock and Python version (the lock's hashes name it)."""
DEPS_REPOSITORY = "localhost/taskrunner-deps"
"""Where the dependencies' stage is kept, tagged by the lock and the base it was built from."""
STAGE_REPOSITORY = "localhost/taskrunner-stage"
"""The stage that installs taskrunner's wheel, tagged while one build lasts."""
LOCK = "/tmp/taskrunner-image.lock"
"""Held while a base or an image is made (and by the tests while they use their image)."""

BASE_PACKAGES = ("python3", "python3-venv")
# A runtime base: /usr merged by mmdebstrap's hook, not by the usrmerge package (which
# brings perl); no Recommends, no manuals, translations or docs but the copyright files.
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--aptopt=APT::Install-Recommends \"false\"",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)


class ImageError(Exception):
    """A step of a build failed; the message says which, with the tool's own words."""


@contextlib.contextmanager
def locked(path: str = LOCK) -> Iterator[None]:
    """Hold ``path``'s exclusive lock (made if missing; released when the process dies)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, cwd: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise ImageError(f"{what} failed ({' '.join(argv[:3])} ...: exit "
                         f"{done.returncode}):\n{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def image_exists(tag: str) -> bool:
    """Whether the podman store holds ``tag``."""
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def make_base(tag: str = LOCAL_BASE, suite: str = "bookworm", rebuild: bool = False) -> bool:
    """Make the local Debian base ``tag`` unless the store has it; True if it was made."""
    with locked():
        if image_exists(tag) and not rebuild:
            return False
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed (scripts/install brings it)")
        debstrap = subprocess.Popen(
            ["mmdebstrap", "--quiet", *MMDEBSTRAP_OPTIONS,
             f"--include={','.join(BASE_PACKAGES)}", suite, "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert debstrap.stdout is not None
        try:
            imported = subprocess.run(["podman", "import", "-", tag], stdin=debstrap.stdout,
                                      capture_output=True, text=True)
        finally:
            debstrap.stdout.close()
            _, errors = debstrap.communicate()
        if debstrap.returncode != 0:
            raise ImageError(f"mmdebstrap failed (exit {debstrap.returncode}):\n"
                             f"{errors.decode(errors='replace').strip()}")
        if imported.returncode != 0:
            raise ImageError(f"podman import failed:\n{imported.stderr.strip()}")
        return True


def base_python_version(base: str) -> str:
    """``X.Y`` of the base's ``python3``, asked of the base itself (no network)."""
    out = _run(["podman", "run", "--rm", "--network=none", "--pull=never",
                "--entrypoint", "python3", base, "-c",
                "import sys; print('%d.%d' % sys.version_info[:2])"],
               f"running python3 in the base {base}")
    return out.strip()


def _repo_files() -> list[str]:
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  "listing the checkout's files", cwd=REPO)
    return [name for name in listed.split("\0") if name]


def _lock_key(lock: str, python_version: str) -> str:
    with open(lock, "rb") as f:
        return f"py{python_version}-{hashlib.sha256(f.read()).hexdigest()[:16]}"


def _lock_wheels(pip: list[str], lock: str, python_version: str) -> str:
    # The lock's wheels for that Python, fetched once per lock: binary wheels only, so
    # nothing is compiled in the image. Made beside, then renamed: never half there.
    cached = os.path.join(WHEEL_CACHE, _lock_key(lock, python_version))
    if not os.path.isdir(cached):
        os.makedirs(WHEEL_CACHE, exist_ok=True)
        partial = tempfile.mkdtemp(prefix="partial-", dir=WHEEL_CACHE)
        try:
            _run([*pip, "download", "--require-hashes", "--only-binary=:all:",
                  "--python-version", python_version, "--dest", partial, "-r", lock],
                 "fetching the lock's wheels")
            os.rename(partial, cached)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return cached


def make_context(directory: str, python_version: str) -> None:
    """Fill ``directory`` as the build context: the ``Containerfile``; ``wheels/lock/``, the
    lock and its wheels for ``python_version``; ``wheels/taskrunner/``, taskrunner's wheel
    and ``requirements.txt`` that pins it by its hash."""
    lock_dir, own_dir = (os.path.join(directory, "wheels", d) for d in ("lock", "taskrunner"))
    os.makedirs(own_dir)
    shutil.copy(os.path.join(REPO, "Containerfile"), directory)
    lock = os.path.join(REPO, "requirements", "serve.txt")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    shutil.copytree(_lock_wheels(pip, lock, python_version), lock_dir)
    shutil.copy(lock, lock_dir)
    # taskrunner's own wheel, from a copy of the checkout's files (no stale build/ adds to
    # it), with the build backend of this environment (pinned; nothing fetched to build).
    with tempfile.TemporaryDirectory(prefix="taskrunner-src-") as source:
        for name in _repo_files():
            path = os.path.join(REPO, name)
            if os.path.isfile(path):  # a deleted but still tracked file is skipped
                os.makedirs(os.path.dirname(os.path.join(source, name)), exist_ok=True)
                shutil.copy2(path, os.path.join(source, name))
        _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", own_dir,
              source], "building taskrunner's wheel")
    (wheel,) = glob.glob(os.path.join(own_dir, "taskrunner-*.whl"))
    with open(wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    version = os.path.basename(wheel).split("-")[1]
    with open(os.path.join(own_dir, "requirements.txt"), "w") as f:
        f.write(f"taskrunner=={version} --hash=sha256:{digest}\n")


def build(base: str = USER_BASE, tag: str = DEFAULT_TAG, context: str | None = None) -> None:
    """Build the image ``tag`` from ``base`` (in the store, or pulled by podman before the
    build when it is a registry's), with no network during the build."""
    with locked():
        if not image_exists(base):
            _run(["podman", "pull", base], f"pulling {base}")
        with contextlib.ExitStack() as stack:
            if context is None:
                context = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="taskrunner-image-"))
            make_context(context, base_python_version(base))
            # The docker format: the OCI image format drops HEALTHCHECK.
            podman_build = ["podman", "build", "--network=none", "--pull=never", "--format",
                            "docker", "--layers", "--build-arg", f"BASE={base}",
                            "--file", os.path.join(context, "Containerfile")]
            # The dependencies' stage, tagged: kept as the cache of the next build. The stage
            # that installs taskrunner's wheel, tagged for this build only, so that it can be
            # removed afterwards (down to the dependencies, which stay): no later build can
            # use it, and the image's last step copied the venv out of it.
            _run([*podman_build, "--target", "deps", "--tag", _deps_tag(base), context],
                 f"podman build of {tag}'s dependencies")
            stage = f"{STAGE_REPOSITORY}:{uuid.uuid4().hex[:12]}"
            try:
                _run([*podman_build, "--target", "build", "--tag", stage, context],
                     f"podman build of {tag}'s venv")
                _run([*podman_build, "--tag", tag, context], f"podman build of {tag}")
            finally:
                subprocess.run(["podman", "rmi", stage], capture_output=True)


def _deps_tag(base: str) -> str:
    base_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", base],
                   f"inspecting {base}").strip()
    with open(os.path.join(REPO, "requirements", "serve.txt"), "rb") as f:
        digest = hashlib.sha256(f.read() + base_id.encode()).hexdigest()[:16]
    return f"{DEPS_REPOSITORY}:{digest}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/image", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    building = commands.add_parser("build", help="build the image from this checkout")
    building.add_argument("--base", default=USER_BASE,
                          help=f"the base image (default {USER_BASE}; {LOCAL_BASE}: the "
                          "one `base` makes, no registry needed)")
    building.add_argument("--tag", default=DEFAULT_TAG, help=f"default {DEFAULT_TAG}")
    building.add_argument("--keep-context", metavar="DIR",
                          help="make the build context in DIR (new) and keep it")
    basing = commands.add_parser("base", help="make the local Debian base with mmdebstrap")
    basing.add_argument("--tag", default=LOCAL_BASE, help=f"default {LOCAL_BASE}")
    basing.add_argument("--suite", default="bookworm", help="Debian suite (default bookworm)")
    basing.add_argument("--rebuild", action="store_true", help="make it even if it exists")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        sys.exit("scripts/image: podman is not installed (scripts/install brings it)")
    started = time.monotonic()
    try:
        if args.command == "base":
            made = make_base(args.tag, args.suite, args.rebuild)
            print(f"{args.tag}: {'made' if made else 'kept (--rebuild makes it again)'} "
                  f"in {time.monotonic() - started:.0f} s")
        else:
            build(args.base, args.tag, args.keep_context)
            print(f"{args.tag}: built from {args.base} in {time.monotonic() - started:.0f} s")
    except ImageError as exc:
        sys.exit(f"scripts/image: {exc}")


if __name__ == "__main__":
    main()
