"""``python -m bench`` (what ``scripts/bench`` runs): ``experiment NAME [ARGS]`` runs an
experiment; anything else is the load tool's command line."""

import sys


def main(argv: list[str]) -> int:
    """Hand ``argv`` to the experiment runner or to the load tool (imported only then)."""
    if argv[:1] == ["experiment"]:
        from bench import experiment

        return experiment.main(argv[1:])
    from bench import load

    return load.main(argv)


sys.exit(main(sys.argv[1:]))
