"""Keys issued by others that engines need (a Hugging Face token for gated weights, an NGC key
for NGC's registry): references in the host data, values only in 0600/0640 files on the host,
never in a unit, a plan or a message; gated repositories refused without a token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.checks import check_host
from gpufleet.engines.triton import TRITON, registry
from gpufleet.engines.vllm import VLLM
from gpufleet.models import HostSpec
from gpufleet.preview import PlannedOperation, plan, profiles_for
from gpufleet.roles.steps import RegistryLogin
from gpufleet.secrets import secret_uses
from gpufleet.serving import describe, placement_runs

ROOT = Path(__file__).parents[2]
CATALOGUE = load_catalogue()
RTX_4090 = {"cores": 16, "ram_gb": 64, "accelerators": [{"kind": "nvidia", "model": "RTX 4090"}]}
LLAMA = {"model": "llama3.1:8b", "engine": "vllm", "quant": "FP16", "gpus": 1, "context": 16384}
API_KEY = {"vllm_api_key": "vault:kv/gpufleet/vllm#api_key"}
HF_TOKEN = {"hf_token": "vault:kv/gpufleet/huggingface#token"}


def vllm_host(source: str, secrets: dict[str, str], **data: Any) -> HostSpec:
    return HostSpec(
        name="starlord",
        groups=("gpu_nodes",),
        hardware=RTX_4090,
        nvidia_driver={"version": "535.261.03"},
        models=[{**LLAMA, "source": source}],
        secrets=secrets,
        **data,
    )


def problems(spec: HostSpec) -> dict[str, str]:
    return {p.field: p.message for p in check_host(spec, CATALOGUE)}


@pytest.mark.parametrize(
    ("repo", "gated"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/*"),
        ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/*"),
        ("google/gemma-3-270m-it", "google/gemma-*"),
        ("Google/Gemma-2-2b-it", "google/gemma-*"),  # the Hub's ids are case-insensitive
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.2"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", None),  # an ungated copy
        ("unsloth/gemma-3-270m-it", None),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", None),
        ("/srv/models/llama-3.1-8b", None),  # a folder on the host
    ],
)
def test_the_catalogue_knows_the_gated_families(repo, gated):
    assert CATALOGUE.gated_repo(repo) == gated


def test_a_gated_model_without_a_token_is_refused_at_plan_time():
    found = problems(vllm_host("meta-llama/Llama-3.1-8B-Instruct", API_KEY))
    message = found["models[0].source"]
    assert "model meta-llama/Llama-3.1-8B-Instruct is gated on Hugging Face" in message
    assert "add secrets.hf_token" in message
    assert "models[0].source" not in problems(
        vllm_host("meta-llama/Llama-3.1-8B-Instruct", {**API_KEY, **HF_TOKEN})
    )
    assert "models[0].source" not in problems(vllm_host("/srv/models/llama", API_KEY))


def test_the_token_reaches_vllms_environment_as_a_reference_only():
    spec = vllm_host("meta-llama/Llama-3.1-8B-Instruct", {**API_KEY, **HF_TOKEN})
    (run,) = placement_runs(spec, VLLM)
    assert dict(run.rendered.environment) == {
        "VLLM_API_KEY": "<vault:kv/gpufleet/vllm#api_key>",
        "HF_TOKEN": "<vault:kv/gpufleet/huggingface#token>",
    }
    assert "HF_TOKEN" not in " ".join(run.rendered.command)
    # Without one (an ungated repo) the environment holds the API key alone.
    (run,) = placement_runs(vllm_host("Qwen/Qwen2.5-7B-Instruct-AWQ", API_KEY), VLLM)
    assert [k for k, _ in run.rendered.environment] == ["VLLM_API_KEY"]
    assert "HF_TOKEN=<vault:kv/gpufleet/huggingface#token>" in describe(
        vllm_host("meta-llama/Llama-3.1-8B-Instruct", {**API_KEY, **HF_TOKEN})
    )


def test_keys_issued_by_others_are_read_by_their_engine_and_never_generated():
    vllm = vllm_host("meta-llama/Llama-3.1-8B-Instruct", {**API_KEY, **HF_TOKEN})
    triton = HostSpec(
        name="thanos",
        hardware=RTX_4090,
        triton={"enabled": True},
        secrets={"ngc_api_key": "vault:kv/gpufleet/ngc#api_key"},
    )
    uses = {(u.host, u.field): u for u in secret_uses({"starlord": vllm, "thanos": triton})}
    assert (
        uses["starlord", "secrets.vllm_api_key"].service,
        uses["starlord", "secrets.vllm_api_key"].generate,
    ) == ("vllm", True)
    assert (
        uses["starlord", "secrets.hf_token"].service,
        uses["starlord", "secrets.hf_token"].generate,
    ) == ("vllm", False)
    assert (
        uses["thanos", "secrets.ngc_api_key"].service,
        uses["thanos", "secrets.ngc_api_key"].generate,
    ) == ("triton", False)
    assert TRITON.secret_environment(triton) == (("NGC_API_KEY", "vault:kv/gpufleet/ngc#api_key"),)


@pytest.mark.parametrize("name", ["hf_token", "ngc_api_key"])
def test_a_literal_key_is_refused_without_being_echoed(name):
    value = "PLACEHOLDER-not-a-real-key-0123456789"
    with pytest.raises(ValueError) as raised:
        vllm_host("/srv/models/llama", {**API_KEY, name: value})
    assert f"secret {name!r} is not a reference" in str(raised.value)
    assert value not in str(raised.value)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nvcr.io/nvidia/tritonserver:25.01-py3", "nvcr.io"),
        ("registry.lan:5000/nvidia/tritonserver:25.01-py3", "registry.lan:5000"),
        ("vllm/vllm-openai:v0.11.0", "docker.io"),
        ("tritonserver:25.01-py3", "docker.io"),
    ],
)
def test_the_registry_an_image_names(image, expected):
    assert registry(image) == expected


def test_the_login_reads_the_key_on_the_host():
    login = RegistryLogin("nvcr.io", "$oauthtoken", "/etc/gpufleet/triton.env", "NGC_API_KEY")
    assert login.command() == (
        "sed -n 's/^NGC_API_KEY=//p' /etc/gpufleet/triton.env | docker login nvcr.io "
        "--username '$oauthtoken' --password-stdin >/dev/null"
    )


# Deploys planned from fact profiles (no host contacted), as tests/unit/test_preview.py does.


def planned(inventory: Path, host: str, **answers: Any) -> list[PlannedOperation]:
    profiles = profiles_for(str(inventory))

    def answer(name: str, fact: str, arguments: str) -> Any:
        if fact in answers:
            try:
                return answers[fact](arguments)
            except KeyError:
                pass
        return profiles[name].answer(fact, arguments)

    return plan(str(inventory), ["deploys/inference.py"], answer, [host])[host]


def uploads(operations: list[PlannedOperation]) -> dict[str, str]:
    return {dest: content for o in operations for dest, content in o.uploads.items()}


SECRET_FILE = "PLACEHOLDER-ngc-key-0123456789"
HF_SECRET = "hf_placeholder-not-a-real-token"


TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-py3@sha256:" + "0" * 64
"""Pinned by a digest of the right shape; planning asks no registry."""


@pytest.fixture(scope="module")
def keyed_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """starlord of three_node.py with its keys in 0600 files, and Triton from nvcr.io."""
    folder = tmp_path_factory.mktemp("keys")
    for name, value in {"vllm": "sk-PLACEHOLDER", "hf": HF_SECRET, "ngc": SECRET_FILE}.items():
        (folder / name).write_text(value + "\n")
        (folder / name).chmod(0o600)
    inventory = folder / "keyed.py"
    inventory.write_text(
        "from gpufleet.inventory import check_inventory\n"
        f"gpu_nodes = [('starlord', {{'hardware': {RTX_4090!r},\n"
        "    'nvidia_driver': {'version': '535.261.03'},\n"
        "    'models': [{'model': 'llama3.1:8b', 'engine': 'vllm', 'quant': 'FP16', 'gpus': 1,\n"
        "                'context': 16384, 'source': 'meta-llama/Llama-3.1-8B-Instruct'}],\n"
        "    'triton': {'enabled': True, 'http_port': 8010, 'grpc_port': 8011,\n"
        f"               'metrics_port': 8012, 'image': {TRITON_IMAGE!r}}},\n"
        f"    'secrets': {{'vllm_api_key': 'file:{folder}/vllm', 'hf_token': 'file:{folder}/hf',\n"
        f"                'ngc_api_key': 'file:{folder}/ngc'}}}})]\n"
        "check_inventory(__file__)\n"
    )
    return inventory


@pytest.fixture(scope="module")
def starlord(keyed_inventory: Path) -> list[PlannedOperation]:
    return planned(keyed_inventory, "starlord")


def test_no_key_is_in_a_unit_a_command_or_an_operation_name(starlord):
    shown = [o.name for o in starlord] + [c for o in starlord for c in o.commands]
    shown += [content for o in starlord for content in o.uploads.values()]
    text = "\n".join(shown)
    assert HF_SECRET not in text and SECRET_FILE not in text and "sk-PLACEHOLDER" not in text


def test_vllms_unit_reads_its_keys_from_the_environment_file_and_holds_its_limit(starlord):
    unit = uploads(starlord)["/etc/systemd/system/vllm.service"]
    assert "EnvironmentFile=/etc/gpufleet/vllm.env" in unit
    assert re.search(r"^MemoryMax=\d+M$", unit, re.M)
    assert "HF_TOKEN" not in unit.split("ExecStart=")[1]
    (env,) = [
        o
        for o in starlord
        if o.name.endswith(
            "vLLM VLLM_API_KEY, HF_TOKEN (0640, readable by the service user; "
            "from the secret store)"
        )
    ]
    assert env.changes


def test_triton_logs_in_to_nvcr_with_the_key_file_before_its_pull(starlord):
    (key_file,) = [o for o in starlord if "NGC API key (0600" in o.name]
    assert key_file.changes
    (pull,) = [o for o in starlord if "Pull nvcr.io/nvidia/tritonserver" in o.name]
    assert "(logged in to nvcr.io)" in pull.name
    assert (
        f"docker image inspect {TRITON_IMAGE} >/dev/null 2>&1 || "
        "{ sed -n 's/^NGC_API_KEY=//p' /etc/gpufleet/triton.env | docker login nvcr.io "
        "--username '$oauthtoken' --password-stdin >/dev/null && "
        f"docker pull {TRITON_IMAGE}; }}" in pull.commands
    )
    unit = uploads(starlord)["/etc/systemd/system/triton.service"]
    assert re.search(r"--memory=\d+M ", unit) and "NGC" not in unit
    assert "--runtime=nvidia --gpus all" in unit and TRITON_IMAGE in unit
    assert "-p 8010:8000 -p 8011:8001 -p 8012:8002" in unit
    assert "-v /srv/triton/models:/models:ro" in unit
    (ready,) = [o for o in starlord if o.name.endswith("Triton is ready (every model loaded)")]
    assert "http://127.0.0.1:8010" in ready.commands[0] and "/v2/health/ready" in ready.commands[0]
