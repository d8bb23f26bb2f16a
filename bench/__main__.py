"""``python -m taskbench`` (what ``scripts/bench`` runs)."""

from taskbench.cli import main

main()
