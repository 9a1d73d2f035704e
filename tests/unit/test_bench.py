"""The statistics and the endpoint list of `gpufleet bench`, without a server."""

from __future__ import annotations

import math
from pathlib import Path

from gpufleet.bench import endpoints, mean_ci95
from gpufleet.catalogue import load_catalogue
from gpufleet.inventory import validate_file
from gpufleet.planner import plan_host

ROOT = Path(__file__).parents[2]


def test_mean_and_95_percent_interval_use_students_t():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert math.isclose(half, 2.776 * math.sqrt(2.5) / math.sqrt(5), rel_tol=1e-9)
    assert math.isnan(mean_ci95([4.0])[1])  # one run says nothing about spread
    wide = mean_ci95([10.0, 12.0])[1]
    assert math.isclose(wide, 12.706 * math.sqrt(2.0) / math.sqrt(2), rel_tol=1e-9)


def test_every_placement_is_an_endpoint_with_its_claim_and_bound():
    specs = validate_file(ROOT / "inventory/homelab.py")
    found = endpoints(specs)
    catalogue = load_catalogue()
    chat = [
        p
        for s in specs.values()
        for p in plan_host(s, catalogue).placements
        if p.kind != "embedding"
    ]
    assert len(found) == len(chat)  # an embedding model has no completion to time
    assert len(chat) < sum(len(s.models) for s in specs.values())
    akshat = [e for e in found if e.host == "akshat-pc"]
    assert {e.base_url for e in akshat} == {"http://10.0.0.5:11434/v1"}
    assert all(e.gpu == "RTX 5090" for e in akshat)
    assert all(e.bound_tok_s for e in akshat)  # the planner's bound from memory bandwidth
