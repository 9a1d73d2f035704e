"""llama-server is compiled once per build key in a run: one host builds, keeps the binary
in the control machine's cache, and the other hosts of the key install it; planned here from
the fact profiles, as a dry run plans it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyinfra
import pytest
from pyinfra.api import state as pyinfra_state
from pyinfra.api.state import StateStage

from gpufleet.checks import check_fleet
from gpufleet.facts import gpu as gpu_facts
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.models import HostSpec
from gpufleet.operations.inference import BASE_FLAGS, CCACHE_FLAGS, build_stamp
from gpufleet.preview import PlannedOperation, plan, profiles_for
from gpufleet.roles.llamacpp import BuildAssignment, assign_builders

ROOT = Path(__file__).parents[2]
LAB = str(ROOT / "inventory/lab.py")
INFERENCE = ["deploys/inference.py"]
SOURCE = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
CPU_FLAGS = [*BASE_FLAGS, "-DGGML_NATIVE=OFF"]
LAB_KEY = build_stamp(SOURCE, CPU_FLAGS, "x86_64", "Debian 12")
NO_GPU = {
    "pci": [],
    "nvidia_smi": [],
    "nvidia_smi_error": None,
    "driver_version": None,
    "module_flavour": None,
}
"""What the lab's hosts show: no GPU, whatever they declare (each builds for the CPU)."""


@pytest.fixture(autouse=True)
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab folder of this test's own: the lab's build cache is in it, empty."""
    monkeypatch.setenv("GPUFLEET_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(gpu_facts, "_reports", {})  # each plan reads its own GPU facts
    return tmp_path / "lab"


def planned(
    inventory: str = LAB, limit: list[str] | None = None, **facts: Any
) -> dict[str, list[PlannedOperation]]:
    """The inference deploy planned from the profiles, with the lab's hosts showing no GPU
    and ``facts`` (fact name -> value by arguments JSON) over the profiles."""
    profiles = profiles_for(inventory, limit)

    def answer(host: str, fact: str, arguments: str) -> Any:
        if fact == "gpufleet.facts.gpu.NvidiaGpus":
            return NO_GPU
        if fact in facts and arguments in facts[fact]:
            return facts[fact][arguments]
        return profiles[host].answer(fact, arguments)

    return plan(inventory, INFERENCE, answer, limit)


def changing(hosts: dict[str, list[PlannedOperation]], part: str) -> dict[str, list[str]]:
    """Per host, the operations whose name holds ``part`` that would change something."""
    found = {
        host: [op.name.split(" | ")[-1] for op in operations if part in op.name and op.changes]
        for host, operations in hosts.items()
    }
    return {host: names for host, names in found.items() if names}


def cache_the(key: str, folder: Path, content: bytes = b"ELF-llama-server\n") -> None:
    """Both binaries of a build in the cache, with their checksums as a fetch records them."""
    (folder / key).mkdir(parents=True)
    recorded = ""
    for name, body in [("llama-server", content), ("ggml-rpc-server", b"ELF-ggml-rpc-server\n")]:
        (folder / key / name).write_bytes(body)
        recorded += f"{hashlib.sha256(body).hexdigest()}  {name}\n"
    (folder / key / "llama-server.sha256").write_text(recorded)


# --- the key --------------------------------------------------------------------------------


def test_the_build_key_differs_by_source_flags_architecture_and_release():
    keys = {
        LAB_KEY,
        build_stamp("0" * 64, CPU_FLAGS, "x86_64", "Debian 12"),
        build_stamp(SOURCE, [*BASE_FLAGS, "-DGGML_CUDA=ON"], "x86_64", "Debian 12"),
        build_stamp(
            SOURCE,
            [*BASE_FLAGS, "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86"],
            "x86_64",
            "Debian 12",
        ),
        build_stamp(SOURCE, CPU_FLAGS, "aarch64", "Debian 12"),
        build_stamp(SOURCE, CPU_FLAGS, "x86_64", "Debian 13"),
        build_stamp(SOURCE, CPU_FLAGS, "x86_64", "Ubuntu 24.04"),
    }
    assert len(keys) == 7
    # ccache changes how fast it builds, not what: the same key, no rebuild when it is
    # switched on.
    assert build_stamp(SOURCE, [*CPU_FLAGS, *CCACHE_FLAGS], "x86_64", "Debian 12") == LAB_KEY


# --- who builds ------------------------------------------------------------------------------


def test_one_host_builds_each_key_the_named_build_host_where_it_needs_that_key():
    needs = [
        ("a", "cpu", None),
        ("b", "cpu", "c"),
        ("c", "cpu", None),
        ("d", "cuda", "a"),  # a builds another key: d's key is built by its first host
        ("e", "cuda", None),
    ]
    assigned = assign_builders(needs, cached=set())
    assert assigned == {
        "a": BuildAssignment("cpu", "c", False),
        "b": BuildAssignment("cpu", "c", False),
        "c": BuildAssignment("cpu", "c", True),
        "d": BuildAssignment("cuda", "d", True),
        "e": BuildAssignment("cuda", "d", False),
    }
    assert [host for host, a in assigned.items() if a.builds] == ["c", "d"]


def test_a_host_carrying_the_build_already_hands_it_on_instead_of_a_new_host_compiling():
    # A host added to (or reinstalled in) a fleet whose other hosts carry the build, with an
    # empty control-machine cache: the carrying host's binary is fetched, nothing compiles.
    needs = [("new", "cpu", None), ("old", "cpu", None), ("other", "cuda", None)]
    assigned = assign_builders(needs, cached=set(), stamped={"old"})
    assert assigned["new"] == BuildAssignment("cpu", "old", False)
    assert assigned["old"] == BuildAssignment("cpu", "old", True)
    assert assigned["other"] == BuildAssignment("cuda", "other", True)
    # The named build host still comes first.
    named = [("new", "cpu", "new"), ("old", "cpu", None)]
    assert assign_builders(named, cached=set(), stamped={"old"})["old"].builder == "new"


def test_a_key_the_control_machine_keeps_is_built_by_nobody():
    assigned = assign_builders([("a", "cpu", None), ("b", "cpu", "b")], cached={"cpu"})
    assert not any(a.builds for a in assigned.values())
    assert {a.origin for a in assigned.values()} == {"from the control machine's cache"}


# --- the lab, planned --------------------------------------------------------------------------


def test_the_lab_compiles_once_and_the_other_hosts_install_that_binary():
    """Once per build key: lab-gpu-1 the CPU build of Debian 12 the others install, lab-amd-1
    (Debian 13, an AMD iGPU) the Vulkan build only it runs."""
    hosts = planned()
    assert changing(hosts, "Build llama-server") == {
        "lab-gpu-1": ["Build llama-server (CPU)"],
        "lab-amd-1": ["Build llama-server (Vulkan)"],
    }
    assert changing(hosts, "build tools") == {
        "lab-gpu-1": ["llama.cpp build tools"],
        "lab-amd-1": ["llama.cpp build tools"],
    }
    [vulkan_tools] = [op for op in hosts["lab-amd-1"] if op.name.endswith("build tools")]
    for package in ("libvulkan-dev", "glslc", "spirv-headers", "mesa-vulkan-drivers"):
        assert package in vulkan_tools.commands[-1]
    assert changing(hosts, "Keep llama-server") == {
        "lab-gpu-1": ["Keep llama-server (CPU) built on lab-gpu-1 on the control machine"],
        "lab-amd-1": ["Keep llama-server (Vulkan) built on lab-amd-1 on the control machine"],
    }
    install = ["Install llama-server (CPU) built on lab-gpu-1"]
    assert changing(hosts, "Install llama-server") == {
        "lab-pve-1": install,
        "lab-lxc-1": install,
        "lab-infra-1": install,
        "lab-cpu-1": install,
    }
    # The receivers get the binary's runtime library, not the compilers.
    receiver = [op for op in hosts["lab-infra-1"] if op.name.endswith("runtime libraries")]
    assert [c.split()[-1] for c in receiver[0].commands] == ["libgomp1"]
    assert not [c for op in hosts["lab-infra-1"] for c in op.commands if "cmake" in c]


def test_hosts_of_different_builds_each_have_a_builder():
    """In the profiles lab-lxc-1 shows the GTX 1650 it declares: a CUDA build, another key."""
    profiles = profiles_for(LAB)
    hosts = plan(LAB, INFERENCE, lambda h, fact, args: profiles[h].answer(fact, args))
    assert changing(hosts, "Build llama-server") == {
        "lab-gpu-1": ["Build llama-server (CPU)"],
        "lab-lxc-1": ["Build llama-server (CUDA)"],
        "lab-amd-1": ["Build llama-server (Vulkan)"],
    }
    installs = changing(hosts, "Install llama-server (CPU) built on lab-gpu-1")
    assert set(installs) == {"lab-pve-1", "lab-infra-1", "lab-cpu-1"}


def test_with_limit_the_run_builds_on_a_host_it_has():
    hosts = planned(limit=["lab-infra-1", "lab-pve-1"])
    assert changing(hosts, "Build llama-server") == {"lab-pve-1": ["Build llama-server (CPU)"]}
    assert changing(hosts, "Install llama-server") == {
        "lab-infra-1": ["Install llama-server (CPU) built on lab-pve-1"]
    }


def test_a_build_the_control_machine_keeps_is_installed_everywhere_and_compiled_nowhere(
    lab_dir: Path,
):
    cache_the(LAB_KEY, lab_dir / "builds")
    hosts = planned()
    # lab-amd-1's Vulkan build is a key the cache does not hold.
    assert changing(hosts, "Build llama-server") == {"lab-amd-1": ["Build llama-server (Vulkan)"]}
    assert set(changing(hosts, "Install llama-server (CPU) from the control machine's cache")) == {
        "lab-gpu-1",
        "lab-pve-1",
        "lab-lxc-1",
        "lab-infra-1",
        "lab-cpu-1",
    }


def test_a_cached_binary_whose_checksum_changed_is_built_again(lab_dir: Path):
    cache_the(LAB_KEY, lab_dir / "builds")
    (lab_dir / "builds" / LAB_KEY / "llama-server").write_bytes(b"truncated")
    assert set(changing(planned(), "Build llama-server")) == {"lab-gpu-1", "lab-amd-1"}


def test_hosts_carrying_the_build_change_nothing_of_llama_server(lab_dir: Path):
    cache_the(LAB_KEY, lab_dir / "builds")
    stamped = {
        "pyinfra.facts.files.FileContents": {
            '{"path": "/usr/local/bin/llama-server.gpufleet-build"}': [LAB_KEY]
        },
        "pyinfra.facts.files.File": {
            '{"path": "/usr/local/bin/llama-server"}': {"mode": 755, "user": "root"},
            '{"path": "/usr/local/bin/ggml-rpc-server"}': {"mode": 755, "user": "root"},
        },
    }
    assert changing(planned(**stamped), "llama-server (CPU)") == {}


def test_every_install_runs_after_the_build_and_its_fetch(monkeypatch: pytest.MonkeyPatch):
    """pyinfra's command line orders operations by a graph of each host's sequence (line
    numbers break ties): the install, called on the builder too, follows its fetch there, so
    it runs on every host only after the build."""
    order: list[set[str]] = []
    real = pyinfra_state.State.get_op_order

    def recorded(self: Any) -> list[str]:
        hashes = real(self)
        order[:] = [{n.split(" | ")[-1] for n in self.op_meta[h].names} for h in hashes]
        return hashes

    real_init = pyinfra_state.State.init

    def preparing(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = real_init(self, *args, **kwargs)
        self.current_stage = StateStage.Prepare  # as the command line is while it plans
        return done

    monkeypatch.setattr(pyinfra, "is_cli", True)  # operations ordered by call site
    monkeypatch.setattr(pyinfra_state.State, "get_op_order", recorded)
    monkeypatch.setattr(pyinfra_state.State, "init", preparing)
    planned()

    def position(name: str) -> int:
        return next(i for i, names in enumerate(order) if name in names)

    build = position("Build llama-server (CPU)")
    fetch = position("Keep llama-server (CPU) built on lab-gpu-1 on the control machine")
    install = position("Install llama-server (CPU) built on lab-gpu-1")
    assert build < fetch < install


# --- llamacpp.build_host ---------------------------------------------------------------------


def lab_with(tmp_path: Path, old: str, new: str) -> str:
    """A copy of the lab inventory with ``old`` replaced by ``new``."""
    text = Path(LAB).read_text()
    assert old in text
    copy = tmp_path / "lab.py"
    copy.write_text(text.replace(old, new))
    return str(copy)


CCACHE_LINE = '        "ccache": True,\n'


def test_the_named_build_host_builds_for_the_others(tmp_path: Path):
    inventory = lab_with(
        tmp_path, CCACHE_LINE, CCACHE_LINE + '        "build_host": "lab-infra-1",\n'
    )
    hosts = planned(inventory)
    # lab-amd-1 names it too, but lab-infra-1 makes another key: lab-amd-1 builds its own.
    assert changing(hosts, "Build llama-server") == {
        "lab-infra-1": ["Build llama-server (CPU)"],
        "lab-amd-1": ["Build llama-server (Vulkan)"],
    }
    assert set(changing(hosts, "Install llama-server (CPU) built on lab-infra-1")) == {
        "lab-gpu-1",
        "lab-pve-1",
        "lab-lxc-1",
        "lab-cpu-1",
    }


@pytest.mark.parametrize(
    ("build_host", "message"),
    [
        (
            "lab-infra-2",
            "host 'lab-gpu-1': llamacpp.build_host: no host 'lab-infra-2' in this inventory",
        ),
        ("-bad", "llamacpp.build_host"),
    ],
)
def test_a_build_host_not_in_the_inventory_is_refused_naming_host_and_field(
    tmp_path: Path, build_host: str, message: str
):
    inventory = lab_with(
        tmp_path, CCACHE_LINE, CCACHE_LINE + f'        "build_host": "{build_host}",\n'
    )
    with pytest.raises(InventoryError) as error:
        validate_file(inventory)
    assert message in str(error.value)


def spec(name: str, **data: Any) -> HostSpec:
    model = {
        "model": "gemma3:270m",
        "engine": "llama.cpp",
        "source": "http://mirror/gemma.gguf",
        "sha256": "a" * 64,
        "context": 2048,
    }
    return HostSpec.model_validate(
        {
            "name": name,
            "groups": ["cpu_nodes"],
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
            "models": [model],
            **data,
        }
    )


def test_a_build_host_of_another_architecture_or_building_nothing_is_refused():
    specs = {
        "x86": spec("x86", llamacpp={"build_host": "arm"}),
        "arm": spec("arm", arch="aarch64"),
        "x86-2": spec("x86-2", llamacpp={"build_host": "given"}),
        "given": spec("given", llamacpp={"binary_url": "http://m/ls", "binary_sha256": "b" * 64}),
        "fine": spec("fine", llamacpp={"build_host": "x86"}),
    }
    problems = [str(p) for p in check_fleet(specs) if p.field == "llamacpp.build_host"]
    assert problems == [
        "host 'x86': llamacpp.build_host: arm is aarch64, this host x86_64: a binary runs only "
        "on its own CPU architecture; name a host of the same architecture",
        "host 'x86-2': llamacpp.build_host: given builds no llama-server (it serves no llama.cpp "
        "model, or is given llamacpp.binary_url); name a host that builds llama.cpp from source",
    ]
