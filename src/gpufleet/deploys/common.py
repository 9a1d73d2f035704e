"""Baseline for every host: apt sources, time sync, service user, node exporter; then
Tailscale where the host enables it.

pyinfra inventory/homelab.py deploys/common.py
"""

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.tailscale import tailscale

spec = host_spec()
baseline(spec)
if spec.tailscale.enabled:
    tailscale(spec, fleet_specs())
