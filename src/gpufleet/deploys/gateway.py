"""The NGINX gateway on the ``gateway`` group: TLS 1.3, a key and a request budget per
client, every model of the fleet behind ``/v1/`` through the LiteLLM router.

pyinfra inventory/lab.py deploys/gateway.py
Needs the secret store first (deploys/vault.py): client keys and the certificate come from it.
"""

from pyinfra import host

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.gateway import nginx_gateway

spec = host_spec()

if "gateway" in spec.groups:
    baseline(spec)
    nginx_gateway(spec, fleet_specs())
else:
    host.noop(f"{spec.name} is not in the gateway group")
