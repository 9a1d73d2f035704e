"""The NGINX gateway on the ``gateway`` group: TLS 1.3, a key and a request budget per
client, every model of the fleet behind ``/v1/`` through the LiteLLM router.

pyinfra inventory/lab.py deploys/gateway.py
Needs the secret store first (deploys/vault.py): client keys and the certificate come from it.

The steps ship inside gpufleet (gpufleet/deploys/gateway.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("gateway")
