"""Rebuild a host after a hardware swap: read what it has, show how that differs from the
inventory and which placements move, refuse if its placements no longer fit, then take it
out of the router's rotation (drain), run its deploys with the hardware it really has,
check that its servers answer, and put it back.

gpufleet rebuild inventory/homelab.py HOST --dry    # show all of it, change nothing
gpufleet rebuild inventory/homelab.py HOST          # do it (asks first; -y does not)
"""

from pyinfra import host, logger, state
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta

from gpufleet.catalogue import fleet_catalogue
from gpufleet.checks import check_host
from gpufleet.deploys import include
from gpufleet.engines import serving
from gpufleet.facts.gpu import detected_gpus
from gpufleet.facts.system import MachineResources
from gpufleet.inventory import host_spec, use_spec
from gpufleet.operations import drain, inference
from gpufleet.planner import plan_host
from gpufleet.rebuild import detected_hardware, hardware_differences, placement_moves, replanned

DRAIN_GRACE_S = 300
"""The longest wait for the requests in flight on a drained host (a long generation)."""

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

# 2. Out of the router's rotation while its deploys change it: new requests go to the
#    model's other hosts or its fallbacks, those in flight here finish first. Only when the
#    deploys below would change something (a converged host is left in rotation).
use_spec(rebuilt)
redeploy: list[OperationMeta] = []
drain.drained(
    name="Drain: out of the router's rotation, requests in flight finish",
    ports=sorted({engine.port(rebuilt) for engine in serving(rebuilt)}),
    grace_s=DRAIN_GRACE_S,
    # Asked when the drain runs, against the host as it is then: the first operation
    # below that would change it. (Those that run only after another changed, a restart
    # or a warm-up, follow from that one.)
    _if=lambda: any(operation.will_change for operation in redeploy),
)
planned_before = len(host.op_hash_order)

# 3. The host's deploys, with the hardware it has.
if "gpu_nodes" in spec.groups:
    include("gpu_node")
if "proxmox_hosts" in spec.groups:
    include("proxmox_host")
include("inference")
redeploy += [
    state.ops[host][op_hash].operation_meta
    for op_hash in host.op_hash_order[planned_before:]
    if not state.ops[host][op_hash].global_arguments["_if"]
]

# 4. Its servers answer (warm-up already ran after any restart).
for engine in serving(rebuilt):
    url = engine.local_url(rebuilt) + engine.health_path
    inference.healthy(name=f"Verify {engine.service}", service=engine.service, url=url)

# 5. Back into rotation (also a host an earlier, failed rebuild left drained).
drain.returned(name="Return: back into the router's rotation")
