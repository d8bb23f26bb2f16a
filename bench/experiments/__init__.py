"""The experiments: one module each, run by ``scripts/bench experiment NAME``.

Each module's docstring opens with its one-line purpose, and its ``main(argv) -> int``
takes the arguments after the name. An entry of docs/bench.md names the one it was
measured with.
"""
