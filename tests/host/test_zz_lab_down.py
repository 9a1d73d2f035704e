"""Last in the lab layer: `lab down` leaves no namespace, bridge, NAT rule or process."""

import os

import pytest

from gpufleet import lab

from .conftest import LAB_INVENTORY


def test_lab_down_leaves_nothing_behind(lab_session):
    if os.environ.get("GPUFLEET_KEEP_LAB"):
        pytest.skip("GPUFLEET_KEEP_LAB is set")
    before = lab.status(LAB_INVENTORY)
    assert all(all(flags.values()) for flags in before.values()), before
    assert lab.down() == []
    after = lab.status(LAB_INVENTORY)
    assert not any(any(flags.values()) for flags in after.values()), after
