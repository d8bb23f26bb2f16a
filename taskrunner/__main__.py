"""`python -m taskrunner`: the command-line entry point."""

from taskrunner.cli import main

if __name__ == "__main__":
    main()
