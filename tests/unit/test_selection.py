"""``--limit`` as pyinfra means it: groups, globs, repeats; nothing matched is an error."""

import pytest

from gpufleet.selection import NoHostsSelected, select_hosts

HOSTS = {
    "gpu-1": ("gpu_nodes",),
    "gpu-2": ("gpu_nodes", "proxmox_hosts"),
    "pi5": ("router", "gateway"),
    "nas": ("cpu_nodes",),
}


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ([], ["gpu-1", "gpu-2", "pi5", "nas"]),
        (["pi5"], ["pi5"]),
        (["gpu_nodes"], ["gpu-1", "gpu-2"]),
        (["gpu-*"], ["gpu-1", "gpu-2"]),
        (["router", "nas"], ["pi5", "nas"]),  # repeated --limit: the union, inventory order
        (["nas", "gpu-2", "gpu-2"], ["gpu-2", "nas"]),
        (["?as"], ["nas"]),
    ],
)
def test_limit_matches_pyinfra(limit, expected):
    assert select_hosts(HOSTS, limit).names == expected


def test_a_group_wins_over_a_host_glob_of_the_same_name():
    hosts = {"router": ("cpu_nodes",), "pi5": ("router",)}
    assert select_hosts(hosts, ["router"]).names == ["pi5"]


def test_a_pattern_that_matches_nothing_is_reported_beside_the_matches():
    selection = select_hosts(HOSTS, ["pi5", "pi6"])
    assert selection.names == ["pi5"]
    assert selection.warnings() == ["No host matches found for --limit pattern: pi6"]


@pytest.mark.parametrize("limit", [["pi6"], ["gpu-1,pi5"], ["GPU-*"]])
def test_nothing_left_is_an_error_naming_the_hosts_and_groups(limit):
    # A comma list is not split (pyinfra 3 dropped that): one pattern, matching no host name.
    with pytest.raises(NoHostsSelected) as raised:
        select_hosts(HOSTS, limit, source="inv.py")
    message = str(raised.value)
    assert f"--limit {limit[0]}" in message
    assert "inv.py" in message and "gpu_nodes" in message and "pi5" in message


def test_exclude_takes_hosts_away():
    assert select_hosts(HOSTS, ["gpu_nodes"], ["gpu-2"]).names == ["gpu-1"]
    with pytest.raises(NoHostsSelected):
        select_hosts(HOSTS, ["pi5"], ["gateway"])
