"""The fleet's secret store: Vault or OpenBao on the ``vault`` group, initialized and
unsealed from this machine, with a KV v2 mount, one AppRole per service, every fleet-issued
key generated, and a PKI engine issuing from the fleet CA.

pyinfra inventory/lab.py deploys/vault.py
Run it before deploys/router.py and deploys/gateway.py (or name them after it in one run).

The steps ship inside gpufleet (gpufleet/deploys/vault.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("vault")
