"""taskrunner's deploy tools, for operators: the configs that run instances, rendered from
one inventory (a cluster) or from `settings.Settings` (the stack on one machine).

- `inventory`: a cluster's inventory (TOML), read and checked.
- `settings`: the one dataclass of the tools' settings, which makes their command line.
- `programs`: what every target renders: the instances and their command lines, built once.
- one module per target: `nginx` (the front), `supervisord` (the instances' programs),
  `kube` (Kubernetes manifests, written by `yamltext`).
- `cli`: ``taskrunner-deploy`` (``python -m taskrunner.deploy``), the print commands.

Nothing here imports the server's modules, and none of them imports this package
(pyproject.toml's import contracts); only `taskrunner.config` is shared, for its defaults.
"""
