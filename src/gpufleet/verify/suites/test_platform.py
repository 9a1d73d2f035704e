"""The platform groups: the secret store, the router, the gateway, Prometheus."""

import shlex
import time

from gpufleet.model_cache import CACHE_PATH, cache_host, cached_files
from gpufleet.operations.downloads import stamp_path
from gpufleet.vault import ca_file
from gpufleet.verify import applies, applies_in_fleet, assert_running, http_get

RULES_FIRST_EVALUATION_S = 120
"""Prometheus evaluates rule groups every minute by default."""


def applies_to(spec):
    return bool({"vault", "router", "gateway", "monitoring"} & set(spec.groups))


def _in(group):
    return lambda spec: group in spec.groups


@applies(_in("vault"))
def test_secret_store_runs(target):
    assert_running(target, "openbao" if target.spec.vault.flavor == "openbao" else "vault")


@applies(_in("vault"))
def test_secret_store_is_initialized_and_unsealed(target):
    url = f"https://{target.address}:{target.spec.vault.port}/v1/sys/health"
    health = http_get(url, verify=ca_file(target.spec)).json()
    assert health["initialized"], "not initialized: run deploys/vault.py"
    assert not health["sealed"], "sealed: run deploys/vault.py to unseal"


@applies(_in("router"))
def test_router_runs(target):
    assert_running(target, "litellm")


@applies(_in("router"))
def test_router_is_alive(target):
    reply = http_get(f"http://{target.address}:{target.spec.litellm.port}/health/liveliness")
    assert reply.status_code == 200


def _listens(target, addresses, port):
    for address in addresses:
        listen = f"tcp://{address}:{port}"
        assert target.host.socket(listen).is_listening, f"nothing listens on {listen}"


@applies(lambda spec: "router" in spec.groups and spec.litellm.redis.enabled)
def test_router_redis_listens_where_the_inventory_says(target):
    assert_running(target, "redis-server")
    _listens(target, target.spec.litellm.redis.bind, target.spec.litellm.redis.port)


@applies(lambda spec: "router" in spec.groups and spec.litellm.database.enabled)
def test_router_database_listens_where_the_inventory_says(target):
    assert_running(target, "postgresql")
    database = target.spec.litellm.database
    _listens(target, ["127.0.0.1", *database.bind], database.port)
    owner = target.host.check_output(
        f'runuser -u postgres -- psql -Atc "select pg_get_userbyid(datdba) from pg_database '
        f"where datname = '{database.name}'\""
    )
    assert owner == database.user, f"database {database.name} is owned by {owner or 'nobody'}"


@applies(_in("gateway"))
def test_gateway_runs_a_config_nginx_accepts(target):
    assert_running(target, "nginx")
    check = target.host.run("nginx -t")
    assert check.rc == 0, check.stderr.strip()


@applies(_in("gateway"))
def test_gateway_answers_over_tls(target):
    gateway = target.spec.gateway
    verify = ca_file(target.spec) if gateway.certificate_file is None else True
    reply = http_get(f"https://{target.address}:{gateway.https_port}/health", verify=verify)
    assert reply.status_code == 200
    plain = http_get(f"http://{target.address}:{gateway.http_port}/health", allow_redirects=False)
    assert plain.status_code == 301


@applies(_in("monitoring"))
def test_prometheus_runs_and_is_ready(target):
    assert_running(target, "prometheus")
    assert http_get(f"http://{target.address}:{target.spec.prometheus.port}/-/ready").ok


@applies(_in("monitoring"))
def test_prometheus_config_and_rules_pass_promtool(target):
    check = target.host.run("promtool check config /etc/prometheus/prometheus.yml")
    assert check.rc == 0, (check.stdout + check.stderr).strip()[-200:]
    url = f"http://{target.address}:{target.spec.prometheus.port}/api/v1/rules"

    def health() -> dict[str, str]:
        groups = http_get(url).json()["data"]["groups"]
        return {r["name"]: r["health"] for g in groups for r in g["rules"]}

    # A rule Prometheus has not evaluated yet (just started or reloaded) is "unknown": give it
    # one evaluation interval or two before calling it broken.
    deadline = time.monotonic() + RULES_FIRST_EVALUATION_S
    while "unknown" in health().values() and time.monotonic() < deadline:
        time.sleep(2)
    unhealthy = [name for name, state in health().items() if state != "ok"]
    assert not unhealthy, f"rules not evaluating: {unhealthy}"


@applies(lambda spec: "monitoring" in spec.groups and spec.grafana.enabled)
def test_grafana_runs_and_is_healthy(target):
    assert_running(target, "grafana-server")
    health = http_get(f"http://{target.address}:{target.spec.grafana.port}/api/health").json()
    assert health.get("database") == "ok", f"grafana reports {health}"


def _is_model_cache(spec, fleet):
    cache = cache_host(fleet)
    return cache is not None and cache.name == spec.name


@applies_in_fleet(_is_model_cache)
def test_model_cache_serves_every_file_the_fleet_fetches(target):
    """Each file the fleet's hosts fetch is in the cache as it was verified (its recorded
    sha256, size and time unchanged since) and NGINX serves it, whole."""
    assert_running(target, "nginx")
    settings = target.spec.model_cache
    for cached in cached_files(target.fleet):
        path = f"{settings.root}/{cached.sha256}"
        stat = target.host.run(f"stat -c '%s %Y' {shlex.quote(path)}")
        assert stat.rc == 0, f"{path} is not in the cache: run deploys/inference.py"
        recorded = target.host.run(f"cat {shlex.quote(stamp_path(path))}").stdout.split()
        assert recorded == [cached.sha256, *stat.stdout.split()], (
            f"{path} changed since it was verified"
        )
        url = f"http://127.0.0.1:{settings.port}{CACHE_PATH}{cached.sha256}"
        head = target.host.run(f"curl -sI -m 10 {shlex.quote(url)}").stdout.lower()
        status = head.splitlines()[0] if head else ""
        assert " 200" in status, f"{url} does not answer 200 ({status or 'nothing'})"
        assert f"content-length: {stat.stdout.split()[0]}" in head, f"{url} is not served whole"
