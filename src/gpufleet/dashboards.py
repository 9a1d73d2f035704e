"""Grafana dashboards for the fleet, as data: one per concern (hosts, GPUs, inference,
router), each panel a PromQL query over the metrics gpufleet's Prometheus scrapes. Pure: no
I/O; ``deploys/monitoring.py`` writes them as files Grafana provisions.

Example::

    >>> [d["title"] for d in dashboards()]
    ['gpufleet / Hosts', 'gpufleet / GPUs', 'gpufleet / Inference', 'gpufleet / Router']
"""

from __future__ import annotations

from typing import Any

DATASOURCE_UID = "gpufleet-prometheus"

PANELS: dict[str, list[tuple[str, str, str, str]]] = {
    "Hosts": [
        # (title, unit, PromQL, legend)
        ("Targets up", "short", "sum by (job) (up)", "{{job}}"),
        (
            "CPU busy",
            "percentunit",
            '1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[5m]))',
            "{{host}}",
        ),
        (
            "Memory used",
            "percentunit",
            "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
            "{{host}}",
        ),
        (
            "Root filesystem used",
            "percentunit",
            '1 - node_filesystem_avail_bytes{mountpoint="/"}'
            ' / node_filesystem_size_bytes{mountpoint="/"}',
            "{{host}}",
        ),
        ("Load (1m)", "short", "node_load1", "{{host}}"),
    ],
    "GPUs": [
        ("GPU utilisation", "percent", "DCGM_FI_DEV_GPU_UTIL", "{{host}} GPU {{gpu}}"),
        (
            "GPU memory used",
            "percentunit",
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
            "{{host}} GPU {{gpu}}",
        ),
        ("GPU temperature", "celsius", "DCGM_FI_DEV_GPU_TEMP", "{{host}} GPU {{gpu}}"),
        ("GPU power", "watt", "DCGM_FI_DEV_POWER_USAGE", "{{host}} GPU {{gpu}}"),
        ("Jetson GPU load", "percent", "gpufleet_tegra_gpu_load_percent", "{{host}}"),
        (
            "Jetson memory used",
            "bytes",
            "gpufleet_tegra_ram_used_bytes",
            "{{host}}",
        ),
    ],
    "Inference": [
        ("Engine probes (1 = answering)", "short", "probe_success", "{{service}} {{host}}"),
        (
            "llama.cpp generation speed",
            "short",
            "llamacpp:predicted_tokens_seconds",
            "{{host}} tokens/s",
        ),
        (
            "llama.cpp tokens generated",
            "short",
            "rate(llamacpp:tokens_predicted_total[5m])",
            "{{host}}",
        ),
        ("llama.cpp requests in flight", "short", "llamacpp:requests_processing", "{{host}}"),
        ("vLLM requests running", "short", "vllm:num_requests_running", "{{host}}"),
        ("vLLM requests waiting", "short", "vllm:num_requests_waiting", "{{host}}"),
        (
            "Triton inference rate",
            "reqps",
            "rate(nv_inference_request_success[5m])",
            "{{host}} {{model}}",
        ),
    ],
    "Router": [
        (
            "Requests",
            "reqps",
            "sum by (requested_model) (rate(litellm_proxy_total_requests_metric_total[5m]))",
            "{{requested_model}}",
        ),
        (
            "Failed requests",
            "reqps",
            "sum by (requested_model) (rate(litellm_proxy_failed_requests_metric_total[5m]))",
            "{{requested_model}}",
        ),
        (
            "Latency p95",
            "s",
            "histogram_quantile(0.95, sum by (le) "
            "(rate(litellm_request_total_latency_metric_bucket[5m])))",
            "p95",
        ),
        (
            "Deployment state (0 healthy, 1 partial, 2 down)",
            "short",
            "litellm_deployment_state",
            "{{litellm_model_name}} {{api_base}}",
        ),
        (
            "Gateway connections",
            "short",
            "rate(nginx_connections_accepted[5m])",
            "{{host}}",
        ),
    ],
}
"""Each dashboard's panels: (title, Grafana unit, PromQL, legend)."""


def dashboard(name: str, panels: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    """One dashboard in Grafana's JSON model: time series panels, two per row."""
    return {
        "uid": f"gpufleet-{name.lower()}",
        "title": f"gpufleet / {name}",
        "tags": ["gpufleet"],
        "schemaVersion": 39,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [
            {
                "id": n + 1,
                "type": "timeseries",
                "title": title,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
                "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
            }
            for n, (title, unit, expr, legend) in enumerate(panels)
        ],
    }


def dashboards() -> list[dict[str, Any]]:
    """Every dashboard gpufleet provisions."""
    return [dashboard(name, panels) for name, panels in PANELS.items()]


def queries() -> list[str]:
    """Every PromQL expression of every dashboard."""
    return [expr for panels in PANELS.values() for _, _, expr, _ in panels]
