"""`python -m taskrunner` and the ``taskrunner`` console script: run one instance.

Imports the command line only here, so that a Python without the server's dependencies
(Tornado, ...) gets one line saying so, exit status 1 as any failed start, not a traceback
(taskrunner/missing.py).
"""

from taskrunner.missing import exit_missing


def main() -> None:
    """Run the instance, or say in one line which dependency this Python lacks."""
    try:
        from taskrunner.cli import main as cli_main
    except ModuleNotFoundError as error:
        exit_missing("taskrunner", error, "taskrunner", 1)
    cli_main()


if __name__ == "__main__":
    main()
