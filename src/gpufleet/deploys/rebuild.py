"""Rebuild a host after a hardware swap: read what it has, show how that differs from the
inventory and which placements move, refuse if its placements no longer fit, then run its
deploys with the hardware it really has and check that its servers answer.

gpufleet rebuild inventory/homelab.py HOST --dry    # show all of it, change nothing
gpufleet rebuild inventory/homelab.py HOST          # do it (asks first; -y does not)
"""

from pyinfra import host, logger
from pyinfra.api.exceptions import DeployError

from gpufleet.catalogue import fleet_catalogue
from gpufleet.checks import check_host
from gpufleet.deploys import include
from gpufleet.engines import serving
from gpufleet.facts.gpu import detected_gpus
from gpufleet.facts.system import MachineResources
from gpufleet.inventory import host_spec, use_spec
from gpufleet.operations import inference
from gpufleet.planner import plan_host
from gpufleet.rebuild import detected_hardware, hardware_differences, placement_moves, replanned

catalogue = fleet_catalogue()
spec = host_spec()
resources = host.get_fact(MachineResources)
hardware, unknown = detected_hardware(
    spec.hardware, detected_gpus()["pci"], resources["cores"], resources["ram_gb"], catalogue
)
for card in unknown:
    logger.warning(f"{host.print_prefix}not in the catalogue, left out of the plan: {card}")

# 1. What changed, and what moves.
differences = hardware_differences(spec.hardware, hardware)
for line in differences:
    logger.warning(f"{host.print_prefix}{line} (update the inventory to match)")
if not differences:
    host.noop("hardware matches the inventory")
rebuilt = replanned(spec, hardware)
problems = check_host(rebuilt, catalogue)
if problems:
    raise DeployError(
        f"{host.name}: with the hardware it has now, the host's data does not hold:\n"
        + "\n".join(f"  - {problem}" for problem in problems)
    )
moves = placement_moves(plan_host(spec, catalogue), plan_host(rebuilt, catalogue))
for move in moves:
    host.noop(f"re-planned: {move}")
if spec.models and not moves:
    host.noop("re-planned: every placement stays where it was")

# 2. The host's deploys, with the hardware it has.
use_spec(rebuilt)
if "gpu_nodes" in spec.groups:
    include("gpu_node")
if "proxmox_hosts" in spec.groups:
    include("proxmox_host")
include("inference")

# 3. Its servers answer (warm-up already ran after any restart).
for engine in serving(rebuilt):
    url = engine.local_url(rebuilt) + engine.health_path
    inference.healthy(name=f"Verify {engine.service}", service=engine.service, url=url)
