"""A fleet the maintainers never saw: an RTX 3090 box, an RTX 4060 Ti 16GB the inventory
declares itself, a Raspberry Pi 5 as router and gateway, and a model declared in the
catalogue.yaml beside the inventory. It must validate, plan sensibly and preview every deploy;
the ways a stranger gets it wrong must each stop with one message that says how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.inventory import InventoryError, inventory_catalogue, validate_file
from gpufleet.paths import EVERY_DEPLOY
from gpufleet.planner import plan_host
from gpufleet.preview import plan, profiles_for

ROOT = Path(__file__).parents[2]
FLEET = ROOT / "tests/fixtures/stranger_fleet"
INVENTORY = FLEET / "inventory.py"


@pytest.fixture
def fleet_copy(tmp_path: Path) -> Path:
    """The fleet's inventory and catalogue.yaml in a folder of their own, to be changed."""
    shutil.copytree(FLEET, tmp_path, dirs_exist_ok=True)
    return tmp_path / "inventory.py"


def problems_of(inventory: Path) -> list[str]:
    with pytest.raises(InventoryError) as stopped:
        validate_file(inventory)
    return [str(problem) for problem in stopped.value.problems]


def test_the_fleet_validates():
    specs = validate_file(INVENTORY)
    assert set(specs) == {"rig3090", "desk4060", "pi5"}
    assert {"router", "gateway", "vault"} <= set(specs["pi5"].groups)


def test_the_plan_counts_the_declared_card_and_fits_each_box():
    specs = validate_file(INVENTORY)
    catalogue = inventory_catalogue(INVENTORY)
    rig = plan_host(specs["rig3090"], catalogue)
    desk = plan_host(specs["desk4060"], catalogue)
    assert not rig.problems and not desk.problems
    # The 3090 from the built-in catalogue, the 4060 Ti 16GB as the host declares it.
    assert (rig.vram_gb, rig.gpu_bandwidth_gbs) == (24, 936)
    assert (desk.vram_gb, desk.gpu_bandwidth_gbs) == (16, 288)
    for host_plan in (rig, desk):
        assert {p.where for p in host_plan.placements} == {"gpu"}
        # Ollama keeps its loaded models in VRAM: the largest it may hold at once fit there.
        largest = max(p.need_gb for p in host_plan.placements)
        assert largest <= host_plan.vram_gb
    # gpt-oss:20b is a mixture of experts: its bound reads 3.6B active parameters, not 21B.
    [gpt_oss] = [p for p in rig.placements if p.model == "gpt-oss:20b"]
    [qwen] = [p for p in rig.placements if p.model == "qwen3:14b"]
    assert gpt_oss.weights_gb > qwen.weights_gb and gpt_oss.bound_tok_s > 3 * qwen.bound_tok_s
    # The model declared in catalogue.yaml is planned with its figures (40 layers).
    [granite] = [p for p in desk.placements if p.model == "granite3.3:8b"]
    assert granite.layers == 40 and granite.where == "gpu"
    [embedding] = [p for p in desk.placements if p.model.startswith("qwen3-embedding")]
    assert embedding.kind == "embedding" and embedding.kv_gb == 0


def test_gpufleet_plan_prints_the_declared_card():
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "gpufleet.cli", "plan", str(INVENTORY)]
    result = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "desk4060: 16 GB VRAM (288 GB/s declared)" in result.stdout
    assert "granite3.3:8b" in result.stdout


def test_every_deploy_previews_on_every_host():
    profiles = profiles_for(str(INVENTORY))
    planned = plan(
        str(INVENTORY),
        list(EVERY_DEPLOY),
        lambda host, fact, arguments: profiles[host].answer(fact, arguments),
    )
    assert set(planned) == {"rig3090", "desk4060", "pi5"}
    for host, operations in planned.items():
        assert any(operation.changes for operation in operations), host
    names = {host: " ".join(op.name for op in ops) for host, ops in planned.items()}
    assert "LiteLLM" in names["pi5"] or "litellm" in names["pi5"].lower()
    assert "ollama" in names["desk4060"].lower()
    # The declared card is on the fresh host's PCI bus as the inventory names it.
    assert profiles["desk4060"].name.endswith("+1xNVIDIA")


def test_an_undeclared_card_says_how_to_declare_it(fleet_copy):
    text = fleet_copy.read_text()
    fleet_copy.write_text(
        text.replace('"bandwidth_gbs": 288,\n', "")
        .replace('"compute_capability": "8.9",\n', "")
        .replace('"vram_gb": 16,\n', "")
    )
    [problem] = problems_of(fleet_copy)
    assert "host 'desk4060': hardware.accelerators[0].model: unknown accelerator" in problem
    assert "'RTX 4060 Ti 16GB'" in problem
    assert "vram_gb" in problem and "bandwidth_gbs" in problem
    assert "compute_capability" in problem
    assert str(fleet_copy.parent / "catalogue.yaml") in problem or "catalogue.yaml" in problem
    assert "src/gpufleet" not in problem


def test_a_declaration_without_vram_is_refused(fleet_copy):
    fleet_copy.write_text(fleet_copy.read_text().replace('"vram_gb": 16,\n', ""))
    [problem] = problems_of(fleet_copy)
    assert "host 'desk4060': hardware.accelerators[0].vram_gb:" in problem
    assert "give vram_gb" in problem


def test_a_negative_bandwidth_is_refused(fleet_copy):
    fleet_copy.write_text(
        fleet_copy.read_text().replace('"bandwidth_gbs": 288', '"bandwidth_gbs": -288')
    )
    [problem] = problems_of(fleet_copy)
    assert "hardware.accelerators[0].bandwidth_gbs" in problem
    assert "greater than 0" in problem


def test_a_catalogue_yaml_syntax_error_names_file_and_line(fleet_copy):
    catalogue = fleet_copy.parent / "catalogue.yaml"
    lines = catalogue.read_text().splitlines()
    lines[5] = "    params_b: [8.17"  # an unclosed list
    catalogue.write_text("\n".join(lines) + "\n")
    [problem] = problems_of(fleet_copy)
    assert f"{catalogue}:" in problem or "catalogue.yaml:" in problem
    line = int(problem.split("catalogue.yaml:")[1].split(":")[0])
    assert line in (6, 7)  # the unclosed list, or where YAML noticed it
    assert "YAML syntax error" in problem and "\n" not in problem


def test_a_catalogue_yaml_entry_without_vram_and_with_a_bad_figure(fleet_copy):
    catalogue = fleet_copy.parent / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text()
        + "accelerators:\n"
        + "  RTX 4060 Ti 16GB: {kind: nvidia, bandwidth_gbs: 288}\n"
        + "  Arc Pro B60: {kind: intel_gpu, vram_gb: 24, bandwidth_gbs: -456}\n"
    )
    problems = problems_of(fleet_copy)
    assert any("accelerators['RTX 4060 Ti 16GB']" in p and "give vram_gb" in p for p in problems), (
        problems
    )
    assert any(
        "accelerators['Arc Pro B60'].bandwidth_gbs" in p and "greater than 0" in p for p in problems
    ), problems
    assert all("catalogue.yaml" in p for p in problems)


def test_the_card_declared_in_catalogue_yaml_serves_the_inventory(fleet_copy):
    """The same card declared once in catalogue.yaml instead of in the host's data."""
    catalogue = fleet_copy.parent / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text()
        + "accelerators:\n"
        + "  RTX 4060 Ti 16GB:\n"
        + '    {kind: nvidia, vram_gb: 16, bandwidth_gbs: 288, compute_capability: "8.9"}\n'
    )
    text = fleet_copy.read_text()
    for line in ('"bandwidth_gbs": 288,', '"compute_capability": "8.9",', '"vram_gb": 16,',
                 '"min_driver": 535,', '"open_modules": "supported",'):  # fmt: skip
        text = text.replace(line + "\n", "")
    fleet_copy.write_text(text)
    specs = validate_file(fleet_copy)
    desk = plan_host(specs["desk4060"], inventory_catalogue(fleet_copy))
    assert (desk.vram_gb, desk.gpu_bandwidth_gbs) == (16, 288)


def test_an_unknown_model_says_how_to_declare_it(fleet_copy):
    (fleet_copy.parent / "catalogue.yaml").unlink()
    [problem] = problems_of(fleet_copy)
    assert "host 'desk4060': models[1].model: unknown model 'granite3.3:8b'" in problem
    for field in ("params_b", "layers", "kv_heads", "head_dim", "max_context", "catalogue.yaml"):
        assert field in problem
    assert "src/gpufleet" not in problem


def test_the_fleet_works_from_a_folder_outside_this_clone(fleet_copy: Path, monkeypatch):
    """Validate, plan and preview from the fleet's own folder, as its owner runs them: the
    packaged deploys, the folder's catalogue.yaml, and no group_data of this repository."""
    folder = fleet_copy.parent
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}

    def gpufleet(*arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "gpufleet.cli", *arguments],
            cwd=folder,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    assert "3 hosts valid" in gpufleet("validate", "inventory.py")
    assert "desk4060: 16 GB VRAM (288 GB/s declared)" in gpufleet("plan", "inventory.py")
    previewed = gpufleet("preview", "inventory.py", "--summary")
    for host in ("rig3090", "desk4060", "pi5"):
        assert f"{host} (" in previewed
    # The GPU boxes get the driver's archive components without any group_data here.
    monkeypatch.chdir(folder)
    # By its full path: pyinfra caches an inventory file's code by the name it is given.
    specs = validate_file(str(fleet_copy))
    assert "non-free" in specs["rig3090"].apt_components
    assert specs["pi5"].apt_components == ("main",)
