"""Checks across fields and against the catalogues, run on validated host specs.

Each check returns :class:`Problem` records naming the host, the field and the fix; nothing
here touches a host. Example::

    >>> [str(p) for p in check_host(spec, load_catalogue())]
    ["host 'thanos': services[2].gpus: 5 GPUs requested but the host has 1 ..."]
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gpufleet import nvidia
from gpufleet.catalogue import Catalogue
from gpufleet.models import HOST_GROUPS, HostSpec, ModelPlacement

SYSTEM_RESERVE_GB = 2.0
"""Memory left to the operating system and the engine's runtime when judging a fit."""

BITS_PER_WEIGHT = {
    "Q3_K_M": 3.91,
    "Q4_0": 4.55,
    "Q4_K_M": 4.85,
    "Q5_K_M": 5.69,
    "Q6_K": 6.56,
    "Q8_0": 8.5,
    "FP8": 8.0,
    "FP16": 16.0,
    "BF16": 16.0,
    "AWQ": 4.25,
    "GPTQ": 4.25,
}
"""Average bits per weight of each quantization (llama.cpp's published figures for GGUF types;
AWQ/GPTQ 4-bit with group scales)."""

DEFAULT_QUANT = "Q4_K_M"
"""What Ollama serves when a tag names no quantization."""

_TAG_QUANT = re.compile(r"(?:^|-)(q\d(?:_k)?(?:_[a-z0-9])?|fp16|f16|bf16|fp8)(?:$|-)", re.I)


@dataclass(frozen=True)
class Problem:
    host: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"host {self.host!r}: {self.field}: {self.message}"


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def placement_quant(placement: ModelPlacement) -> str:
    """The quantization a placement serves: explicit, from its tag, or Ollama's default."""
    if placement.quant:
        return placement.quant.upper()
    _, _, variant = placement.model.partition(":")
    found = _TAG_QUANT.search(variant)
    if not found:
        return DEFAULT_QUANT
    tag_quant = found.group(1).upper()
    return {"Q4": DEFAULT_QUANT, "Q8": "Q8_0", "F16": "FP16"}.get(tag_quant, tag_quant)


def weights_gb(params_b: float, quant: str) -> float:
    """Size of the weights in GB: ``weights_gb(70, "Q4_K_M")`` is about 42.4."""
    return params_b * BITS_PER_WEIGHT[quant] / 8


def check_host(
    spec: HostSpec, catalogue: Catalogue, extra_groups: Iterable[str] = ()
) -> list[Problem]:
    """Every problem with one host, in the order a reader would fix them."""
    return [
        *_groups(spec, extra_groups),
        *_accelerators(spec, catalogue),
        *_platform(spec),
        *_ports(spec),
        *_gpu_requests(spec),
        *_engines(spec),
        *_capacity(spec, catalogue),
        *_engine_sources(spec),
        *_nvidia_driver(spec, catalogue),
        *_proxmox(spec),
        *_platform_services(spec),
    ]


def check_fleet(specs: dict[str, HostSpec]) -> list[Problem]:
    """Problems between hosts: an LXC container and the Proxmox host it takes GPUs from; a
    gateway, router or secret with nothing behind it."""
    problems = _routing(specs)
    for spec in specs.values():
        guest = spec.lxc_guest
        if guest is None:
            continue
        parent = specs.get(guest.proxmox_host)
        field = "lxc_guest.proxmox_host"
        if parent is None:
            problems.append(
                Problem(
                    spec.name,
                    field,
                    f"no host {guest.proxmox_host!r} in this inventory"
                    f"{suggest(guest.proxmox_host, specs)}; name the Proxmox host it runs on",
                )
            )
        elif parent.proxmox is None or guest.vmid not in {c.vmid for c in parent.proxmox.lxc}:
            problems.append(
                Problem(
                    spec.name,
                    "lxc_guest.vmid",
                    f"{parent.name} does not pass GPUs to container {guest.vmid}; add "
                    f"{{'vmid': {guest.vmid}}} to its proxmox.lxc",
                )
            )
        elif nvidia.pin_problem(parent.nvidia_driver):
            problems.append(
                Problem(
                    spec.name,
                    field,
                    f"{parent.name} holds no driver version, so the container cannot match "
                    f"it; set nvidia_driver.version on {parent.name}",
                )
            )
    return problems


def _groups(spec: HostSpec, extra_groups: Iterable[str]) -> Iterator[Problem]:
    known = (*HOST_GROUPS, "all", *extra_groups)
    for group in spec.groups:
        if group not in known:
            yield Problem(
                spec.name,
                "groups",
                f"unknown group {group!r}{suggest(group, HOST_GROUPS)}; "
                f"use one of {', '.join(HOST_GROUPS)}",
            )


def _accelerators(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    for i, accelerator in enumerate(spec.hardware.accelerators):
        field = f"hardware.accelerators[{i}]"
        entry = catalogue.accelerator(accelerator.model)
        if entry is None:
            yield Problem(
                spec.name,
                f"{field}.model",
                f"unknown accelerator {accelerator.model!r}"
                f"{suggest(accelerator.model, catalogue.accelerators)}; use a name from "
                "src/gpufleet/catalogue/accelerators.yaml or add the part there",
            )
            continue
        if entry.kind != accelerator.kind:
            yield Problem(
                spec.name,
                f"{field}.kind",
                f"{entry.name} is kind {entry.kind!r}, not {accelerator.kind!r}; "
                f"write kind: {entry.kind!r}",
            )
        if (
            accelerator.vram_gb is not None
            and entry.vram_gb
            and (accelerator.vram_gb not in entry.vram_gb)
        ):
            sizes = " or ".join(f"{v:g}" for v in entry.vram_gb)
            yield Problem(
                spec.name,
                f"{field}.vram_gb",
                f"{entry.name} ships with {sizes} GB, not {accelerator.vram_gb:g} GB; "
                "fix the figure or leave vram_gb out to take it from the catalogue",
            )


def _platform(spec: HostSpec) -> Iterator[Problem]:
    """Accelerators and groups that only make sense on one operating system."""
    jetson = any(a.kind == "jetson" for a in spec.hardware.accelerators)
    if jetson and spec.os != "jetson-l4t":
        yield Problem(
            spec.name,
            "os",
            f"a Jetson module runs Jetson Linux, not {spec.os}; write os: 'jetson-l4t'",
        )
    if spec.os == "jetson-l4t" and "gpu_nodes" in spec.groups:
        yield Problem(
            spec.name,
            "groups",
            "a Jetson's GPU driver is part of Jetson Linux: put it in edge, not gpu_nodes "
            "(whose driver steps are for discrete cards)",
        )
    if spec.triton.enabled and (
        "gpu_nodes" not in spec.groups or spec.hardware.nvidia_gpu_count == 0
    ):
        yield Problem(
            spec.name,
            "triton.enabled",
            "Triton runs through the NVIDIA container runtime: enable it on a gpu_nodes host "
            "with an NVIDIA GPU",
        )
    for i, model in enumerate(spec.triton.models if spec.triton.enabled else ()):
        if model.source.startswith("http") and model.sha256 is None:
            yield Problem(
                spec.name,
                f"triton.models[{i}].sha256",
                f"{model.name} is downloaded from {model.source}; give its sha256 so the "
                "download is verified",
            )
    if spec.os == "macos" and {"gpu_nodes", "proxmox_hosts"} & set(spec.groups):
        yield Problem(
            spec.name,
            "groups",
            "a Mac serves models with Metal: put it in cpu_nodes, not gpu_nodes or proxmox_hosts",
        )


def _ports(spec: HostSpec) -> Iterator[Problem]:
    holders: list[tuple[int, str]] = [(spec.node_exporter_port, "node_exporter_port")]
    engines = {placement.engine for placement in spec.models}
    engine_ports = {"ollama": "ollama_port", "vllm": "vllm_port", "llama.cpp": "llamacpp_port"}
    holders += [(getattr(spec, f), f) for engine, f in engine_ports.items() if engine in engines]
    holders += [
        (service.port, f"services[{i}].port")
        for i, service in enumerate(spec.services)
        if service.port is not None
    ]
    if "vault" in spec.groups:
        holders += [
            (spec.vault.port, "vault.port"),
            (spec.vault.cluster_port, "vault.cluster_port"),
        ]
    if "router" in spec.groups:
        holders += [(spec.litellm.port, "litellm.port")]
        if spec.litellm.redis.enabled:
            holders += [(spec.litellm.redis.port, "litellm.redis.port")]
        if spec.litellm.database.enabled:
            holders += [(spec.litellm.database.port, "litellm.database.port")]
    if "monitoring" in spec.groups and spec.grafana.enabled:
        holders += [(spec.grafana.port, "grafana.port")]
    if spec.triton.enabled:
        holders += [
            (spec.triton.http_port, "triton.http_port"),
            (spec.triton.grpc_port, "triton.grpc_port"),
            (spec.triton.metrics_port, "triton.metrics_port"),
        ]
    if "gateway" in spec.groups:
        holders += [
            (spec.gateway.https_port, "gateway.https_port"),
            (spec.gateway.http_port, "gateway.http_port"),
        ]
    seen: dict[int, str] = {}
    for port, field in holders:
        if port in seen:
            yield Problem(
                spec.name,
                field,
                f"port {port} is already used by {seen[port]}; give each listener its own port",
            )
        else:
            seen[port] = field


def _gpu_requests(spec: HostSpec) -> Iterator[Problem]:
    declared = spec.hardware.nvidia_gpu_count
    asks = [(s.gpus, f"services[{i}].gpus", s.name) for i, s in enumerate(spec.services)]
    asks += [(m.gpus, f"models[{i}].gpus", m.model) for i, m in enumerate(spec.models)]
    asks = [ask for ask in asks if ask[0]]
    wanted = sum(n for n, _, _ in asks)
    if wanted > declared:
        detail = ", ".join(f"{what} asks {n}" for n, _, what in asks)
        yield Problem(
            spec.name,
            asks[-1][1],
            f"{wanted} GPUs requested but the host has {declared} NVIDIA GPU(s) ({detail}); "
            "lower the requests or move services to a host with free GPUs",
        )


def _engines(spec: HostSpec) -> Iterator[Problem]:
    for i, placement in enumerate(spec.models):
        if placement.engine != "vllm":
            continue
        if spec.hardware.nvidia_gpu_count == 0:
            yield Problem(
                spec.name,
                f"models[{i}].engine",
                "vLLM needs an NVIDIA GPU and this host declares none; use engine 'ollama' "
                "or 'llama.cpp', or place the model on a GPU node",
            )
        if "vllm_api_key" not in spec.secrets:
            yield Problem(
                spec.name,
                "secrets.vllm_api_key",
                "vLLM is placed here but its API key is missing; add secrets="
                "{'vllm_api_key': 'vault:kv/gpufleet/vllm#api_key'}",
            )
            return


def _capacity(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    """Placements that cannot fit, loaded sets that cannot, speeds claimed above physics."""
    from gpufleet.planner import plan_host  # the planner builds on this module's figures

    for field, message in plan_host(spec, catalogue).problems:
        yield Problem(spec.name, field, message)


def gets_nvidia_driver(spec: HostSpec) -> bool:
    """Hosts the driver deploy installs a driver on (LXC containers take their host's)."""
    in_group = {"gpu_nodes", "proxmox_hosts"} & set(spec.groups)
    has_gpu = spec.hardware.nvidia_gpu_count > 0 or spec.nvidia_driver.force
    return bool(in_group) and has_gpu and spec.lxc_guest is None


def _nvidia_driver(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    if not gets_nvidia_driver(spec):
        return
    driver = spec.nvidia_driver
    pin = nvidia.pin_problem(driver)
    if pin:
        yield Problem(spec.name, "nvidia_driver.version", pin)
        return
    field = "nvidia_driver.branch" if driver.branch is not None else "nvidia_driver.version"
    for accelerator in spec.hardware.accelerators:
        entry = catalogue.accelerator(accelerator.model)
        problem = nvidia.support_problem(entry, driver) if entry else None
        if problem:
            yield Problem(spec.name, field, problem)


def _proxmox(spec: HostSpec) -> Iterator[Problem]:
    if spec.proxmox is None:
        return
    if "proxmox_hosts" not in spec.groups:
        yield Problem(
            spec.name,
            "proxmox",
            "only hosts in proxmox_hosts pass GPUs to containers; add the host to that group",
        )
    declared = spec.hardware.nvidia_gpu_count
    seen: set[int] = set()
    for i, container in enumerate(spec.proxmox.lxc):
        field = f"proxmox.lxc[{i}]"
        if container.vmid in seen:
            yield Problem(spec.name, f"{field}.vmid", f"container {container.vmid} is listed twice")
        seen.add(container.vmid)
        if declared == 0 and not spec.nvidia_driver.force:
            yield Problem(
                spec.name,
                field,
                f"container {container.vmid} asks for GPUs but the host declares no NVIDIA "
                "GPU; declare it under hardware.accelerators or remove the container",
            )
            continue
        wrong = [g for g in container.gpus or () if g >= declared]
        if wrong:
            yield Problem(
                spec.name,
                f"{field}.gpus",
                f"GPU index {wrong[0]} does not exist: the host has {declared} NVIDIA GPU(s) "
                f"(indexes 0-{declared - 1})",
            )


def _engine_sources(spec: HostSpec) -> Iterator[Problem]:
    """Where each engine's binary and weights come from, and one server per engine."""
    for engine in ("llama.cpp", "vllm"):
        placed = [i for i, m in enumerate(spec.models) if m.engine == engine]
        if len(placed) > 1:
            yield Problem(
                spec.name,
                f"models[{placed[1]}].engine",
                f"one {engine} server per host serves one model; this host places "
                f"{len(placed)}: serve the others with Ollama or on another host",
            )
    for i, placement in enumerate(spec.models):
        field = f"models[{i}]"
        if placement.engine == "llama.cpp":
            if placement.source is None:
                yield Problem(
                    spec.name,
                    f"{field}.source",
                    "llama.cpp needs the GGUF file: give its URL (with sha256) or its path "
                    "on the host",
                )
            elif placement.source.startswith(("http://", "https://")) and not placement.sha256:
                yield Problem(
                    spec.name,
                    f"{field}.sha256",
                    "a downloaded GGUF is verified: add its sha256 (sha256sum FILE)",
                )
            if spec.llamacpp_binary_url is None and spec.llamacpp_source_sha256 is None:
                yield Problem(
                    spec.name,
                    "llamacpp_source_sha256",
                    "llama-server is built from llamacpp_source_url, which is verified: add "
                    "its sha256, or give llamacpp_binary_url and llamacpp_binary_sha256",
                )
            if spec.llamacpp_binary_url is not None and spec.llamacpp_binary_sha256 is None:
                yield Problem(
                    spec.name,
                    "llamacpp_binary_sha256",
                    "a downloaded llama-server is verified: add its sha256",
                )
        if (
            placement.engine == "llama.cpp"
            and "vllm" in {m.engine for m in spec.models}
            and spec.llamacpp_gpu_layers != 0
        ):
            yield Problem(
                spec.name,
                "llamacpp_gpu_layers",
                f"vLLM reserves {spec.vllm_gpu_memory_utilization:.0%} of this host's GPU "
                "memory, so llama.cpp cannot offload to it; set llamacpp_gpu_layers: 0",
            )
        if placement.engine == "vllm" and placement.source is None:
            yield Problem(
                spec.name,
                f"{field}.source",
                "vLLM loads Hugging Face weights: give the repo id (e.g. "
                "'meta-llama/Llama-3.1-8B-Instruct') or a folder on the host",
            )


def _platform_services(spec: HostSpec) -> Iterator[Problem]:
    vault = spec.vault
    if "vault" in spec.groups and vault.key_threshold > vault.key_shares:
        yield Problem(
            spec.name,
            "vault.key_threshold",
            f"{vault.key_threshold} shares needed but only {vault.key_shares} made; "
            "set key_threshold <= key_shares",
        )
    if vault.binary_url and not vault.binary_sha256:
        yield Problem(
            spec.name, "vault.binary_sha256", "the OpenBao download needs its sha256 to verify it"
        )
    gateway = spec.gateway
    if "gateway" in spec.groups and gateway.certificate_file and not gateway.private_key:
        yield Problem(
            spec.name,
            "gateway.private_key",
            "certificate_file needs the reference of its key, e.g. 'file:/path/gateway.key'",
        )
    provided = gateway.certificate_file
    if "gateway" in spec.groups and provided and not os.path.isfile(os.path.expanduser(provided)):
        yield Problem(
            spec.name,
            "gateway.certificate_file",
            f"{provided} is not a file on this machine; give the PEM certificate's path",
        )
    if "gateway" in spec.groups and not gateway.clients:
        yield Problem(
            spec.name,
            "gateway.clients",
            "no client may call the gateway; add e.g. "
            "{'laptop': 'vault:kv/gpufleet/gateway#laptop'} (Vault generates the key)",
        )


def _routing(specs: dict[str, HostSpec]) -> list[Problem]:
    from gpufleet.routing import model_names, router_hosts, state_servers
    from gpufleet.secrets import secret_uses

    problems = []
    routers = router_hosts(specs)
    for spec in specs.values():
        if "gateway" in spec.groups and not routers and not spec.gateway.direct_routes:
            problems.append(
                Problem(
                    spec.name,
                    "gateway",
                    "nothing to route to: put a host in the router group (LiteLLM) or set "
                    "gateway.direct_routes",
                )
            )
    for router in routers:
        known = model_names(specs, router.litellm)
        if not known:
            problems.append(
                Problem(
                    router.name,
                    "litellm",
                    "the router has no model to route to (seed 003's proxy to nowhere); place "
                    "models on hosts or declare litellm.cloud_models",
                )
            )
        local = {n for n in known if "-LOC-" in n}
        for cloud in router.litellm.cloud_models:
            if cloud.name in local:
                problems.append(
                    Problem(router.name, "litellm.cloud_models", f"{cloud.name} is also local")
                )
        for name, targets in router.litellm.fallbacks.items():
            for target in (name, *targets):
                if target not in known:
                    problems.append(
                        Problem(
                            router.name,
                            f"litellm.fallbacks.{name}",
                            f"no model named {target!r}{suggest(target, known)}; name an alias "
                            "a host serves or a cloud model",
                        )
                    )
    for field, server, settings in state_servers(specs):
        if len(routers) > 1 and all(address.is_loopback for address in settings.bind):
            what = "Redis" if field == "litellm.redis" else "PostgreSQL"
            problems.append(
                Problem(
                    server.name,
                    f"{field}.bind",
                    f"{len(routers)} routers share this {what} but it listens on loopback "
                    f"only; add {server.lan_address or 'the address the other routers reach'} "
                    "to bind",
                )
            )
    has_vault = any("vault" in s.groups for s in specs.values())
    if not has_vault and not os.environ.get("VAULT_ADDR"):
        for use in secret_uses(specs):
            if use.reference.startswith("vault:"):
                problems.append(
                    Problem(
                        use.host,
                        use.field,
                        f"{use.reference} names Vault but the inventory has no vault host; add "
                        "one to the vault group (or set VAULT_ADDR), or use 'file:/path'",
                    )
                )
    return problems
