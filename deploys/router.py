"""The LiteLLM router on the ``router`` group: every placement of the inventory behind one
OpenAI-compatible API, same-alias hosts load-balanced, backups as fallbacks; with
``litellm.redis.enabled``, the Redis the routers share, and with ``litellm.database.enabled``,
LiteLLM's PostgreSQL, each on the first router host enabling it.

pyinfra inventory/lab.py deploys/router.py
Needs the secret store first (deploys/vault.py): the master key and engine keys come from it.

The steps ship inside gpufleet (gpufleet/deploys/router.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("router")
