"""The operators' renderer, as the lab uses it: the inventory, nginx's config and a host's
supervisord program. Every lab module reaches the renderer through this module alone.

    inventory     the inventory and its parts (``load``, ``parse``, ``dump``,
                  ``InventoryError``, ``Instance``, ``Host``, ``Front``, ``Inventory``)
    nginx         ``http_snippet``, ``nginx_conf``, ``upstream_name``
    supervisord   ``stack_instances``, ``instance_command``, ``supervisord_program``
"""

from __future__ import annotations

import os
import sys

# until taskrunner.deploy lands: the renderer is still scripts/inventory.py and
# scripts/render.py, imported by their bare names (then: from taskrunner.deploy import
# inventory, nginx, supervisord).
_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

import inventory  # noqa: E402
import render as nginx  # noqa: E402
import render as supervisord  # noqa: E402

__all__ = ["inventory", "nginx", "supervisord"]
