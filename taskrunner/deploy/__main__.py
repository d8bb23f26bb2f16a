"""`python -m taskrunner.deploy`: the deploy tools' command line (`taskrunner.deploy.cli`)."""

import sys

from taskrunner.deploy.cli import main

if __name__ == "__main__":
    sys.exit(main())
