"""Rebuild a host after a hardware swap: read what it has, show how that differs from the
inventory and which placements move, refuse if its placements no longer fit, then take it
out of the router's rotation (drain), run its deploys with the hardware it really has,
check that its servers answer, and put it back.

gpufleet rebuild inventory/homelab.py HOST --dry    # show all of it, change nothing
gpufleet rebuild inventory/homelab.py HOST          # do it (asks first; -y does not)

The steps ship inside gpufleet (gpufleet/deploys/rebuild.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("rebuild")
