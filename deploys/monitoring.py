"""Monitoring: Prometheus (with the blackbox exporter) on the ``monitoring`` group scraping
every exporter and server the inventory implies (with Grafana and gpufleet's dashboards where
``grafana.enabled``; Alertmanager posting alerts to ``alertmanager.webhooks`` where there are
any), and NVIDIA's DCGM exporter on GPU nodes.

pyinfra inventory/lab.py deploys/monitoring.py
Targets are regenerated from the inventory on every run: a new host needs no edit.

The steps ship inside gpufleet (gpufleet/deploys/monitoring.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("monitoring")
