"""The baseline every host gets: reachable, packages, apt sources, service user, time sync,
node exporter."""

from gpufleet.roles.baseline import BASELINE_PACKAGES
from gpufleet.verify import applies, assert_running, http_get


def _debian_family(spec):
    return spec.os != "macos"


def _debian_sources(spec):
    """Hosts whose apt sources the baseline writes (Ubuntu and Jetson Linux keep theirs)."""
    return spec.os in ("debian", "raspios", "proxmox")


def test_reachable_over_ssh(target):
    reply = target.host.run("true")
    assert reply.rc == 0, f"ssh to {target.connection['hostspec']} failed: {reply.stderr.strip()}"


@applies(_debian_family)
def test_baseline_packages_installed(target):
    missing = [p for p in BASELINE_PACKAGES if not target.host.package(p).is_installed]
    assert not missing, f"not installed: {', '.join(missing)}"


@applies(_debian_sources)
def test_apt_sources_are_one_deb822_file(target):
    spec = target.spec
    sources = target.host.file("/etc/apt/sources.list.d/debian.sources")
    assert sources.is_file and sources.user == "root" and sources.mode == 0o644
    content = sources.content_string
    assert content.startswith("# Managed by gpufleet")
    assert f"URIs: {spec.apt_mirror}\n" in content
    assert f"Components: {' '.join(spec.apt_components)}\n" in content
    assert not target.host.file("/etc/apt/sources.list").exists


@applies(_debian_family)
def test_service_user(target):
    user = target.host.user(target.spec.service_user)
    assert user.exists
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == f"/var/lib/{target.spec.service_user}"
    # Root's, as gpufleet's records beside it: the service user cannot plant a link there.
    for folder in (user.home, "/var/lib/gpufleet"):
        home = target.host.file(folder)
        assert home.is_directory and not home.is_symlink
        assert (home.user, home.group, home.mode) == ("root", "root", 0o755)


@applies(_debian_family)
def test_time_sync_configured_and_enabled(target):
    conf = target.host.file("/etc/systemd/timesyncd.conf.d/gpufleet.conf")
    assert f"NTP={' '.join(target.spec.ntp_servers)}\n" in conf.content_string
    assert target.host.service("systemd-timesyncd").is_enabled


@applies(_debian_family)
def test_node_exporter_listens_where_the_inventory_says(target):
    spec = target.spec
    service = target.host.service("prometheus-node-exporter")
    assert service.is_running and service.is_enabled
    listen = f"tcp://{spec.node_exporter_address}:{spec.node_exporter_port}"
    assert target.host.socket(listen).is_listening, f"nothing listens on {listen}"


def test_node_exporter_answers_with_this_hosts_metrics(target):
    spec = target.spec
    if spec.node_exporter_address is not None and spec.node_exporter_address.is_loopback:
        # Nothing but the host itself uses it: it listens on loopback, and is asked there.
        text = target.get_on_host(f"http://127.0.0.1:{spec.node_exporter_port}/metrics")
    else:
        reply = http_get(f"http://{target.address}:{spec.node_exporter_port}/metrics", timeout=10)
        assert reply.status_code == 200
        text = reply.text
    assert f'nodename="{spec.name}"' in text
    assert "node_cpu_seconds_total" in text


@applies(lambda spec: spec.tailscale.enabled and spec.os != "macos")
def test_on_the_tailnet_under_the_inventorys_name(target):
    import json

    from gpufleet.roles.tailscale import tailnet_hostname

    assert_running(target, "tailscaled")
    status = json.loads(target.host.check_output("tailscale status --json"))
    assert status["BackendState"] == "Running", f"tailscale is {status['BackendState']}"
    assert status["Self"]["HostName"] == tailnet_hostname(target.spec)
