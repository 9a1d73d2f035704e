"""testinfra: the baseline on every lab host."""

import requests


def test_baseline_packages_installed(lab_host):
    for package in ("prometheus-node-exporter", "systemd-timesyncd", "pciutils"):
        assert lab_host.testinfra.package(package).is_installed, package


def test_apt_sources_are_one_deb822_file(lab_host):
    spec = lab_host.spec
    sources = lab_host.testinfra.file("/etc/apt/sources.list.d/debian.sources")
    assert sources.is_file and sources.user == "root" and sources.mode == 0o644
    content = sources.content_string
    assert content.startswith("# Managed by gpufleet")
    assert f"URIs: {spec.apt_mirror}\n" in content
    assert f"Components: {' '.join(spec.apt_components)}\n" in content
    assert "Suites: bookworm-security\n" in content
    assert not lab_host.testinfra.file("/etc/apt/sources.list").exists


def test_service_user(lab_host):
    user = lab_host.testinfra.user(lab_host.spec.service_user)
    assert user.exists
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == f"/var/lib/{lab_host.spec.service_user}"


def test_time_sync_configured_and_enabled(lab_host):
    conf = lab_host.testinfra.file("/etc/systemd/timesyncd.conf.d/gpufleet.conf")
    assert conf.mode == 0o644
    assert f"NTP={' '.join(lab_host.spec.ntp_servers)}\n" in conf.content_string
    assert lab_host.testinfra.service("systemd-timesyncd").is_enabled


def test_node_exporter_listens_where_the_inventory_says(lab_host):
    spec = lab_host.spec
    service = lab_host.testinfra.service("prometheus-node-exporter")
    assert service.is_running and service.is_enabled
    defaults = lab_host.testinfra.file("/etc/default/prometheus-node-exporter").content_string
    assert (
        f'ARGS="--web.listen-address={spec.node_exporter_address}:{spec.node_exporter_port}"'
        in defaults
    )
    assert lab_host.testinfra.socket(
        f"tcp://{spec.node_exporter_address}:{spec.node_exporter_port}"
    ).is_listening


def test_node_exporter_answers_with_this_hosts_metrics(lab_host):
    response = requests.get(
        f"http://{lab_host.address}:{lab_host.spec.node_exporter_port}/metrics", timeout=10
    )
    assert response.status_code == 200
    assert f'nodename="{lab_host.spec.name}"' in response.text
    assert "node_cpu_seconds_total" in response.text
