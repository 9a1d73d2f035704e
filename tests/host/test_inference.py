"""testinfra: inference servers. llama.cpp is real end to end (built from source here, a real
model, a real completion); Ollama and vLLM cannot be fetched here, so their users, units,
drop-ins, flags and secrets are checked, not their serving."""

import itertools
import json
import stat
from pathlib import Path

import pytest
import requests

from gpufleet import lab
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.engines.ollama import OLLAMA
from gpufleet.engines.vllm import VLLM
from gpufleet.operations.inference import BASE_FLAGS, CCACHE_FLAGS, build_stamp
from gpufleet.roles.llamacpp import build_cache
from gpufleet.serving import placement_runs

from .conftest import SPECS, LabSession, llama_headers, ssh

LLAMA = "XS-LOC-FRE-gemma3-270m"
DEPLOY = "deploys/inference.py"


def unit_exec_start(lab_host, unit: str) -> str:
    content = lab_host.testinfra.file(f"/etc/systemd/system/{unit}").content_string
    return next(line for line in content.splitlines() if line.startswith("ExecStart="))


# --- llama.cpp, for real ---------------------------------------------------------------------


@pytest.mark.hosts("lab-gpu-1")
def test_llama_server_built_from_the_verified_source_for_the_cpu(lab_host):
    binary = lab_host.testinfra.file("/usr/local/bin/llama-server")
    assert binary.is_file and binary.mode == 0o755
    version = lab_host.testinfra.run("/usr/local/bin/llama-server --version")
    assert "built with GNU" in version.stdout + version.stderr
    assert "for Linux x86_64" in version.stdout + version.stderr
    # The build is recorded by its key: the source, CPU flags on a host without a GPU (the
    # ccache launcher changes nothing in the binary), the architecture and the release.
    stamp = lab_host.testinfra.file("/usr/local/bin/llama-server.gpufleet-build")
    assert stamp.content_string.strip() == lab_build_key()
    tarball = lab_host.testinfra.check_output(
        "sha256sum /var/cache/gpufleet/llama.cpp/llama.cpp-b0a2feb64c6f.tar.gz"
    )
    assert tarball.startswith(lab_host.spec.llamacpp.source_sha256)


def lab_build_key() -> str:
    """The key of the lab's one CPU build: Debian 12 on x86_64, llama.cpp's CPU flags."""
    source = SPECS["lab-gpu-1"].llamacpp.source_sha256
    assert source is not None
    flags = [*BASE_FLAGS, "-DGGML_NATIVE=OFF", *CCACHE_FLAGS]
    return build_stamp(source, flags, "x86_64", "Debian 12")


LLAMACPP_HOSTS = ["lab-gpu-1", "lab-pve-1", "lab-lxc-1", "lab-infra-1", "lab-cpu-1"]
"""The hosts of lab-gpu-1's build (CPU, Debian 12); lab-amd-1 makes a Vulkan build of its own
(tests/host/test_vulkan.py)."""


def test_llama_server_is_compiled_once_and_the_other_hosts_install_that_binary(
    lab_session: LabSession,
):
    """Five lab hosts need one build: lab-gpu-1, the first, compiles it; the others install
    its binary, checked, through the lab's build cache, and carry no compiler for it.
    lab-amd-1 (Debian 13, Vulkan) needs another, which it compiles itself."""
    runs = lab_session.runs[DEPLOY]
    built = sorted({h for op, h in runs.first.changed if "Build llama-server" in op})
    installed = sorted(
        {h for op, h in runs.first.changed if "Install llama-server (CPU) built on lab-gpu-1" in op}
    )
    assert built == ["lab-amd-1", "lab-gpu-1"]  # lab-amd-1: its own Vulkan build
    assert installed == sorted(set(LLAMACPP_HOSTS) - {"lab-gpu-1"})

    # The dry run showed the same before anything ran.
    def planned(operation: str) -> list[str]:
        return sorted(
            host
            for op in runs.dry.report["plan"]
            if any(operation in name for name in op["names"])
            for host in op["hosts_with_change"]
        )

    assert planned("Build llama-server") == built
    assert planned("Install llama-server (CPU) built on lab-gpu-1") == installed
    assert not [change for change in runs.second.changed if "llama" in change[0].lower()]
    key = lab_build_key()
    cache = Path(build_cache(SPECS["lab-gpu-1"])).expanduser()
    assert cache == lab.lab_dir() / lab.BUILD_CACHE
    assert stat.S_IMODE(cache.stat().st_mode) == stat.S_IMODE((cache / key).stat().st_mode) == 0o700
    # Both binaries of the build, kept and installed together: the server, and the RPC worker
    # a host that holds layers of another's model runs.
    kept = dict(
        line.split()[::-1]
        for line in (cache / key / "llama-server.sha256").read_text().splitlines()
    )
    assert set(kept) == {"llama-server", "ggml-rpc-server"}
    for name in LLAMACPP_HOSTS:
        address = str(SPECS[name].lan_address)
        assert ssh(address, "cat /usr/local/bin/llama-server.gpufleet-build").strip() == key
        for binary, sha256 in kept.items():
            assert ssh(address, f"sha256sum /usr/local/bin/{binary}").split()[0] == sha256
        compilers = ssh(address, "command -v cmake c++ || true").split()
        sources = ssh(address, "ls /var/cache/gpufleet/llama.cpp 2>/dev/null || true").split()
        if name == "lab-gpu-1":
            assert compilers and sources
        else:
            assert not compilers and not sources, name


@pytest.mark.hosts("lab-gpu-1")
def test_llama_server_runs_with_the_planned_flags(lab_host):
    spec = lab_host.spec
    run = placement_runs(spec, LLAMACPP)[0]
    planned = " ".join(run.rendered.command)
    assert unit_exec_start(lab_host, "llama-server.service") == f"ExecStart={planned}"
    # What runs is what the planner decided: its layer count, context, slots and threads.
    argv = lab_host.testinfra.check_output(
        "tr '\\0' '\\n' < /proc/$(pgrep -o -x llama-server)/cmdline"
    ).splitlines()
    flags = dict(itertools.pairwise(argv))
    assert flags["--n-gpu-layers"] == str(run.decision.gpu_layers)
    assert flags["--ctx-size"] == str(run.decision.context) == "2048"
    assert flags["--parallel"] == str(run.decision.slots)
    assert flags["--threads"] == str(run.decision.threads)
    service = lab_host.testinfra.service("llama-server")
    assert service.is_running and service.is_enabled
    assert lab_host.testinfra.socket("tcp://0.0.0.0:8080").is_listening
    model = lab_host.testinfra.file(f"/var/lib/llama.cpp/models/{LLAMA}.gguf")
    assert lab_host.testinfra.check_output(f"sha256sum {model.path}").startswith(
        spec.models[0].sha256
    )


@pytest.mark.hosts("lab-lxc-1")
def test_a_partial_offload_plan_is_what_llama_server_runs_with(lab_host):
    """The planner put 6 of Gemma's 18 layers on a GPU a declared service mostly holds;
    llama-server runs with exactly that, not with every layer."""
    run = placement_runs(lab_host.spec, LLAMACPP)[0]
    assert run.decision.where == "partial"
    assert 0 < run.decision.gpu_layers < run.decision.layers
    argv = lab_host.testinfra.check_output(
        "tr '\\0' '\\n' < /proc/$(pgrep -o -x llama-server)/cmdline"
    ).splitlines()
    assert dict(itertools.pairwise(argv))["--n-gpu-layers"] == str(run.decision.gpu_layers)
    health = requests.get(f"http://{lab_host.address}:8080/health", timeout=10)
    assert health.json() == {"status": "ok"}


@pytest.mark.hosts("lab-gpu-1")
def test_llama_server_answers_a_real_completion(lab_host):
    base = f"http://{lab_host.address}:8080"
    assert requests.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    predicted_before = predicted_tokens(base)
    reply = requests.post(
        f"{base}/v1/chat/completions",
        headers=llama_headers(),
        json={
            "model": LLAMA,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=120,
    ).json()
    assert reply["model"] == LLAMA
    assert reply["choices"][0]["message"]["content"].strip()
    generated = reply["usage"]["completion_tokens"]
    assert 0 < generated <= 12
    # /metrics counts what the model really generated for that request.
    assert predicted_tokens(base) == predicted_before + generated


def predicted_tokens(base: str) -> float:
    metrics = requests.get(f"{base}/metrics", headers=llama_headers(), timeout=10).text
    line = next(x for x in metrics.splitlines() if x.startswith("llamacpp:tokens_predicted_total"))
    return float(line.split()[1])


@pytest.mark.hosts("lab-gpu-1")
def test_startup_sequence_warmed_the_model_up_once(lab_host, lab_session):
    record = json.loads(
        lab_host.testinfra.file(f"/var/lib/gpufleet/warmup/{LLAMA}.json").content_string
    )
    assert record["model"] == LLAMA
    assert record["tokens"] > 0 and 0 < record["ttft_s"] < 120
    runs = lab_session.runs[DEPLOY]
    # One operation warms each host's llama.cpp model up (its name is the host's model's).
    warmed = [
        op
        for op in runs.first.report["results"]["operations"]
        if any(name.endswith(f"Warm up {LLAMA}") for name in op["names"])
    ]
    serving = [n for n, s in SPECS.items() if any(m.alias == LLAMA for m in s.models)]
    assert serving == ["lab-gpu-1", "lab-infra-1"]  # the primary and its CPU backup
    llama_hosts = [n for n, s in SPECS.items() if any(m.engine == "llama.cpp" for m in s.models)]
    assert warmed and sorted(warmed[0]["success"]) == sorted(llama_hosts)
    assert f"Warm up {LLAMA}" not in {name for name, _ in runs.second.changed}


@pytest.mark.hosts("lab-pve-1")
def test_the_embedding_model_is_served_with_embeddings_and_warmed_up_by_one(lab_host):
    """all-MiniLM-L6-v2: llama-server with --embeddings, off the card vLLM holds, warmed up
    with an embeddings call (a completion would be refused)."""
    (run,) = placement_runs(lab_host.spec, LLAMACPP)
    assert run.decision.kind == "embedding" and run.decision.gpu_layers == 0
    planned = " ".join(run.rendered.command)
    assert unit_exec_start(lab_host, "llama-server.service") == f"ExecStart={planned}"
    assert "--embeddings" in run.rendered.command
    assert lab_host.testinfra.service("llama-server").is_running
    alias = run.placement.alias
    record = json.loads(
        lab_host.testinfra.file(f"/var/lib/gpufleet/warmup/{alias}.json").content_string
    )
    assert record["model"] == alias and record["dimensions"] == 384


# --- Ollama: configured, not fetchable here --------------------------------------------------


@pytest.mark.hosts("lab-gpu-1")
def test_ollama_user_unit_and_drop_in(lab_host):
    user = lab_host.testinfra.user("ollama")
    assert user.exists and user.uid < 1000 and user.home == "/usr/share/ollama"
    assert unit_exec_start(lab_host, "ollama.service") == "ExecStart=/usr/local/bin/ollama serve"
    drop_in = lab_host.testinfra.file("/etc/systemd/system/ollama.service.d/override.conf")
    lines = [
        line for line in drop_in.content_string.splitlines() if line.startswith("Environment=")
    ]
    planned = dict(placement_runs(lab_host.spec, OLLAMA)[0].rendered.environment)
    assert lines == [f'Environment="{k}={v}"' for k, v in planned.items()]
    # systemd itself reads the drop-in.
    shown = lab_host.testinfra.check_output("systemctl show ollama --property Environment")
    assert "OLLAMA_HOST=0.0.0.0:11434" in shown and "OLLAMA_FLASH_ATTENTION=1" in shown
    assert lab_host.testinfra.service("ollama").is_enabled
    assert not lab_host.testinfra.service("ollama").is_running  # no binary to run


# --- vLLM: configured as installed by hand, key from a 0600 file ----------------------------


@pytest.mark.hosts("lab-pve-1")
def test_vllm_unit_flags_and_key_file(lab_host):
    spec = lab_host.spec
    planned = " ".join(placement_runs(spec, VLLM)[0].rendered.command)
    assert unit_exec_start(lab_host, "vllm.service") == f"ExecStart={planned}"
    env = lab_host.testinfra.file("/etc/gpufleet/vllm.env")
    assert env.mode == 0o640 and env.user == "root" and env.group == spec.service_user
    key = (lab.lab_dir() / lab.VLLM_KEY_FILE).read_text().strip()
    assert len(key) == 64
    assert lab_host.testinfra.check_output("cat /etc/gpufleet/vllm.env") == f"VLLM_API_KEY={key}"
    unit = lab_host.testinfra.file("/etc/systemd/system/vllm.service").content_string
    assert key not in unit
    assert lab_host.testinfra.service("vllm").is_enabled


def test_the_api_key_never_shows_in_plans_or_logs(lab_session):
    key = (lab.lab_dir() / lab.VLLM_KEY_FILE).read_text().strip()
    for runs in lab_session.runs.values():
        for run in (runs.dry, runs.first, runs.second):
            assert key not in run.stderr
            assert key not in json.dumps(run.report)


def test_the_planner_reads_the_served_gguf_header_like_the_catalogue(lab_session):
    # The GGUF the lab serves, as the control machine holds it.
    from gpufleet.catalogue import load_catalogue
    from gpufleet.gguf import read_model_entry

    header = read_model_entry(str(lab.cache_dir() / "artifacts" / lab.GGUF_NAME))
    catalogue = load_catalogue().model("gemma3:270m")
    assert catalogue is not None
    assert (header.layers, header.kv_heads, header.head_dim, header.context) == (
        catalogue.layers,
        catalogue.kv_heads,
        catalogue.head_dim,
        catalogue.context,
    )
    assert header.params_b == pytest.approx(catalogue.params_b, rel=0.01)
