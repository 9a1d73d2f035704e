"""The placement solver (``gpufleet plan --suggest``): where it puts each want, why it leaves
one out, and that nothing it proposes is what ``gpufleet validate`` refuses."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.checks import check_fleet, check_host
from gpufleet.engines import engine_for
from gpufleet.inventory import validate_file
from gpufleet.inventory_edit import models_patch
from gpufleet.models import HostSpec
from gpufleet.planner import place_in, plan_host
from gpufleet.suggest import Want, WantsError, load_wants, solve

ROOT = Path(__file__).parents[2]
CATALOGUE = load_catalogue()
HOMELAB = ROOT / "inventory/homelab.py"
HOMELAB_WANTS = ROOT / "inventory/homelab-wants.yaml"

RTX_4090 = {"cores": 16, "ram_gb": 64, "accelerators": [{"kind": "nvidia", "model": "RTX 4090"}]}
DDR5_64 = {"cores": 16, "ram_gb": 64, "ram_type": "ddr5"}
DDR4_16 = {"cores": 4, "ram_gb": 16}
DDR4_128 = {"cores": 16, "ram_gb": 128}


def host(name, hardware, group="cpu_nodes", **data):
    if group == "gpu_nodes":
        data.setdefault("nvidia_driver", {"version": "535.261.03"})
    return HostSpec(name=name, groups=(group,), hardware=hardware, **data)


def fleet(*specs):
    return {spec.name: spec for spec in specs}


def want(alias="M-LOC-FRE-qwen2.5-14b", model="qwen2.5:14b", **data):
    return Want(alias=alias, model=model, **data)


def placed(suggestion, alias):
    return [(d.host, d.priority) for d in suggestion.decisions if d.alias == alias]


# --- where a want goes -------------------------------------------------------------------


def test_a_want_goes_where_it_reaches_its_speed_and_the_plan_agrees():
    specs = fleet(host("gpu", RTX_4090, "gpu_nodes"), host("cpu", DDR5_64))
    suggestion = solve(specs, [want(min_tok_s=30)], CATALOGUE)
    assert placed(suggestion, "M-LOC-FRE-qwen2.5-14b") == [("gpu", 1)]
    decision = suggestion.decisions[0]
    # The figures shown are the planner's for the host as proposed: one decision, one place.
    plan = plan_host(suggestion.specs["gpu"], CATALOGUE).placements[0]
    assert (decision.where, decision.bound_tok_s, decision.context) == (
        plan.where, plan.bound_tok_s, plan.context,
    )  # fmt: skip
    assert decision.bound_tok_s >= 30
    assert suggestion.specs["cpu"].models == ()


def test_binpack_takes_the_closest_fit_and_keeps_the_big_host_free():
    specs = fleet(host("big", DDR4_128), host("small", DDR4_16))
    wants = [
        want("S-LOC-FRE-llama3.2-3b", "llama3.2:3b"),
        want("XL-LOC-FRE-llama3.1-70b", "llama3.1:70b-instruct-q4_K_M"),
    ]
    suggestion = solve(specs, wants, CATALOGUE, strategy="binpack")
    assert placed(suggestion, "S-LOC-FRE-llama3.2-3b") == [("small", 1)]
    assert placed(suggestion, "XL-LOC-FRE-llama3.1-70b") == [("big", 1)]
    assert "closest fit of 2 hosts" in suggestion.decisions[0].why


def test_spread_takes_the_host_with_the_most_of_its_memory_left():
    specs = fleet(host("big", DDR4_128), host("small", DDR4_16))
    wants = [want(), want("S-LOC-FRE-llama3.2-3b", "llama3.2:3b")]
    suggestion = solve(specs, wants, CATALOGUE)
    # 14B: big is left with 92% of its memory, small with 30%; then 3B: small 82%, big 85%.
    assert placed(suggestion, "M-LOC-FRE-qwen2.5-14b") == [("big", 1)]
    assert placed(suggestion, "S-LOC-FRE-llama3.2-3b") == [("big", 1)]
    assert "most room left of 2 hosts" in suggestion.decisions[0].why


def test_replicas_each_get_their_own_host_and_backups_the_next_priorities():
    specs = fleet(*(host(f"h{n}", DDR4_128) for n in range(4)))
    suggestion = solve(specs, [want(replicas=2, backups=2)], CATALOGUE)
    hosts = placed(suggestion, "M-LOC-FRE-qwen2.5-14b")
    assert sorted(p for _, p in hosts) == [1, 1, 2, 3]
    assert len({h for h, _ in hosts}) == 4
    assert not suggestion.unmet and not suggestion.problems


def test_more_replicas_than_hosts_says_so():
    specs = fleet(host("a", DDR4_128), host("b", DDR4_128))
    suggestion = solve(specs, [want(replicas=3)], CATALOGUE)
    assert len(suggestion.decisions) == 2
    [unmet] = suggestion.unmet
    assert unmet.role == "replica 3 of 3"
    assert "every host that may take it serves it already (2)" in unmet.why


def test_no_backup_is_placed_without_a_primary():
    specs = fleet(host("slow", DDR4_128))
    suggestion = solve(specs, [want(min_tok_s=500, backups=1)], CATALOGUE)
    assert suggestion.decisions == []
    assert [u.role for u in suggestion.unmet] == ["replica 1 of 1"]


def test_too_slow_everywhere_names_the_fastest_host_and_the_planners_bound():
    specs = fleet(host("gpu", RTX_4090, "gpu_nodes"), host("cpu", DDR5_64))
    suggestion = solve(specs, [want(min_tok_s=1000)], CATALOGUE)
    [unmet] = suggestion.unmet
    bound = (
        plan_host(
            specs["gpu"].model_copy(update={"models": (want().placement("ollama", 1, None),)}),
            CATALOGUE,
        )
        .placements[0]
        .bound_tok_s
    )
    assert f"the fastest is gpu at <= {bound:g} tok/s" in unmet.why
    assert f"lower the minimum to {int(bound)}" in unmet.why


def test_a_model_no_single_host_holds_is_refused_with_the_room_there_is():
    specs = fleet(host("a", DDR4_128), host("b", DDR4_128))
    suggestion = solve(specs, [want("XL-LOC-FRE-dsc", "deepseek-coder-v2:236b")], CATALOGUE)
    [unmet] = suggestion.unmet
    assert "143 GB of weights at Q4_K_M and no single host has room for it" in unmet.why
    assert (
        "the most left is 126 GB on a (split by free memory it would fit: 30 on a and 30 on b"
        in unmet.why
    )
    assert "with engine llama.cpp and rpc_workers [" in unmet.why


def test_hosts_pins_a_want_and_pinned_wants_go_first():
    specs = fleet(host("only", DDR4_16), host("other", DDR4_128))
    wants = [
        want("M-LOC-FRE-anywhere", "qwen2.5:14b"),  # would take "only" (the closest fit)
        want("S-LOC-FRE-pinned", "llama3.2:3b", hosts=("only",)),
    ]
    suggestion = solve(specs, wants, CATALOGUE)
    assert placed(suggestion, "S-LOC-FRE-pinned") == [("only", 1)]
    assert suggestion.decisions[0].alias == "S-LOC-FRE-pinned"


def test_context_is_halved_down_to_min_context_to_make_a_fit():
    specs = fleet(host("small", DDR4_16))
    wanted = want("S-LOC-FRE-llama3.1-8b", "llama3.1:8b", context=131072, min_context=16384)
    suggestion = solve(specs, [wanted], CATALOGUE)
    [decision] = suggestion.decisions
    assert 16384 <= decision.context < 131072
    assert f"context lowered to {decision.context}" in decision.why
    refused = solve(specs, [wanted.model_copy(update={"min_context": None})], CATALOGUE)
    assert refused.decisions == [] and refused.unmet


def test_an_engine_that_needs_an_nvidia_gpu_is_never_put_on_a_cpu_host():
    specs = fleet(host("cpu", DDR4_128))
    wanted = want(engines=("vllm",), source="Qwen/Qwen2.5-14B-Instruct-AWQ")
    suggestion = solve(specs, [wanted], CATALOGUE)
    assert suggestion.decisions == []
    assert "vllm needs an NVIDIA GPU" in suggestion.unmet[0].why


def test_placements_the_wants_do_not_name_stay_and_take_their_memory_first():
    kept = {"model": "llama3.1:70b-instruct-q4_K_M", "alias": "XL-LOC-FRE-kept"}
    specs = fleet(host("a", {"cores": 16, "ram_gb": 64}, models=[kept]), host("b", DDR4_128))
    wants = [want("XL-LOC-FRE-new", "qwen2.5:72b-instruct-q4_K_M", replicas=2)]
    suggestion = solve(specs, wants, CATALOGUE)
    assert suggestion.specs["a"].models[0].alias == "XL-LOC-FRE-kept"
    assert placed(suggestion, "XL-LOC-FRE-new") == [("b", 1)]  # a's 64 GB cannot hold both
    assert suggestion.unmet[0].role == "replica 2 of 2"


def test_layers_a_host_holds_for_another_hosts_split_take_their_memory_first():
    """b holds part of a's split 70B model for it: the solver sees what that leaves on b."""
    split = {
        "model": "llama3.1:70b-instruct-q4_K_M",
        "engine": "llama.cpp",
        "alias": "XL-LOC-FRE-split",
        "source": "/srv/models/llama-70b.gguf",
        "rpc_workers": ["b"],
    }
    address = {"lan_address": "10.9.0.1"}
    specs = fleet(
        host("a", {"cores": 16, "ram_gb": 48}, models=[split], **address),
        host("b", DDR5_64, lan_address="10.9.0.2"),
    )
    held = plan_host(specs["b"], CATALOGUE, specs).rpc_parts[0].need_gb
    assert held > 10
    wants = [want("XL-LOC-FRE-new", "qwen2.5:72b-instruct-q4_K_M")]
    suggestion = solve(specs, wants, CATALOGUE)
    # Alone, b's 62 GB would take the 72B model; beside the layers it holds, it cannot.
    assert plan_host(specs["b"], CATALOGUE).ram_used_gb == 0
    assert placed(suggestion, "XL-LOC-FRE-new") == []
    assert suggestion.specs["a"].models[0].alias == "XL-LOC-FRE-split"


def test_the_same_inputs_give_the_same_proposal_in_any_host_order():
    specs = fleet(*(host(f"h{n}", DDR4_128 if n % 2 else DDR5_64) for n in range(6)))
    wants = [want(replicas=3), want("S-LOC-FRE-llama3.2-3b", "llama3.2:3b", replicas=2)]
    first = solve(specs, wants, CATALOGUE)
    again = solve(dict(reversed(list(specs.items()))), wants, CATALOGUE)
    assert [(d.alias, d.host) for d in first.decisions] == [
        (d.alias, d.host) for d in again.decisions
    ]


# --- the wants file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "wants: [{alias: qwen, model: 'qwen2.5:14b'}]",
            "wants.0.alias: alias 'qwen' does not follow",
        ),
        (
            "- {alias: M-LOC-FRE-q, model: 'qwen2.5:14b', engines: [tgi]}",
            "wants.0.engines (M-LOC-FRE-q): unknown engine 'tgi'",
        ),
        (
            "- {alias: M-LOC-FRE-q, model: 'qwen2.5:14b', engines: [llama.cpp]}",
            "llama.cpp serves a GGUF file: give source (its URL) and sha256",
        ),
        ("- {alias: M-LOC-FRE-q, model: 'qwen2.5:14b', replicas: 0}", "wants.0.replicas"),
        (
            "- {alias: M-LOC-FRE-q, model: 'qwen2.5:14b', typo: 1}",
            "wants.0.typo (M-LOC-FRE-q): Extra inputs",
        ),
        ("wants: [}", "not YAML at line 1"),
        (
            "- {alias: M-LOC-FRE-q, model: 'a:1b'}\n- {alias: M-LOC-FRE-q, model: 'b:1b'}",
            "M-LOC-FRE-q is wanted twice",
        ),
    ],
)
def test_a_bad_wants_file_names_the_field_and_the_fix(tmp_path, text, expected):
    path = tmp_path / "wants.yaml"
    path.write_text(text)
    with pytest.raises(WantsError) as raised:
        load_wants(path)
    assert expected in str(raised.value)
    assert str(path) in str(raised.value)


def test_an_unknown_model_is_refused_before_anything_is_placed():
    specs = fleet(host("a", DDR4_128))
    with pytest.raises(
        WantsError, match=r"wants.0.model \(M-LOC-FRE-x\): unknown model 'qwen2.5:15b'"
    ):
        solve(specs, [want("M-LOC-FRE-x", "qwen2.5:15b")], CATALOGUE)


# --- never what the checks refuse; unmet only where nothing can -------------------------


def _bench():
    spec = importlib.util.spec_from_file_location("bench_suggest", ROOT / "bench/suggest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_unmet_are_unmeetable(suggestion, wants):
    """Brute force on the proposal: no host that may take an unmet want could, with every
    model it has loaded at once (as the solver plans), at the want's speed."""
    by_alias = {w.alias: w for w in wants}
    for unmet in suggestion.unmet:
        wanted = by_alias[unmet.alias]
        priority = 1 if unmet.role.startswith("replica") else 1 + int(unmet.role.split()[-1])
        floor = wanted.min_tok_s if priority == 1 else wanted.backup_min_tok_s
        for name, spec in suggestion.specs.items():
            if wanted.hosts and name not in wanted.hosts:
                continue
            if not set(spec.groups) & {"gpu_nodes", "cpu_nodes", "edge"} and not spec.models:
                continue
            if any((p.alias or p.model) == unmet.alias for p in spec.models):
                continue
            for engine in wanted.engines:
                placement = wanted.placement(engine, priority, wanted.context)
                trial = spec.model_copy(update={"models": (*spec.models, placement)})
                if check_host(trial, CATALOGUE):
                    continue
                result = place_in(spec, placement, _entry(placement), _resident_room(spec))
                fits_at_speed = not result.problem and (
                    floor is None or (result.bound_tok_s or 0) >= floor
                )
                assert not fits_at_speed, (unmet, name, result)


def _entry(placement):
    from gpufleet.catalogue import model_entry

    return model_entry(placement, CATALOGUE)


def _resident_room(spec):
    """What a host has left with every model it serves loaded, from its plan's figures."""
    from gpufleet.planner import Room

    plan = plan_host(spec, CATALOGUE)
    shared = plan.vram_gb if plan.unified else 0.0
    vram_left, ram_left = plan.vram_gb, plan.ram_gb - 2.0 - shared
    for p in plan.placements:
        # Loaded together, a model gets what the GPU has left; the rest of it is in RAM
        # (an AI Max box's 64 GB of GTT holds its 72B but not the 70B beside it).
        on_gpu = min(p.need_gb * p.gpu_layers / max(p.layers, 1), vram_left)
        vram_left -= on_gpu
        ram_left -= p.need_gb - on_gpu
    bandwidths = (plan.gpu_bandwidth_gbs, plan.ram_bandwidth_gbs)
    return Room(vram_left, vram_left, max(ram_left, 0.0), *bandwidths)


def test_a_generated_fleet_of_200_hosts_gets_a_proposal_that_validates():
    bench = _bench()
    specs = bench.generated_fleet(200)
    wants = bench.generated_wants(100, CATALOGUE)
    suggestion = solve(specs, wants, CATALOGUE)
    assert len(suggestion.decisions) > 150
    assert suggestion.problems == []
    for name in suggestion.changed:
        assert check_host(suggestion.specs[name], CATALOGUE) == []
    assert check_fleet(suggestion.specs) == []
    _assert_unmet_are_unmeetable(suggestion, wants)
    for decision in suggestion.decisions:
        spec = suggestion.specs[decision.host]
        [placement] = [p for p in spec.models if p.alias == decision.alias]
        assert engine_for(spec, placement).name == decision.engine


# --- seed 004's fleet and wants ------------------------------------------------------------


@pytest.fixture(scope="module")
def homelab():
    specs = validate_file(HOMELAB)
    wants = load_wants(HOMELAB_WANTS)
    return specs, wants, solve(specs, wants, CATALOGUE)


def test_seed_004_every_alias_is_placed_where_it_can_be(homelab):
    _, wants, suggestion = homelab
    assert suggestion.problems == []
    _assert_unmet_are_unmeetable(suggestion, wants)
    for w in wants:
        hosts = [d.host for d in suggestion.decisions if d.alias == w.alias]
        assert len(hosts) == len(set(hosts)), w.alias  # spread: one host each
        if w.hosts:
            assert set(hosts) <= set(w.hosts), w.alias
    # The 5090 serves the coder at full speed; the Mac, its Metal models.
    assert ("akshat-pc", 1) in placed(suggestion, "XL-LOC-FRE-qwen2.5-coder-32b")
    assert placed(suggestion, "M-LOC-FRE-qwen2.5-14b-metal") == [("mac-mini-m4-pro", 1)]
    # The plan's 236B at Q4 on one AI Max box: 143 GB does not fit in 128.
    [dsc] = [u for u in suggestion.unmet if u.alias == "XL-LOC-FRE-deepseek-coder-236b-q4-cpu"]
    assert "143 GB of weights at Q4_K_M and no host it may go on has room" in dsc.why
    # "RTX 5090, 70B+: 20-30 tok/s" cannot be: the 72B does not fit in 32 GB of VRAM.
    [qwen72] = [u for u in suggestion.unmet if u.alias == "XL-LOC-FRE-qwen2.5-72b"]
    assert "no host with room for it reaches 20 tok/s" in qwen72.why
    # Nothing the inventory serves today is dropped: an unmet alias stays where it was.
    assert ("XL-LOC-FRE-qwen2.5-72b", "akshat-pc") in suggestion.kept


def test_seed_004_proposal_applies_as_a_patch_and_validates(homelab, tmp_path, monkeypatch):
    specs, _, suggestion = homelab
    inventory = tmp_path / "inventory/homelab.py"
    inventory.parent.mkdir()
    shutil.copy(HOMELAB, inventory)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    monkeypatch.chdir(tmp_path)
    changed = {name: suggestion.specs[name].models for name in suggestion.changed}
    patch = models_patch("inventory/homelab.py", changed)
    assert patch.by_hand == {}
    (tmp_path / "proposal.patch").write_text(patch.diff)
    git = shutil.which("git")
    subprocess.run([git, "apply", "proposal.patch"], cwd=tmp_path, check=True)
    # By its absolute path: pyinfra keeps the code of each file name it has run, so a name
    # another test ran (the repository's inventory/homelab.py) would run that code again.
    applied = validate_file(str(inventory))
    for name, spec in applied.items():
        # The inventory's own code adds claimed_tok_s to some tags after its models lists.
        unclaimed = [p.model_copy(update={"claimed_tok_s": None}) for p in spec.models]
        assert unclaimed == list(suggestion.specs[name].models), name
    # Only the models changed: every other field of every host is as it was.
    for name, spec in applied.items():
        assert spec.model_copy(update={"models": ()}) == specs[name].model_copy(
            update={"models": ()}
        )


def test_each_decision_shows_what_the_plan_of_its_host_will_say(homelab):
    _, _, suggestion = homelab
    for decision in suggestion.decisions:
        spec = suggestion.specs[decision.host]
        [placement] = [p for p in spec.models if p.alias == decision.alias]
        assert placement.priority == decision.priority
        result = plan_host(spec, CATALOGUE).placements[spec.models.index(placement)]
        shown = (decision.where, decision.gpu_layers, decision.bound_tok_s, decision.context)
        assert shown == (result.where, result.gpu_layers, result.bound_tok_s, result.context)


def test_place_in_is_what_plan_host_decides_for_a_lone_placement():
    spec = host("gpu", RTX_4090, "gpu_nodes", models=[{"model": "qwen2.5:32b"}])
    from gpufleet.catalogue import model_entry
    from gpufleet.planner import Room

    plan = plan_host(spec, CATALOGUE)
    placement = spec.models[0]
    entry = model_entry(placement, CATALOGUE)
    room = Room(
        plan.vram_gb, plan.vram_gb, 64 - 2.0, plan.gpu_bandwidth_gbs, plan.ram_bandwidth_gbs
    )
    alone = place_in(spec, placement, entry, room)
    assert (alone.where, alone.gpu_layers, alone.bound_tok_s) == (
        plan.placements[0].where, plan.placements[0].gpu_layers, plan.placements[0].bound_tok_s,
    )  # fmt: skip


# --- the patch and the command line ------------------------------------------------------

INVENTORY_TEXT = '''\
"""Three boxes; é in a comment moves byte offsets past characters."""

_SHARED = {"hardware": {"cores": 8, "ram_gb": 64}}

cpu_nodes = [
    ("alpha", {"hardware": {"cores": 8, "ram_gb": 64}}),  # é
    (
        "beta",
        {
            "hardware": {"cores": 8, "ram_gb": 64},
            "models": [{"model": "llama3.2:3b", "alias": "S-LOC-FRE-old"}],
        },
    ),
    ("gamma", _SHARED),
]
'''


def test_the_patch_rewrites_or_adds_models_and_leaves_the_rest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.py").write_text(INVENTORY_TEXT)
    specs = validate_file("fleet.py")
    wants = [want(replicas=3)]
    suggestion = solve(specs, wants, CATALOGUE)
    changed = {name: suggestion.specs[name].models for name in suggestion.changed}
    patch = models_patch("fleet.py", changed)
    assert patch.diff.startswith("--- a/fleet.py\n+++ b/fleet.py\n")
    assert set(patch.by_hand) == {"gamma"}  # its data is a name, not a literal
    assert patch.by_hand["gamma"].startswith('"models": [')
    subprocess.run([shutil.which("git"), "apply", "-"], input=patch.diff, text=True, check=True)
    applied = validate_file(str(tmp_path / "fleet.py"))  # a name pyinfra has not run
    assert [p.alias for p in applied["alpha"].models] == ["M-LOC-FRE-qwen2.5-14b"]
    assert [p.alias for p in applied["beta"].models] == ["S-LOC-FRE-old", "M-LOC-FRE-qwen2.5-14b"]
    text = (tmp_path / "fleet.py").read_text()
    assert text.startswith(INVENTORY_TEXT.split("cpu_nodes")[0])  # the head untouched


def test_plan_suggest_prints_the_proposal_and_exits_1_when_a_want_is_unmet(capsys):
    from gpufleet import cli

    code = cli.main(["plan", str(HOMELAB), "--suggest", str(HOMELAB_WANTS)])
    out, _ = capsys.readouterr()
    assert code == 1
    rows = [line.split() for line in out.splitlines()]
    assert ["XL-LOC-FRE-qwen2.5-coder-32b", "replica", "1", "of", "1", "akshat-pc"] in [
        row[:6] for row in rows
    ]
    assert "Not met (" in out and "stays on akshat-pc, as the inventory has it" in out


def test_plan_suggest_json_and_the_patch_alone_on_stdout(capsys, tmp_path):
    import json

    from gpufleet import cli, outputs

    (tmp_path / "w.yaml").write_text("- {alias: S-LOC-FRE-tiny, model: 'llama3.2:1b'}\n")
    code = cli.main(["plan", str(HOMELAB), "--suggest", str(tmp_path / "w.yaml"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    document = json.loads(out)
    outputs.SuggestOutput.model_validate(document)
    assert [p["alias"] for p in document["placements"]] == ["S-LOC-FRE-tiny"]
    assert document["problems"] == [] and document["unmet"] == []
    code = cli.main(["plan", str(HOMELAB), "--suggest", str(tmp_path / "w.yaml"), "--diff", "-"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.startswith("--- a/") and '"alias": "S-LOC-FRE-tiny"' in out


def test_diff_without_suggest_and_a_bad_wants_file_are_usage_errors(capsys, tmp_path):
    from gpufleet import cli

    assert cli.main(["plan", str(HOMELAB), "--diff", "-"]) != 0
    assert "give --suggest WANTS" in capsys.readouterr().err
    wants = str(HOMELAB_WANTS)
    assert cli.main(["plan", str(HOMELAB), "--suggest", wants, "--json", "--diff", "-"]) != 0
    assert "give --diff FILE" in capsys.readouterr().err
    (tmp_path / "w.yaml").write_text("- {alias: nope, model: 'llama3.2:1b'}\n")
    assert cli.main(["plan", str(HOMELAB), "--suggest", str(tmp_path / "w.yaml")]) != 0
    err = capsys.readouterr().err
    assert "wants.0.alias: alias 'nope' does not follow" in err


def test_a_fleet_started_with_init_gets_its_hosts_yaml_patched(tmp_path, monkeypatch):
    """A newcomer's fleet keeps its hosts in hosts.yaml beside inventory.py: the patch edits
    that file, and the fleet validates with the proposal applied."""
    import yaml

    from gpufleet import cli
    from gpufleet.hosts_file import write_hosts

    assert cli.main(["init", str(tmp_path)]) == 0
    write_hosts(
        tmp_path / "hosts.yaml",
        {
            "desk": {"groups": ["cpu_nodes"], "ssh_hostname": "192.0.2.10", "hardware": DDR5_64},
            "nas": {"groups": ["cpu_nodes"], "ssh_hostname": "192.0.2.11", "hardware": DDR4_16},
        },
    )
    monkeypatch.chdir(tmp_path)
    specs = validate_file(str(tmp_path / "inventory.py"))
    suggestion = solve(specs, [want(), want("S-LOC-FRE-llama3.2-3b", "llama3.2:3b")], CATALOGUE)
    assert {d.host for d in suggestion.decisions} == {"desk", "nas"}
    changed = {name: suggestion.specs[name].models for name in suggestion.changed}
    patch = models_patch("inventory.py", changed)
    assert patch.by_hand == {} and "+++ b/hosts.yaml" in patch.diff
    subprocess.run([shutil.which("git"), "apply", "-"], input=patch.diff, text=True, check=True)
    hosts = yaml.safe_load((tmp_path / "hosts.yaml").read_text())["hosts"]
    assert hosts["nas"]["models"] == [{"model": "llama3.2:3b", "alias": "S-LOC-FRE-llama3.2-3b"}]
    (tmp_path / "inventory_applied.py").write_text((tmp_path / "inventory.py").read_text())
    applied = validate_file(str(tmp_path / "inventory_applied.py"))  # a name pyinfra has not run
    assert {n: s.models for n, s in applied.items()} == {
        n: suggestion.specs[n].models for n in applied
    }


def test_a_failed_replica_is_said_once_and_the_backups_still_come():
    specs = fleet(host("gpu", RTX_4090, "gpu_nodes"), host("cpu", DDR5_64), host("old", DDR4_16))
    suggestion = solve(specs, [want(min_tok_s=30, replicas=3, backups=1)], CATALOGUE)
    assert placed(suggestion, "M-LOC-FRE-qwen2.5-14b")[0] == ("gpu", 1)
    assert [d.priority for d in suggestion.decisions] == [1, 2]
    assert [u.role for u in suggestion.unmet] == ["replica 2 of 3 (and the 1 after it)"]


# --- a model split across hosts (planned, not served yet) --------------------------------


def test_a_split_gives_each_host_layers_in_proportion_to_its_free_memory():
    from gpufleet.planner import split_by_layers
    from gpufleet.sizing import weights_gb

    entry = CATALOGUE.model("deepseek-coder-v2:236b")
    hosts = [("big", 100.0, 200.0), ("one", 50.0, 50.0), ("two", 50.0, 50.0)]
    split = split_by_layers("deepseek-coder-v2:236b", entry, "Q4_K_M", 2048, hosts)
    assert split.problem is None
    assert [(p.host, p.layers) for p in split.parts] == [("big", 30), ("one", 15), ("two", 15)]
    active = weights_gb(entry.active_params_b, "Q4_K_M")
    seconds = active * 0.5 / 200 + active * 0.25 / 50 + active * 0.25 / 50
    assert split.bound_tok_s == round(1 / seconds, 1)
    # Hosts of one bandwidth read the whole model at that bandwidth, as one host would.
    even = split_by_layers("m", entry, "Q4_K_M", 2048, [("a", 100.0, 50.0), ("b", 100.0, 50.0)])
    assert even.bound_tok_s == round(50 / active, 1)


def test_a_split_that_overfills_a_host_says_which():
    from gpufleet.planner import split_by_layers

    entry = CATALOGUE.model("llama3.1:70b")
    split = split_by_layers(
        "llama3.1:70b", entry, "Q4_K_M", 131072, [("a", 30.0, 50), ("b", 30.0, 50)]
    )
    assert split.bound_tok_s is None
    assert split.problem.startswith("a would hold 40 layers")
