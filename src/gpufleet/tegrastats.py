"""tegrastats -> Prometheus: a Jetson's GPU load, memory, temperatures and power rails as
metrics the node exporter's textfile collector serves (a Jetson has no DCGM).

Runs on the Jetson with only Python's standard library::

    python3 tegrastats.py --out /var/lib/prometheus/node-exporter/gpufleet_tegra.prom

A tegrastats line from a Jetson Orin Nano (JetPack 6)::

    RAM 2272/7620MB (lfb 4x4MB) SWAP 221/3810MB (cached 0MB) CPU [0%@729,0%@1036]
    GR3D_FREQ 0% cpu@54.937C gpu@55.468C tj@56.656C VDD_IN 4673mW/4673mW VDD_SOC 1339mW/1339mW
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

MIB = 1024 * 1024
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPUS = re.compile(r"\bCPU \[([^\]]*)\]")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMPERATURE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w%])")
"""``VDD_IN 4673mW/4673mW``; JetPack 4 and early 5 print the same milliwatts without the unit
(``POM_5V_IN 2746/2911``). ``RAM 1464/3964MB`` is no rail: its number runs into ``MB``."""
NO_SENSOR = -256.0
"""What tegrastats prints for a thermal zone with no sensor behind it (``CV0@-256C``)."""
NOT_CONNECTED = "NC"
"""A monitor channel wired to nothing (AGX Orin prints two ``NC 0mW/0mW``)."""

Sample = tuple[str, dict[str, str], float]
HELP = {
    "gpufleet_tegra_ram_used_bytes": "Memory in use (shared by CPU and GPU).",
    "gpufleet_tegra_ram_total_bytes": "Memory of the module.",
    "gpufleet_tegra_swap_used_bytes": "Swap in use.",
    "gpufleet_tegra_swap_total_bytes": "Swap size.",
    "gpufleet_tegra_cpu_load_percent": "Load of each CPU core (offline cores left out).",
    "gpufleet_tegra_gpu_load_percent": "GPU (GR3D) load.",
    "gpufleet_tegra_temperature_celsius": "Temperature of each thermal zone tegrastats lists.",
    "gpufleet_tegra_power_watts": "Instantaneous power of each rail.",
}


def parse_tegrastats(line: str) -> list[Sample]:
    """One tegrastats line -> (metric, labels, value) samples; parts a board does not print
    (swap, a rail) or cannot read (a zone at -256C) are simply absent."""
    samples: list[Sample] = []
    for pattern, name in ((_RAM, "ram"), (_SWAP, "swap")):
        found = pattern.search(line)
        if found:
            used, total = (int(v) * MIB for v in found.groups())
            samples += [
                (f"gpufleet_tegra_{name}_used_bytes", {}, float(used)),
                (f"gpufleet_tegra_{name}_total_bytes", {}, float(total)),
            ]
    cpus = _CPUS.search(line)
    if cpus:
        for core, entry in enumerate(cpus.group(1).split(",")):
            load = entry.split("%")[0]
            if load.isdigit():  # "off" for a core that is offline
                samples.append(
                    ("gpufleet_tegra_cpu_load_percent", {"core": str(core)}, float(load))
                )
    gpu = _GPU.search(line)
    if gpu:
        samples.append(("gpufleet_tegra_gpu_load_percent", {}, float(gpu.group(1))))
    for zone, celsius in _TEMPERATURE.findall(line):
        if float(celsius) > NO_SENSOR:
            samples.append(("gpufleet_tegra_temperature_celsius", {"zone": zone}, float(celsius)))
    for rail, now, _average in _RAIL.findall(line):
        if rail != NOT_CONNECTED:  # twice on a line: the same series twice breaks the file
            samples.append(("gpufleet_tegra_power_watts", {"rail": rail}, int(now) / 1000))
    return samples


def exposition(samples: list[Sample]) -> str:
    """Samples in Prometheus's text format, one HELP and TYPE per metric."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, labels, value in samples:
        if name not in seen:
            seen.add(name)
            lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} gauge"]
        label_text = ",".join(f'{key}="{val}"' for key, val in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    """The node exporter never reads half a file: write beside it, then rename."""
    folder = os.path.dirname(path)
    descriptor, staged = tempfile.mkstemp(dir=folder, prefix=".gpufleet_tegra.")
    with os.fdopen(descriptor, "w") as staged_file:
        staged_file.write(text)
    os.chmod(staged, 0o644)
    os.replace(staged, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the .prom file to keep current")
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--tegrastats", default="tegrastats")
    args = parser.parse_args(argv)
    process = subprocess.Popen(
        [args.tegrastats, "--interval", str(args.interval_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        samples = parse_tegrastats(line)
        if samples:
            write_atomically(args.out, exposition(samples))
    return process.wait() or 1  # tegrastats never ends on its own: systemd restarts us


if __name__ == "__main__":
    sys.exit(main())
