"""Checks across fields and against the catalogues, run on validated host specs.

Each check returns :class:`Problem` records naming the host, the field and the fix; nothing
here touches a host. Example::

    >>> [str(p) for p in check_host(spec, load_catalogue())]
    ["host 'thanos': services[2].gpus: 5 GPUs requested but the host has 1 ..."]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gpufleet import nvidia
from gpufleet.catalogue import Catalogue, suggest
from gpufleet.engines import ENGINES, engine_for, serving
from gpufleet.engines.llamacpp import build_host_problems
from gpufleet.models import HOST_GROUPS, HostSpec
from gpufleet.planner import plan_host
from gpufleet.sizing import SYSTEM_RESERVE_GB


@dataclass(frozen=True)
class Problem:
    host: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"host {self.host!r}: {self.field}: {self.message}"


def check_host(
    spec: HostSpec, catalogue: Catalogue, extra_groups: Iterable[str] = ()
) -> list[Problem]:
    """Every problem with one host, in the order a reader would fix them."""
    return [
        *_groups(spec, extra_groups),
        *_accelerators(spec, catalogue),
        *_amd_gpu(spec),
        *_measured(spec, catalogue),
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


def check_fleet(
    specs: dict[str, HostSpec], ssh_addresses: dict[str, str] | None = None
) -> list[Problem]:
    """Problems between hosts: an address two hosts claim; an alias serving two models or a
    backup with no primary; an LXC container and the Proxmox host it takes GPUs from; a
    gateway, router or secret with nothing behind it; a llama.cpp build host that cannot
    build for its host. ``ssh_addresses``: where pyinfra
    connects to each host (its ``ssh_hostname``, else its name)."""
    problems = [*_shared_addresses(specs, ssh_addresses or {}), *_aliases(specs)]
    from gpufleet.exposure import exposure_problems

    problems += _routing(specs) + list(exposure_problems(specs))
    problems += [Problem(*problem) for problem in build_host_problems(specs)]
    problems += list(_rpc_splits(specs))
    problems += list(_ray_clusters(specs))
    caches = [spec for spec in specs.values() if "model_cache" in spec.groups]
    for extra in caches[1:]:
        problems.append(
            Problem(
                extra.name,
                "groups",
                f"{caches[0].name} is the fleet's model cache already; one host caches the "
                "fleet's models: keep it in model_cache alone",
            )
        )
    for cache in caches[:1]:
        if cache.os == "macos":
            problems.append(
                Problem(
                    cache.name,
                    "groups",
                    "the model cache runs NGINX on a Linux host; put a Linux host in model_cache",
                )
            )
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


def _shared_addresses(specs: dict[str, HostSpec], ssh: dict[str, str]) -> Iterator[Problem]:
    """Two hosts with one address: a deploy for one would configure the other."""
    fields = {
        "ssh_hostname": lambda s: ssh.get(s.name),
        "lan_address": lambda s: s.lan_address,
        "tailscale_address": lambda s: s.tailscale_address,
        "tailscale_name": lambda s: s.tailscale_name,
    }
    for field, value_of in fields.items():
        owner: dict[str, str] = {}
        for spec in specs.values():
            value = value_of(spec)
            if value is None:
                continue
            key = str(value).lower()
            if key in owner:
                yield Problem(
                    spec.name,
                    field,
                    f"{value} is also {owner[key]}'s {field}; two hosts cannot share one "
                    "address: give each its own",
                )
            else:
                owner[key] = spec.name


def _aliases(specs: dict[str, HostSpec]) -> Iterator[Problem]:
    """An alias is one model across the fleet, with a primary (priority 1) somewhere: the
    router would otherwise mix two models behind one name, or route to a backup alone."""
    first: dict[str, tuple[str, str]] = {}
    primaries: set[str] = set()
    for spec in specs.values():
        for placement in spec.models:
            name = placement.alias or placement.model
            if placement.priority == 1:
                primaries.add(name)
    for spec in specs.values():
        for i, placement in enumerate(spec.models):
            name = placement.alias or placement.model
            if placement.alias:
                other = first.setdefault(placement.alias, (spec.name, placement.model))
                if other[1] != placement.model:
                    yield Problem(
                        spec.name,
                        f"models[{i}].alias",
                        f"{placement.alias} already names {other[1]} on {other[0]}, not "
                        f"{placement.model}; give this model an alias of its own",
                    )
            if placement.priority > 1 and name not in primaries:
                yield Problem(
                    spec.name,
                    f"models[{i}].priority",
                    f"backup (priority {placement.priority}) of {name} but no host serves it "
                    "at priority 1; place the primary on a host, or make this one priority 1",
                )


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


MEASURED_ABOVE_PEAK = 1.1
"""A GPU measured this far above its part's peak was measured elsewhere, or mistyped."""


def _measured(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    """A measured GPU figure belongs to a host with an NVIDIA GPU or Jetson, and cannot
    exceed what the part's memory does at its peak."""
    measured = spec.hardware.measured
    if measured is None or measured.gpu_bandwidth_gbs is None:
        return
    field = "hardware.measured.gpu_bandwidth_gbs"
    probed = [a for a in spec.hardware.accelerators if a.kind in ("nvidia", "jetson")]
    if not probed:
        yield Problem(
            spec.name,
            field,
            "measured on a GPU this host does not declare (no nvidia or jetson accelerator); "
            "remove it, or declare the GPU in hardware.accelerators",
        )
        return
    entries = [catalogue.accelerator_for(a) for a in probed]
    peaks = [entry.bandwidth_gbs for entry in entries if entry is not None]
    if peaks and measured.gpu_bandwidth_gbs > min(peaks) * MEASURED_ABOVE_PEAK:
        yield Problem(
            spec.name,
            field,
            f"{measured.gpu_bandwidth_gbs:g} GB/s is above the {min(peaks):g} GB/s peak of "
            "the host's slowest GPU; measure this host again (gpufleet measure)",
        )


def _accelerators(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    for i, accelerator in enumerate(spec.hardware.accelerators):
        field = f"hardware.accelerators[{i}]"
        known = catalogue.accelerator(accelerator.model)
        entry = catalogue.accelerator_for(accelerator)
        if entry is None:
            declaring = accelerator.bandwidth_gbs is not None
            missing = "vram_gb" if declaring else "model"
            what = (
                f"{accelerator.model!r} is declared without vram_gb; a {accelerator.kind} "
                "part has memory of its own: give vram_gb (GB per device)"
                if declaring
                else f"unknown accelerator {accelerator.model!r}"
                f"{suggest(accelerator.model, catalogue.accelerators)}; "
                + catalogue.how_to_declare_accelerator(accelerator.model, accelerator.kind)
            )
            yield Problem(spec.name, f"{field}.{missing}", what)
            continue
        if known is None:
            continue  # the host's own declaration: nothing to hold it against
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
            source = (
                ""
                if entry.declared is None or entry.declared == "host data"
                else (f" (as {entry.declared} declares it)")
            )
            yield Problem(
                spec.name,
                f"{field}.vram_gb",
                f"{entry.name} ships with {sizes} GB{source}, not {accelerator.vram_gb:g} GB; "
                "fix the figure, leave vram_gb out to take it from the catalogue, or declare "
                f"the card under a name of its own in {catalogue.where_to_declare}",
            )


def _amd_gpu(spec: HostSpec) -> Iterator[Problem]:
    """An AMD integrated GPU's GTT share and the Vulkan devices: only where there is one, and
    a share that leaves the system its reserve."""
    gtt = spec.amdgpu.gtt_gb
    if gtt is not None and not spec.hardware.amd_igpu:
        yield Problem(
            spec.name,
            "amdgpu.gtt_gb",
            "only an AMD integrated GPU (kind: amd_igpu) maps system memory through its GTT; "
            "declare it under hardware.accelerators, or leave amdgpu out",
        )
    elif gtt is not None and gtt > spec.hardware.ram_gb - SYSTEM_RESERVE_GB:
        most = spec.hardware.ram_gb - SYSTEM_RESERVE_GB
        yield Problem(
            spec.name,
            "amdgpu.gtt_gb",
            f"{gtt:g} GB of GTT would leave the system less than its {SYSTEM_RESERVE_GB:g} GB "
            f"reserve of {spec.hardware.ram_gb:g} GB RAM; give at most {most:g}",
        )
    if spec.llamacpp.vulkan_devices is not None and not spec.hardware.amd_gpu:
        yield Problem(
            spec.name,
            "llamacpp.vulkan_devices",
            "only a Vulkan build of llama.cpp reads it, and llama.cpp is built with Vulkan on "
            "hosts with an AMD GPU (kind: amd_igpu or amd_gpu); leave it out",
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


SSH_PORT = 22
"""sshd, which every host runs and gpufleet reaches it by."""


def listeners(spec: HostSpec) -> list[tuple[int, str]]:
    """Every port gpufleet configures on this host, with the field that sets it."""
    holders: list[tuple[int, str]] = [
        (SSH_PORT, "sshd"),
        (spec.node_exporter_port, "node_exporter_port"),
    ]
    for engine in serving(spec):
        holders += [(listener.port, listener.field) for listener in engine.listeners(spec)]
    holders += [
        (service.port, f"services[{i}].port")
        for i, service in enumerate(spec.services)
        if service.port is not None
    ]
    if gets_dcgm_exporter(spec):
        holders += [(spec.dcgm_exporter.port, "dcgm_exporter.port")]
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
    if "monitoring" in spec.groups:
        holders += [
            (spec.prometheus.port, "prometheus.port"),
            (spec.prometheus.blackbox_port, "prometheus.blackbox_port"),
        ]
        if spec.grafana.enabled:
            holders += [(spec.grafana.port, "grafana.port")]
    if gets_alertmanager(spec):
        # Its cluster port is not here: gpufleet runs it without one (--cluster.listen-address=).
        holders += [(spec.alertmanager.port, "alertmanager.port")]
    if "gateway" in spec.groups:
        holders += [
            (spec.gateway.https_port, "gateway.https_port"),
            (spec.gateway.http_port, "gateway.http_port"),
            (spec.gateway.stub_status_port, "gateway.stub_status_port"),
            (spec.gateway.exporter_port, "gateway.exporter_port"),
        ]
    return holders


def _ports(spec: HostSpec) -> Iterator[Problem]:
    seen: dict[int, str] = {}
    for port, field in listeners(spec):
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
        engine = engine_for(spec, placement)
        if spec.os not in engine.operating_systems:
            yield Problem(
                spec.name,
                f"models[{i}].engine",
                f"{engine.name} does not run on {spec.os}; serve the model with an engine "
                f"that does, or place it on another host",
            )
        if engine.needs_nvidia_gpu and spec.hardware.nvidia_gpu_count == 0:
            yield Problem(
                spec.name,
                f"models[{i}].engine",
                f"{engine.name} needs an NVIDIA GPU and this host declares none; use an engine "
                "that runs on the CPU (ollama, llama.cpp), or place the model on a GPU node",
            )
    for engine in serving(spec):
        secret = engine.api_key_secret
        if secret and engine.api_key_required and secret not in spec.secrets:
            yield Problem(
                spec.name,
                f"secrets.{secret}",
                f"{engine.name} is placed here but its API key is missing; add secrets="
                f"{{'{secret}': 'vault:kv/gpufleet/{engine.settings_key}#api_key'}}",
            )


def _capacity(spec: HostSpec, catalogue: Catalogue) -> Iterator[Problem]:
    """Placements that cannot fit, loaded sets that cannot, speeds claimed above physics."""
    for field, message in plan_host(spec, catalogue).problems:
        yield Problem(spec.name, field, message)


def gets_dcgm_exporter(spec: HostSpec) -> bool:
    """Hosts that run NVIDIA's DCGM exporter: an NVIDIA GPU declared, the exporter on and its
    image pinned by digest (never pulled by a tag alone)."""
    exporter = spec.dcgm_exporter
    return bool(spec.hardware.nvidia_gpu_count) and exporter.enabled and exporter.image is not None


def gets_alertmanager(spec: HostSpec) -> bool:
    """Hosts that run Alertmanager: a ``monitoring`` host with a webhook to notify. Without
    one, alerts stay in Prometheus and nothing that discards them is installed."""
    return "monitoring" in spec.groups and bool(spec.alertmanager.webhooks)


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
    modules = nvidia.modules_problem(driver)
    if modules:
        yield Problem(spec.name, "nvidia_driver.modules", modules)
        return
    field = "nvidia_driver.branch" if driver.branch is not None else "nvidia_driver.version"
    cards = nvidia.declared_cards(spec, catalogue)
    open_modules = nvidia.uses_open_modules(driver, cards)
    for entry in cards:
        problem = nvidia.support_problem(entry, driver, open_modules)
        if problem:
            # A branch too old is fixed by the version; a module flavour by nvidia_driver.modules.
            too_old = entry.min_driver and (driver.effective_branch or 0) < entry.min_driver
            yield Problem(spec.name, field if too_old else "nvidia_driver.modules", problem)


def _proxmox(spec: HostSpec) -> Iterator[Problem]:
    if spec.proxmox is None:
        return
    if spec.proxmox.lxc and "proxmox_hosts" not in spec.groups:
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
    for engine in ENGINES:
        placed = [i for i, m in enumerate(spec.models) if engine_for(spec, m) is engine]
        if engine.one_model_per_server and len(placed) > 1:
            yield Problem(
                spec.name,
                f"models[{placed[1]}].engine",
                f"one {engine.name} server per host serves one model; this host places "
                f"{len(placed)}: serve the others with Ollama or on another host",
            )
    for engine in serving(spec):
        indexed = [(i, m) for i, m in enumerate(spec.models) if engine_for(spec, m) is engine]
        for field, message in engine.problems(spec, indexed):
            yield Problem(spec.name, field, message)
    offloading = [e for e in serving(spec) if e.offloads_to_ram and e.one_model_per_server]
    reserving = [e for e in serving(spec) if not e.offloads_to_ram and e.placements(spec)]
    for engine in offloading if reserving else ():
        if engine.gpu_layers_asked(spec) != 0:
            share = reserving[0].gpu_memory_share(spec)
            yield Problem(
                spec.name,
                f"{engine.settings_key}.gpu_layers",
                f"{reserving[0].name} reserves {share:.0%} of this host's GPU memory, so "
                f"{engine.name} cannot offload to it; set {engine.settings_key}.gpu_layers: 0",
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


def _rpc_splits(specs: dict[str, HostSpec]) -> Iterator[Problem]:
    """Models split across hosts (``rpc_workers``): every worker a Linux host of this
    inventory with its firewall on (ggml-rpc-server asks no credentials), holding layers for
    one host only, built from the same llama.cpp source (the RPC protocol refuses another
    version), one GPU per host; then the split itself, planned with the fleet."""
    from gpufleet.catalogue import fleet_catalogue

    held_for: dict[str, str] = {}
    catalogue = fleet_catalogue()
    for spec in specs.values():
        split = [(i, m) for i, m in enumerate(spec.models) if m.rpc_workers]
        if split and spec.hardware.gpu_count > 1:
            yield Problem(
                spec.name,
                f"models[{split[0][0]}].rpc_workers",
                "a host with several GPUs serves a model split across hosts with one of "
                "them only in this version; place the model on its GPUs alone, or split it "
                "from a host with one GPU",
            )
        if split and spec.llamacpp.gpu_layers not in (None, 0):
            yield Problem(
                spec.name,
                "llamacpp.gpu_layers",
                "the layers of a model split across hosts are the planner's split (its GPU's "
                "share among them); leave gpu_layers out, or 0 to keep this host's share in "
                "RAM",
            )
        for index, placement in split:
            source = spec.llamacpp.source_sha256
            for number, worker in enumerate(placement.rpc_workers):
                field = f"models[{index}].rpc_workers[{number}].host"
                other, found = _named_worker(
                    spec, specs, worker.host, field,
                    f"{spec.name} reaches its ggml-rpc-server by address (its firewall and "
                    f"{spec.name}'s connection check go by address)",
                )  # fmt: skip
                yield from found
                if other is None:
                    continue
                if other.os == "macos":
                    yield Problem(
                        spec.name,
                        field,
                        f"{other.name} is a Mac: gpufleet runs ggml-rpc-server on Linux "
                        "hosts; name a Linux host",
                    )
                elif not other.firewall.enabled:
                    yield Problem(
                        other.name,
                        "firewall.enabled",
                        f"it holds layers of {spec.name}'s {placement.model} with "
                        "ggml-rpc-server, which asks no credentials and runs what it is "
                        f"sent: only {spec.name} may reach it; turn the firewall on",
                    )
                if worker.host in held_for:
                    yield Problem(
                        spec.name,
                        field,
                        f"{worker.host} holds layers for {held_for[worker.host]} already; "
                        "one ggml-rpc-server serves one host: name another worker",
                    )
                held_for.setdefault(worker.host, spec.name)
                if other.llamacpp.binary_url or spec.llamacpp.binary_url:
                    yield Problem(
                        spec.name,
                        field,
                        "a split model needs ggml-rpc-server and llama-server of one build: "
                        f"build llama.cpp from source on {spec.name} and {other.name} (leave "
                        "llamacpp.binary_url out)",
                    )
                elif other.llamacpp.source_sha256 != source:
                    yield Problem(
                        other.name,
                        "llamacpp.source_sha256",
                        f"it holds layers of {spec.name}'s {placement.model}, whose "
                        "llama.cpp is another source; the RPC protocol refuses a different "
                        f"version: give it {spec.name}'s llamacpp.source_url and "
                        "source_sha256",
                    )
                if other.hardware.gpu_count > 1:
                    yield Problem(
                        other.name,
                        "hardware.accelerators",
                        f"it holds layers of {spec.name}'s {placement.model}, and a worker "
                        "with several GPUs is not split across them in this version; name a "
                        "worker with one GPU or none",
                    )
                ports = {port for port, _ in listeners(other)}
                if other.llamacpp.rpc_port in ports:
                    yield Problem(
                        other.name,
                        "llamacpp.rpc_port",
                        f"port {other.llamacpp.rpc_port} is taken by another of its "
                        "services; choose a free port",
                    )
    for spec in specs.values():
        named = {name for m in spec.models for name in m.split_workers}
        if not named or spec.name in named or not named <= set(specs):
            continue  # reported above
        plan = plan_host(spec, catalogue, specs)
        for result in plan.placements:
            if spec.models[result.index].split_workers and result.problem:
                yield Problem(
                    spec.name, f"models[{result.index}].{result.problem_field}", result.problem
                )


def _named_worker(
    spec: HostSpec, specs: dict[str, HostSpec], name: str, field: str, by_address: str
) -> tuple[HostSpec | None, list[Problem]]:
    """The host a split names as a worker, and the problems of naming it: none of this
    inventory, this host itself (None then), or one without an address (``by_address``:
    why it needs one)."""
    other = specs.get(name)
    if other is None:
        fix = f"no host {name!r} in this inventory{suggest(name, specs)}; name a host of it"
        return None, [Problem(spec.name, field, fix)]
    if other.name == spec.name:
        return None, [Problem(spec.name, field, "names this host itself; name another host")]
    if other.lan_address is None and other.tailscale_address is None:
        fix = f"{by_address}: add its lan_address or tailscale_address"
        return other, [Problem(other.name, "lan_address", fix)]
    return other, []


def ray_cluster_ports(spec: HostSpec, head: bool) -> list[tuple[int, str]]:
    """The ports of a host's Ray node, with the field that sets each."""
    ray = spec.vllm.ray
    names = [
        "node_manager_port",
        "object_manager_port",
        "runtime_env_agent_port",
        "dashboard_agent_grpc_port",
        "dashboard_agent_listen_port",
        "metrics_export_port",
    ]
    if head:
        names = ["port", "client_server_port", *names]
    return [(getattr(ray, name), f"vllm.ray.{name}") for name in names]  # fmt: skip


def _ray_clusters(specs: dict[str, HostSpec]) -> Iterator[Problem]:
    """vLLM models split across hosts (``ray_workers``): every worker a Linux host of this
    inventory with an address and its firewall on (Ray runs the code it is sent), in one
    cluster only, running the head's vLLM and Ray from a venv, with the cluster's token;
    its Ray ports free. The split itself is planned with the fleet (:func:`_rpc_splits`)."""
    from gpufleet.catalogue import fleet_catalogue
    from gpufleet.engines.vllm import RAY_TOKEN

    stage_of: dict[str, str] = {}
    heads = {s.name for s in specs.values() for m in s.models if m.ray_workers}
    for spec in specs.values():
        split = [(i, m) for i, m in enumerate(spec.models) if m.ray_workers]
        if not split:
            continue
        index, placement = split[0]
        field = f"models[{index}].ray_workers"
        token = spec.secrets.get(RAY_TOKEN.secret)
        if token is None:
            yield Problem(
                spec.name,
                f"secrets.{RAY_TOKEN.secret}",
                "a Ray cluster's nodes and vLLM present one shared token (Ray's token "
                f"authentication): add secrets={{'{RAY_TOKEN.secret}': "
                "'vault:kv/gpufleet/ray#token'}} here and on every host of ray_workers "
                "(deploys/vault.py generates it)",
            )
        if spec.vllm.install == "container":
            yield Problem(
                spec.name,
                "vllm.install",
                "a vLLM model split across hosts runs Ray from vLLM's venv on every host; set "
                "vllm.install: venv (or present), or serve the model on this host alone",
            )
        yield from _ports_free(spec, ray_cluster_ports(spec, head=True))
        gated = fleet_catalogue().gated_repo(placement.source or "")
        for number, name in enumerate(placement.ray_workers):
            at = f"{field}[{number}]"
            other, found = _named_worker(
                spec, specs, name, at,
                f"it joins {spec.name}'s Ray cluster by address (Ray's node address and the "
                "firewall go by address)",
            )  # fmt: skip
            yield from found
            if other is None:
                continue
            if other.os == "macos":
                yield Problem(
                    spec.name, at, f"{other.name} is a Mac: Ray workers run on Linux hosts with "
                    "NVIDIA GPUs; name one",
                )  # fmt: skip
                continue
            if not other.firewall.enabled:
                yield Problem(
                    other.name,
                    "firewall.enabled",
                    f"it runs a pipeline stage of {spec.name}'s {placement.model} in a Ray "
                    f"node, which runs the code it is sent: only {spec.name}'s cluster may "
                    "reach its ports; turn the firewall on",
                )
            if name in heads:
                yield Problem(
                    spec.name, at, f"{name} serves a model split across hosts itself; a host "
                    "runs one Ray node: name another worker",
                )  # fmt: skip
            elif name in stage_of:
                yield Problem(
                    spec.name, at, f"{name} runs a stage for {stage_of[name]} already; a host "
                    "runs one Ray node: name another worker",
                )  # fmt: skip
            stage_of.setdefault(name, spec.name)
            if other.vllm.install == "container":
                yield Problem(
                    other.name,
                    "vllm.install",
                    f"it runs a pipeline stage of {spec.name}'s model from vLLM's venv; set "
                    "vllm.install: venv (or present)",
                )
            for setting, mine, theirs in (
                ("vllm.version", spec.vllm.version, other.vllm.version),
                ("vllm.ray.version", spec.vllm.ray.version, other.vllm.ray.version),
            ):
                if mine != theirs:
                    yield Problem(
                        other.name,
                        setting,
                        f"it runs a pipeline stage of {spec.name}'s {placement.model}, whose "
                        f"cluster runs {mine}; Ray and vLLM refuse nodes of another release: "
                        f"set {setting}: '{mine}'",
                    )
            if token is not None and other.secrets.get(RAY_TOKEN.secret) != token:
                yield Problem(
                    other.name,
                    f"secrets.{RAY_TOKEN.secret}",
                    f"it joins {spec.name}'s Ray cluster, which asks for the token of "
                    f"{spec.name}'s secrets.{RAY_TOKEN.secret}: give it the same reference",
                )
            if gated and "hf_token" not in other.secrets:
                yield Problem(
                    other.name,
                    "secrets.hf_token",
                    f"it downloads its stage of {placement.source}, which is gated on Hugging "
                    "Face: add secrets.hf_token as on " + spec.name,
                )
            yield from _ports_free(other, ray_cluster_ports(other, head=False))


def _ports_free(spec: HostSpec, wanted: list[tuple[int, str]]) -> Iterator[Problem]:
    """A Ray node's ports that another service of the host (or the worker range) takes."""
    ray = spec.vllm.ray
    taken = dict(listeners(spec))
    seen: dict[int, str] = {}
    for port, field in wanted:
        clash = taken.get(port) or seen.get(port)
        if clash is None and ray.min_worker_port <= port <= ray.max_worker_port:
            clash = "vllm.ray.min_worker_port..max_worker_port"
        if clash is not None:
            yield Problem(spec.name, field, f"port {port} is taken by {clash}; choose a free port")
        seen[port] = field


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
