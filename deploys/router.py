"""The LiteLLM router on the ``router`` group: every placement of the inventory behind one
OpenAI-compatible API, same-alias hosts load-balanced, backups as fallbacks.

pyinfra inventory/lab.py deploys/router.py
Needs the secret store first (deploys/vault.py): the master key and engine keys come from it.
"""

from pyinfra import host

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.router import litellm_router

spec = host_spec()

if "router" in spec.groups:
    baseline(spec)
    litellm_router(spec, fleet_specs())
else:
    host.noop(f"{spec.name} is not in the router group")
