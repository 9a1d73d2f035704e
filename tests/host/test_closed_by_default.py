"""Closed by default, on the lab: from a host that is neither router nor monitoring nor an
admin source, every other lab host answers on sshd alone, and the gateway's host on 80 and
443 and the model cache the scanner fetches from as well; the engines ask for their key;
the gateway routes only the router's inference API; and a client name that could break
NGINX's key map never reaches it."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time

import pytest
import requests

from gpufleet import lab
from gpufleet.exposure import exposures
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.roles.gateway import key_map

from .conftest import LAB_INVENTORY, SPECS, ssh, timed

GPU, INFRA = "10.200.0.11", "10.200.0.12"
GATEWAY = f"https://{INFRA}"
SCANNER = "lab-gpu-1"
"""Neither router, monitoring nor an admin source: what anyone else on the LAN sees (beside
the model cache it fetches its model from)."""

SCAN = r"""
import asyncio, json, sys

async def knock(host, port, gate):
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
        except (OSError, asyncio.TimeoutError):
            return None
        writer.close()
        return port

async def main(hosts):
    gate = asyncio.Semaphore(400)
    found = {}
    for host in hosts:
        ports = await asyncio.gather(*(knock(host, p, gate) for p in range(1, 65536)))
        found[host] = [p for p in ports if p]
    print(json.dumps(found))

asyncio.run(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def scan(lab_session) -> dict[str, list[int]]:
    """Every TCP port of every other lab host that accepts a connection from the scanner."""
    scanner = str(SPECS[SCANNER].lan_address)
    others = [str(s.lan_address) for n, s in SPECS.items() if n != SCANNER]
    with timed("port scan of every lab host", 900):
        result = subprocess.run(
            ["ssh", "-F", str(lab.ssh_config_path()), scanner, "python3 - " + " ".join(others)],
            input=SCAN,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
    return json.loads(result.stdout)


def test_the_scanner_is_an_outsider():
    spec = SPECS[SCANNER]
    assert not {"router", "monitoring", "gateway"} & set(spec.groups)
    admin_networks = [n for s in SPECS.values() for n in s.firewall.admin_sources]
    assert admin_networks and all(spec.lan_address not in n for n in admin_networks)


def test_from_the_lan_only_sshd_the_gateway_and_what_the_scanner_uses_answer(scan):
    """The scanner fetches its model from the model cache: that port, and sshd and the
    gateway's, are all it reaches."""
    uses = {
        name: [p for e in exposures(spec, SPECS) if SCANNER in e.clients for p in e.ports]
        for name, spec in SPECS.items()
    }
    assert uses["lab-infra-1"] == [SPECS["lab-infra-1"].model_cache.port]
    expected = {
        str(s.lan_address): sorted([22, *([80, 443] if "gateway" in s.groups else []), *uses[n]])
        for n, s in SPECS.items()
        if n != SCANNER
    }
    assert scan == expected


def _admits(table: str, source: str) -> bool:
    """Whether some ``ip saddr`` set of the listed table holds ``source``. nft lists a set's
    neighbouring addresses merged (10.200.0.16 and .17 as 10.200.0.16/31; a run as a range),
    so the set's elements are read as networks and ranges, not matched as text."""
    wanted = ipaddress.ip_network(source)
    # A set of one is listed bare: ``ip saddr 10.200.0.16``.
    for elements in re.findall(r"ip saddr (\{[^}]*\}|\S+)", table):
        for element in (e.strip() for e in elements.strip("{}").split(",")):
            if "-" in element:
                low, high = (ipaddress.ip_address(a.strip()) for a in element.split("-"))
                if low <= wanted.network_address and wanted.broadcast_address <= high:
                    return True
            elif element and wanted.subnet_of(ipaddress.ip_network(element, strict=False)):
                return True
    return False


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_host_loads_the_allow_list_it_was_given(lab_session, name):
    spec = SPECS[name]
    address = str(spec.lan_address)
    assert ssh(address, "systemctl is-active gpufleet-firewall").strip() == "active"
    table = ssh(address, "nft list table inet gpufleet")
    for exposure in exposures(spec, SPECS):
        if not exposure.guarded:
            continue
        port = exposure.ports[0]
        assert f"dport {port}" in table or f"proto-dst {port}" in table, (exposure, table)
        for source in exposure.sources:
            assert _admits(table, source), (exposure.service, source, table)


def test_llama_server_asks_for_its_key():
    key = (lab.lab_dir() / lab.LLAMACPP_KEY_FILE).read_text().strip()
    base = f"http://{GPU}:8080"
    assert requests.get(f"{base}/health", timeout=10).status_code == 200  # for the probes
    assert requests.get(f"{base}/v1/models", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert requests.get(f"{base}/metrics", headers=wrong, timeout=10).status_code == 401
    right = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{base}/v1/models", headers=right, timeout=10).status_code == 200
    # The key reaches llama-server through its environment file, never its command line.
    argv = ssh(GPU, "tr '\\0' ' ' < /proc/$(pgrep -o -x llama-server)/cmdline")
    assert key not in argv and "--api-key" not in argv


def test_the_router_reaches_the_engines_it_routes_to():
    """The allow-list lets the router in: lab-infra-1 reaches lab-gpu-1's llama-server."""
    status = ssh(INFRA, f"curl -s -o /dev/null -w '%{{http_code}}' http://{GPU}:8080/health")
    assert status == "200"


# --- the gateway: the router's inference API, nothing of its admin API ---------------------


def _request(method: str, path: str, key: str, ca: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(40):  # wait out the per-key budget other tests spent
        reply = requests.request(method, f"{GATEWAY}{path}", headers=headers, verify=ca, json={})
        if reply.status_code != 429:
            return reply
        time.sleep(1.5)
    return reply


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/key/generate"),
        ("GET", "/key/list"),
        ("POST", "/user/new"),
        ("POST", "/model/new"),
        ("GET", "/config/yaml"),
        ("GET", "/v1/files"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/global/spend/logs"),
    ],
)
def test_a_client_key_reaches_no_admin_path(method, path, client_key, fleet_ca):
    reply = _request(method, path, client_key, fleet_ca)
    assert reply.status_code == 404, (path, reply.status_code, reply.text[:200])
    assert "litellm" not in reply.text.lower()


def test_a_client_key_reaches_the_inference_api(client_key, fleet_ca):
    reply = _request("GET", "/v1/models", client_key, fleet_ca)
    assert reply.status_code == 200 and reply.json()["data"]


# --- NGINX's key map: a client name that ends its quoted string --------------------------

HOSTILE_NAME = 'x";\n    ~. "admin'
"""Ends the quoted client name and adds a regex entry that matches any Authorization header."""
SCRATCH = "/tmp/gpufleet-keymap"
SCRATCH_CONF = f"""
pid {SCRATCH}/nginx.pid;
error_log {SCRATCH}/error.log;
events {{}}
http {{
    access_log off;
    map $http_authorization $gpufleet_client {{
        default "";
        include {SCRATCH}/api-keys.map;
    }}
    server {{
        listen 127.0.0.1:18099;
        location / {{
            if ($gpufleet_client = "") {{
                return 401;
            }}
            return 200 "$gpufleet_client";
        }}
    }}
}}
"""


def _scratch_nginx(key_map_text: str) -> dict[str, str]:
    """Run the gateway's map on the real NGINX of lab-infra-1 (a scratch instance on a
    loopback port) and ask it with a wrong key and with none: the HTTP status of each."""
    ssh(INFRA, f"rm -rf {SCRATCH} && mkdir -p {SCRATCH}")
    ssh(INFRA, f"cat > {SCRATCH}/nginx.conf", stdin=SCRATCH_CONF)
    ssh(INFRA, f"cat > {SCRATCH}/api-keys.map", stdin=key_map_text)
    conf = f"-p {SCRATCH} -c {SCRATCH}/nginx.conf"
    try:
        ssh(INFRA, f"nginx -t -q {conf} && nginx {conf}")
        ask = "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18099/"
        return {
            "wrong": ssh(INFRA, f"{ask} -H 'Authorization: Bearer wrong'"),
            "none": ssh(INFRA, ask),
        }
    finally:
        ssh(INFRA, f"nginx {conf} -s stop || true")


def test_the_key_map_bypass_is_refused_before_nginx_sees_it(tmp_path):
    """The regression on the real NGINX: a map line written without a check lets any key in;
    the inventory check and the gateway's own renderer refuse the name, and the map they
    write lets only the client's key in."""
    naive = f'"Bearer {"k" * 32}" "{HOSTILE_NAME}";\n'
    assert _scratch_nginx(naive)["wrong"] == "200"  # the bypass, on NGINX itself

    with pytest.raises(ValueError, match="not a plain client name"):
        key_map({HOSTILE_NAME: "file:/unused"}, lambda reference: "k" * 32)
    with pytest.raises(Exception, match="holds characters a bearer token does not"):
        key_map({"laptop": "file:/unused"}, lambda reference: 'k" "admin";\n ~. "x')

    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        LAB_INVENTORY.read_text().replace('{"lab-client":', f"{{{HOSTILE_NAME!r}:", 1)
    )
    with pytest.raises(InventoryError, match=r"gateway\.clients"):
        validate_file(inventory)

    written = key_map({"lab-client": "file:/unused"}, lambda reference: "k" * 32)
    assert _scratch_nginx(written) == {"wrong": "401", "none": "401"}
