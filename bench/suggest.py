"""How long the placement solver takes on a generated fleet (contacts no host).

    python bench/suggest.py                      # 200 hosts, 100 wanted models, 3 rounds
    python bench/suggest.py --hosts 1000 --models 300

The fleet mixes the hardware a homelab has: NVIDIA desktops of one to four cards from the
catalogue, AI Max and Mac unified-memory boxes, DDR4 and DDR5 CPU boxes. The wants are the
catalogue's models (and their Q8 variants), each with replicas, backups and a speed drawn
from a seeded generator: the same arguments give the same fleet, wants and proposal. Prints
the time of each round and what was placed; the README's table has the figure.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpufleet.catalogue import Catalogue, load_catalogue
from gpufleet.models import HostSpec
from gpufleet.suggest import Suggestion, Want, solve

GPUS = ("RTX 3060", "RTX 3090", "RTX 4060 Ti", "RTX 4090", "RTX 5090", "RTX 2080 Super", "A100")
UNIFIED = (
    ({"kind": "amd_igpu", "model": "Radeon 8060S"}, "linux", 128),
    ({"kind": "apple_metal", "model": "M4 Pro"}, "macos", 48),
)
CPU_RAM_GB = (16, 32, 64, 128, 256)


def generated_fleet(hosts: int, seed: int = 0) -> dict[str, HostSpec]:
    """``hosts`` inference hosts, the same for the same seed."""
    draw = random.Random(seed)
    specs = {}
    for number in range(hosts):
        name = f"node-{number:04d}"
        kind = draw.random()
        data: dict = {"cores": draw.choice((8, 12, 16, 24, 32))}
        os_name = "debian"
        if kind < 0.45:
            group = "gpu_nodes"
            data["ram_gb"] = draw.choice((32, 64, 128, 192))
            data["ram_type"] = draw.choice(("ddr4", "ddr5"))
            data["accelerators"] = [
                {"kind": "nvidia", "model": draw.choice(GPUS), "count": draw.choice((1, 1, 2, 4))}
            ]
        elif kind < 0.6:
            group = "cpu_nodes"
            accelerator, os_name, ram = draw.choice(UNIFIED)
            data["ram_gb"] = ram
            data["accelerators"] = [accelerator]
            if os_name == "macos":
                os_name = "macos"
        else:
            group = "cpu_nodes"
            data["ram_gb"] = draw.choice(CPU_RAM_GB)
            data["ram_type"] = draw.choice(("ddr4", "ddr5"))
            data["ram_channels"] = draw.choice((2, 2, 4, 8))
        extra = {"os": os_name, "arch": "aarch64"} if os_name == "macos" else {}
        specs[name] = HostSpec(name=name, groups=(group,), hardware=data, **extra)
    return specs


def generated_wants(count: int, catalogue: Catalogue, seed: int = 0) -> list[Want]:
    """``count`` wants over the catalogue's models (Q8 variants after the Q4 ones)."""
    draw = random.Random(seed)
    tags = sorted(catalogue.models)
    sized = [tag for tag in tags if ":" in tag]
    pool = [*tags, *(f"{tag}-instruct-q8_0" for tag in sized)]
    wants = []
    for index, tag in enumerate(pool[:count]):
        entry = catalogue.model(tag)
        assert entry is not None, tag
        slug = tag.replace(":", "-").replace("_", "-").lower()
        size = "XL" if entry.params_b >= 60 else "L" if entry.params_b >= 20 else "M"
        speed = draw.choice((None, 5, 10, 20, 40)) if entry.kind != "embedding" else None
        wants.append(
            Want(
                alias=f"{size}-LOC-FRE-{slug}-{index}",
                model=tag,
                replicas=draw.choice((1, 1, 2, 3)),
                backups=draw.choice((0, 1, 2)),
                min_tok_s=speed,
                priority=draw.choice((1, 2, 3)),
            )
        )
    return wants


def one_round(
    specs: dict[str, HostSpec], wants: list[Want], catalogue: Catalogue
) -> tuple[float, Suggestion]:
    start = time.perf_counter()
    suggestion = solve(specs, wants, catalogue)
    return time.perf_counter() - start, suggestion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    catalogue = load_catalogue()
    specs = generated_fleet(args.hosts, args.seed)
    wants = generated_wants(args.models, catalogue, args.seed)
    times = []
    for round_number in range(1, args.rounds + 1):
        seconds, suggestion = one_round(specs, wants, catalogue)
        times.append(seconds)
        print(
            f"round {round_number}: {args.hosts} hosts, {len(wants)} wants: {seconds:.2f} s, "
            f"{len(suggestion.decisions)} placements, {len(suggestion.unmet)} not met, "
            f"{len(suggestion.problems)} problems"
        )
    print(f"median {statistics.median(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
