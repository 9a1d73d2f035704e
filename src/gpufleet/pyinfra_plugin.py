"""Checks for every inventory pyinfra runs with gpufleet installed, the
``check_inventory(__file__)`` line or not.

pyinfra runs the inventory file, then its group_data, then connects, and only then runs the
deploy files: a check in a deploy comes after every host was contacted. Before it connects it
loads the ``pyinfra.connectors`` entry points of every installed package (while it builds the
inventory), so gpufleet registers this module there; importing it makes pyinfra validate the
whole inventory before it connects to the first host (``check_before_connecting``) and cuts
its per-host costs (``gpufleet.pyinfra_costs``). It connects nothing itself: it is not an
execution connector, and naming it as one is refused.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api.exceptions import InventoryError as PyinfraInventoryError
from pyinfra.connectors.base import BaseConnector

from gpufleet.inventory import check_before_connecting
from gpufleet.pyinfra_costs import install as cut_pyinfra_costs


class InventoryChecks(BaseConnector):
    """The entry point's object: pyinfra lists it among connectors, never runs it."""

    handles_execution = False

    @staticmethod
    def make_names_data(name: Any = None) -> Any:
        raise PyinfraInventoryError(
            "@gpufleet-checks is not a connector: it validates gpufleet inventories; "
            "name your hosts (or @ssh/..., @local) instead"
        )


check_before_connecting()
cut_pyinfra_costs()
