"""Absent means removed, planned from fact profiles: what the dry run of a host whose
inventory dropped its llama.cpp placement shows, and that a host gpufleet has no record on
gets one and loses nothing. (tests/host/test_dropped_placements.py runs it on the lab.)"""

from __future__ import annotations

import json
from pathlib import Path

from gpufleet.engines.ollama import MODELFILES
from tests.unit.test_preview import planned

ROOT = Path(__file__).parents[2]
RECORD = "/var/lib/gpufleet/record/llama.cpp"
OLD_MODEL = "/var/lib/llama.cpp/models/an-older-model.gguf"


def without_models(tmp_path: Path, host: str = "lab-lxc-1") -> Path:
    """The lab inventory with every placement of ``host`` dropped (the host test uses it)."""
    inventory = tmp_path / "lab_dropped.py"
    inventory.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(ROOT / 'inventory/lab.py')!r})\n"
        f"gpu_nodes = [(name, {{**data, 'models': []}}) if name == {host!r} else "
        "(name, data) for name, data in _lab['gpu_nodes']]\n"
        "proxmox_hosts, cpu_nodes = _lab['proxmox_hosts'], _lab['cpu_nodes']\n"
        "gateway, model_cache, router, monitoring, vault = (_lab[g] for g in "
        "('gateway', 'model_cache', 'router', 'monitoring', 'vault'))\n"
    )
    return inventory


def recorded(units: list[str], files: list[str]):
    def answer(arguments: str) -> list[str]:
        path = json.loads(arguments)["path"]
        if path == f"{RECORD}.units":
            return units
        if path == f"{RECORD}.files":
            return files
        raise KeyError(path)  # any other file: the profile's answer

    return answer


def by_name(operations):
    return {operation.name: operation for operation in operations}


def test_the_dry_run_shows_each_removal_of_a_dropped_placement(tmp_path):
    plans = planned(
        str(without_models(tmp_path)),
        ["deploys/inference.py"],
        ["lab-lxc-1"],
        **{"pyinfra.facts.files.FileContents": recorded(["llama-server"], [OLD_MODEL])},
    )
    operations = by_name(plans["lab-lxc-1"])
    units = operations["llama.cpp | Remove the llama.cpp units the inventory dropped"]
    assert units.commands[:2] == [
        "systemctl disable --now llama-server.service 2>/dev/null || true",
        "rm -f /etc/systemd/system/llama-server.service",
    ]
    files = operations["llama.cpp | Remove the llama.cpp files the inventory dropped"]
    assert files.commands[0] == f"rm -f {OLD_MODEL}"
    assert not any("Download" in name for name in operations)  # nothing new is fetched


def test_a_host_kept_as_it_is_records_what_it_serves_and_removes_nothing():
    plans = planned(
        "inventory/lab.py",
        ["deploys/inference.py"],
        ["lab-lxc-1"],
        **{"pyinfra.facts.files.FileContents": recorded(["llama-server", "old-unit"], [])},
    )
    operations = by_name(plans["lab-lxc-1"])
    units = operations["llama.cpp | Remove the llama.cpp units the inventory dropped"]
    assert "systemctl disable --now old-unit.service 2>/dev/null || true" in units.commands
    assert not any("llama-server.service" in c and "disable" in c for c in units.commands)
    files = operations["llama.cpp | Remove the llama.cpp files the inventory dropped"]
    assert not any(c.startswith("rm -f") for c in files.commands)  # none recorded, none removed
    assert "gemma" in files.commands[-1] and f"{RECORD}.files" in files.commands[-1]


def test_a_dropped_ollama_model_is_removed_on_the_homelab_after_the_others_are_in_place():
    """akshat-pc's record holds a model seed 004's map no longer places there: the dry run
    removes it (and its alias) from Ollama, after pulling what the inventory names."""
    record = "/var/lib/gpufleet/record/ollama.ollama-models"

    def answer(arguments: str) -> list[str]:
        if json.loads(arguments)["path"] == record:
            return ["qwen2.5-coder:32b", "mixtral:8x22b", "XL-LOC-FRE-mixtral-8x22b"]
        raise KeyError(arguments)

    plans = planned(
        "inventory/homelab.py",
        ["deploys/inference.py"],
        ["akshat-pc"],
        **{"pyinfra.facts.files.FileContents": answer},
    )
    order = [operation.name for operation in plans["akshat-pc"]]
    removal = order.index("Ollama | Remove the Ollama models the inventory dropped")
    assert order.index("Ollama | Pull and alias Ollama models") < removal
    commands = plans["akshat-pc"][removal].commands
    assert commands[:2] == [
        "ollama rm mixtral:8x22b >/dev/null 2>&1 || ! ollama show mixtral:8x22b >/dev/null 2>&1",
        "ollama rm XL-LOC-FRE-mixtral-8x22b >/dev/null 2>&1 "
        "|| ! ollama show XL-LOC-FRE-mixtral-8x22b >/dev/null 2>&1",
    ]
    assert not any("qwen2.5-coder:32b" in c and "ollama rm" in c for c in commands)


def without_models_of(tmp_path: Path, inventory: str, host: str) -> Path:
    """``inventory`` (any of this repository's) with every placement of ``host`` dropped."""
    dropped = tmp_path / f"dropped_{host}.py"
    dropped.write_text(
        "import runpy\n"
        f"_inventory = runpy.run_path({str(ROOT / inventory)!r})\n"
        "def _dropped(entry):\n"
        f"    if isinstance(entry, tuple) and entry[0] == {host!r}:\n"
        "        return (entry[0], {**entry[1], 'models': []})\n"
        "    return entry\n"
        "for _group, _hosts in _inventory.items():\n"
        "    if not _group.startswith('_') and isinstance(_hosts, list):\n"
        "        globals()[_group] = [_dropped(entry) for entry in _hosts]\n"
    )
    return dropped


def test_the_last_ollama_placement_dropped_removes_its_models_from_the_server(tmp_path):
    """ms01's every placement dropped: what the record lists is removed from Ollama, which
    stays running; nothing is pulled."""
    record = "/var/lib/gpufleet/record/ollama.ollama-models"
    modelfiles = "/var/lib/gpufleet/record/ollama.files"

    def answer(arguments: str) -> list[str] | None:
        path = json.loads(arguments)["path"]
        if path == record:
            return ["qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b"]
        if path == modelfiles:
            return [f"{MODELFILES}/M-LOC-FRE-qwen2.5-14b.Modelfile"]
        return None  # no record of any other engine: none is started

    plans = planned(
        str(without_models_of(tmp_path, "inventory/homelab.py", "ms01")),
        ["deploys/inference.py"],
        ["ms01"],
        **{"pyinfra.facts.files.FileContents": answer},
    )
    operations = by_name(plans["ms01"])
    removed = operations["Ollama | Remove the Ollama models the inventory dropped"].commands
    assert removed[:2] == [
        "ollama rm qwen2.5:14b >/dev/null 2>&1 || ! ollama show qwen2.5:14b >/dev/null 2>&1",
        "ollama rm M-LOC-FRE-qwen2.5-14b >/dev/null 2>&1 "
        "|| ! ollama show M-LOC-FRE-qwen2.5-14b >/dev/null 2>&1",
    ]
    modelfiles_removed = operations["Ollama | Remove the Modelfiles the inventory dropped"]
    assert modelfiles_removed.commands[0] == f"rm -f {MODELFILES}/M-LOC-FRE-qwen2.5-14b.Modelfile"
    assert not any("Pull" in name for name in operations)
    assert "llama.cpp | Remove the llama.cpp units the inventory dropped" in operations
    assert not operations["llama.cpp | Remove the llama.cpp units the inventory dropped"].commands


def test_a_dropped_vllm_placement_stops_and_removes_its_unit(tmp_path):
    """lab-pve-1's vLLM placement (and its embedding model) dropped: the vLLM unit the record
    lists is stopped, disabled and removed with its key file; the venv and weights stay."""

    def answer(arguments: str) -> list[str] | None:
        path = json.loads(arguments)["path"]
        if path == "/var/lib/gpufleet/record/vllm.units":
            return ["vllm"]
        if path == "/var/lib/gpufleet/record/vllm.files":
            return ["/etc/gpufleet/vllm.env"]
        raise KeyError(path)

    plans = planned(
        str(without_models(tmp_path, "lab-pve-1")),
        ["deploys/inference.py"],
        ["lab-pve-1"],
        **{"pyinfra.facts.files.FileContents": answer},
    )
    operations = by_name(plans["lab-pve-1"])
    units = operations["vLLM | Remove the vLLM units the inventory dropped"].commands
    assert units[:2] == [
        "systemctl disable --now vllm.service 2>/dev/null || true",
        "rm -f /etc/systemd/system/vllm.service",
    ]
    files = operations["vLLM | Remove the vLLM files the inventory dropped"].commands
    assert files[0] == "rm -f /etc/gpufleet/vllm.env"
    assert not any(
        "rm" in c and "/var/lib/vllm" in c for op in operations.values() for c in op.commands
    )


def test_a_vllm_host_records_its_unit_on_its_first_run():
    plans = planned(
        "inventory/lab.py",
        ["deploys/inference.py"],
        ["lab-pve-1"],
        **{"pyinfra.facts.files.FileContents": lambda arguments: None},
    )
    units = by_name(plans["lab-pve-1"])["vLLM | Remove the vLLM units the inventory dropped"]
    assert units.commands and "vllm\n" in units.commands[-1] and "disable" not in units.commands[-1]
