"""What Prometheus scrapes, from the inventory alone."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpufleet.inventory import validate_file
from gpufleet.monitoring import JOBS, KeyedJob, keyed_jobs, probes, scrape_jobs
from gpufleet.paths import render_template

ROOT = Path(__file__).parents[2]


def hosts(entries):
    return sorted(e["labels"]["host"] for e in entries)


DCGM_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04@sha256:" + "0" * 64
"""A digest of the right shape for planning; no registry is asked."""


def with_dcgm_image(specs):
    """The fleet with ``dcgm_exporter.image`` pinned on every host."""
    return {
        name: spec.model_copy(
            update={"dcgm_exporter": spec.dcgm_exporter.model_copy(update={"image": DCGM_IMAGE})}
        )
        for name, spec in specs.items()
    }


def test_lab_targets_follow_the_inventory():
    specs = validate_file(ROOT / "inventory/lab.py")
    jobs = scrape_jobs(specs)
    assert hosts(jobs["node"]) == sorted(specs)
    # llama-server asks for its key on /metrics too: the hosts that share the lab's key share
    # one keyed job (its ``job`` label is still llamacpp).
    assert [k.job for k in keyed_jobs(specs)] == ["llamacpp"]
    assert jobs["llamacpp"] == []
    assert hosts(jobs["llamacpp-key1"]) == [
        "lab-amd-1", "lab-cpu-1", "lab-gpu-1", "lab-infra-1", "lab-lxc-1", "lab-pve-1",
    ]  # fmt: skip
    assert hosts(jobs["vllm"]) == ["lab-pve-1"]
    # GPUs declared on the Proxmox stand-in and its container, but no exporter image pinned
    # by digest: no exporter runs, so none is scraped; with one, both are.
    assert hosts(jobs["dcgm"]) == []
    assert hosts(scrape_jobs(with_dcgm_image(specs))["dcgm"]) == ["lab-lxc-1", "lab-pve-1"]
    assert jobs["nginx"] == [{"targets": ["10.200.0.12:9113"], "labels": {"host": "lab-infra-1"}}]
    services = {(p["labels"]["host"], p["labels"]["service"]) for p in probes(specs)}
    assert ("lab-gpu-1", "ollama") in services  # no metrics of its own: probed instead
    assert ("lab-infra-1", "gateway") in services and ("lab-infra-1", "vault") in services
    # The model cache's NGINX site answers a health path the probe asks (no model file read).
    [cache] = [p for p in probes(specs) if p["labels"]["service"] == "model-cache"]
    assert cache["labels"]["host"] == "lab-infra-1"
    assert cache["targets"] == ["http://10.200.0.12:8090/health"]


def test_homelab_scrapes_every_host_and_each_gpu():
    specs = validate_file(ROOT / "inventory/homelab.py")
    jobs = scrape_jobs(specs)
    assert len(jobs["node"]) == 23
    gpu_hosts = [n for n, s in specs.items() if s.hardware.nvidia_gpu_count]
    assert jobs["dcgm"] == [] and gpu_hosts  # no exporter image pinned: none runs
    assert hosts(scrape_jobs(with_dcgm_image(specs))["dcgm"]) == sorted(gpu_hosts)


def test_prometheus_config_reads_one_file_per_job():
    text = render_template(
        "prometheus/prometheus.yml.j2",
        scrape_interval="15s",
        rules="/etc/prometheus/rules/gpufleet.rules.yml",
        port=9090,
        host="pi5l",
        jobs=JOBS,
        keyed_jobs=[KeyedJob("llamacpp-key1", "llamacpp", "file:/unused")],
        keys_dir="/etc/prometheus/keys",
        file_sd="/etc/prometheus/file_sd",
        fleet_ca="/usr/local/share/ca-certificates/gpufleet-fleet-ca.crt",
        blackbox_port=9115,
        alertmanager=None,
    )
    config = yaml.safe_load(text)
    assert "alerting" not in config  # no Alertmanager on the host: nothing to send to
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "blackbox", "llamacpp-key1", *JOBS}
    keyed = jobs["llamacpp-key1"]
    assert keyed["authorization"] == {"credentials_file": "/etc/prometheus/keys/llamacpp-key1"}
    assert keyed["relabel_configs"] == [{"target_label": "job", "replacement": "llamacpp"}]
    for job in (*JOBS, "blackbox"):
        assert jobs[job]["file_sd_configs"] == [{"files": [f"/etc/prometheus/file_sd/{job}.json"]}]
    assert jobs["vault"]["metrics_path"] == "/v1/sys/metrics"
    assert jobs["blackbox"]["relabel_configs"][-1]["replacement"] == "127.0.0.1:9115"
