"""The fleet's secret store: Vault or OpenBao on the ``vault`` group, initialized and
unsealed from this machine, with a KV v2 mount, one AppRole per service, every fleet-issued
key generated, and a PKI engine issuing from the fleet CA.

pyinfra inventory/lab.py deploys/vault.py
Run it before deploys/router.py and deploys/gateway.py (or name them after it in one run).
"""

from pyinfra import host

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.vault import vault_server

spec = host_spec()

if "vault" in spec.groups:
    baseline(spec)
    vault_server(spec, fleet_specs())
else:
    host.noop(f"{spec.name} is not in the vault group")
