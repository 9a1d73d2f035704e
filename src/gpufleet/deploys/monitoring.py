"""Monitoring: Prometheus (with the blackbox exporter) on the ``monitoring`` group scraping
every exporter and server the inventory implies (with Grafana and gpufleet's dashboards where
``grafana.enabled``; Alertmanager posting alerts to ``alertmanager.webhooks`` where there are
any), and NVIDIA's DCGM exporter on GPU nodes.

pyinfra inventory/lab.py deploys/monitoring.py
Targets are regenerated from the inventory on every run: a new host needs no edit.
"""

from pyinfra import host

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.grafana import grafana
from gpufleet.roles.monitoring import alertmanager, dcgm_exporter, prometheus

spec = host_spec()

if "gpu_nodes" in spec.groups:
    dcgm_exporter(spec)
if "monitoring" in spec.groups:
    baseline(spec)
    alertmanager(spec, fleet_specs())  # first: Prometheus sends to it as soon as it is told to
    prometheus(spec, fleet_specs())
    if spec.grafana.enabled:
        grafana(spec, fleet_specs())
if not {"gpu_nodes", "monitoring"} & set(spec.groups):
    host.noop(f"{spec.name} has no GPU and is not in the monitoring group")
