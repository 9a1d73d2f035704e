"""The LiteLLM router on the ``router`` group: every placement of the inventory behind one
OpenAI-compatible API, same-alias hosts load-balanced, backups as fallbacks; with
``litellm.redis.enabled``, the Redis the routers share, and with ``litellm.database.enabled``,
LiteLLM's PostgreSQL, each on the first router host enabling it.

pyinfra inventory/lab.py deploys/router.py
Needs the secret store first (deploys/vault.py): the master key and engine keys come from it.
"""

from pyinfra import host

from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.router import litellm_router, postgres_server, redis_server
from gpufleet.routing import database_host, redis_host

spec = host_spec()

if "router" in spec.groups:
    baseline(spec)
    specs = fleet_specs()
    shared = redis_host(specs)
    if shared is not None and shared.name == spec.name:
        redis_server(spec, specs)
    database = database_host(specs)
    if database is not None and database.name == spec.name:
        postgres_server(spec, specs)
    litellm_router(spec, specs)
else:
    host.noop(f"{spec.name} is not in the router group")
