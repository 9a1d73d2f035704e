"""Baseline for every host: apt sources, time sync, service user, node exporter.

pyinfra inventory/homelab.py deploys/common.py
"""

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline

baseline(host_spec())
