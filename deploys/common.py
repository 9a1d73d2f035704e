"""Baseline for every host: apt sources, time sync, service user, node exporter; then
Tailscale where the host enables it.

pyinfra inventory/homelab.py deploys/common.py

The steps ship inside gpufleet (gpufleet/deploys/common.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("common")
