"""``python -m taskrunner.client``: the ``trun`` command line."""

from taskrunner.client.cli import main

if __name__ == "__main__":
    main()
