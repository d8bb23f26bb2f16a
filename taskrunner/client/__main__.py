"""``python -m taskrunner.client`` and the ``trun`` console script: the command line.

Imports the command line only here, so that a Python without the client's dependencies
(httpx) gets one line saying so, not a traceback (taskrunner/missing.py). The exit status is
trun's own failure, 125 (`taskrunner.client.cli.EXIT_FAILED`): 1 is what a remote command
may return through ``trun run``.
"""

from taskrunner.missing import exit_missing

EXIT_MISSING = 125  # = taskrunner.client.cli.EXIT_FAILED, which cannot be imported here


def main() -> None:
    """Run trun, or say in one line which dependency this Python lacks."""
    try:
        from taskrunner.client.cli import main as cli_main
    except ModuleNotFoundError as error:
        exit_missing("trun", error, "trun", EXIT_MISSING)
    cli_main()


if __name__ == "__main__":
    main()
