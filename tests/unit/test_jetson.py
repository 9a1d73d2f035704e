"""The Jetson's facts and metrics: Jetson Linux's release file and tegrastats lines as real
boards print them, turned into Prometheus's text format."""

from __future__ import annotations

from pathlib import Path

from gpufleet.facts.jetson import parse_tegra_release
from gpufleet.tegrastats import exposition, parse_tegrastats

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jetson"


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_jetson_linux_release_and_its_jetpack():
    assert parse_tegra_release(lines("nv_tegra_release-r36.4.3.txt")) == {
        "l4t": "36.4.3",
        "major": 36,
        "board": "generic",
        "jetpack": "6.2",
    }
    assert parse_tegra_release([]) is None  # not a Jetson: no file
    assert parse_tegra_release(["Debian GNU/Linux 12"]) is None
    unknown = parse_tegra_release(["# R37 (release), REVISION: 1.0, GCID: 1, BOARD: x"])
    assert unknown is not None and unknown["l4t"] == "37.1.0" and unknown["jetpack"] is None


def samples_of(line: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(n, tuple(sorted(labels.items()))): v for n, labels, v in parse_tegrastats(line)}


def test_an_orin_nano_line_becomes_memory_gpu_temperature_and_power():
    samples = samples_of(lines("tegrastats-orin-nano-jp6.txt")[0])
    assert samples[("gpufleet_tegra_ram_used_bytes", ())] == 2272 * 1024 * 1024
    assert samples[("gpufleet_tegra_ram_total_bytes", ())] == 7620 * 1024 * 1024
    assert samples[("gpufleet_tegra_swap_used_bytes", ())] == 221 * 1024 * 1024
    assert samples[("gpufleet_tegra_gpu_load_percent", ())] == 0
    cores = [k for k in samples if k[0] == "gpufleet_tegra_cpu_load_percent"]
    assert len(cores) == 6
    assert samples[("gpufleet_tegra_temperature_celsius", (("zone", "gpu"),))] == 55.468
    assert samples[("gpufleet_tegra_temperature_celsius", (("zone", "tj"),))] == 56.656
    assert samples[("gpufleet_tegra_power_watts", (("rail", "VDD_IN"),))] == 4.673
    assert samples[("gpufleet_tegra_power_watts", (("rail", "VDD_CPU_GPU_CV"),))] == 0.527
    # No CPU frequency "@729" is mistaken for a temperature.
    zones = {dict(k[1])["zone"] for k in samples if k[0].endswith("temperature_celsius")}
    assert zones == {"cpu", "soc0", "soc1", "soc2", "gpu", "tj"}


def test_offline_cores_and_another_modules_rails():
    samples = samples_of(lines("tegrastats-agx-orin-jp5.txt")[0])
    cores = sorted(dict(k[1])["core"] for k in samples if k[0].endswith("cpu_load_percent"))
    assert cores == ["0", "1"]  # cores 2 and 3 are "off"
    assert samples[("gpufleet_tegra_power_watts", (("rail", "VDD_GPU_SOC"),))] == 3.2
    assert ("gpufleet_tegra_power_watts", (("rail", "VDD_IN"),)) not in samples
    assert parse_tegrastats("tegrastats: permission denied") == []


def test_exposition_is_prometheus_text_with_one_help_and_type_per_metric():
    text = exposition(parse_tegrastats(lines("tegrastats-orin-nano-jp6.txt")[1]))
    assert text.count("# TYPE gpufleet_tegra_power_watts gauge") == 1
    assert 'gpufleet_tegra_power_watts{rail="VDD_IN"} 5.263' in text.splitlines()
    assert "gpufleet_tegra_gpu_load_percent 0" in text.splitlines()
    assert text.endswith("\n")


def rails(line: str) -> dict[str, float]:
    return {dict(k[1])["rail"]: v for k, v in samples_of(line).items() if k[0].endswith("watts")}


def test_jetpack_4_rails_without_units_are_milliwatts():
    nano = rails(lines("tegrastats-nano-jp4-rails-without-units.txt")[0])
    assert nano == {"POM_5V_IN": 2.746, "POM_5V_GPU": 0.159, "POM_5V_CPU": 0.796}
    tx2 = rails(lines("tegrastats-tx2-jp4-rails-without-units.txt")[0])
    assert tx2["VDD_IN"] == 5.297 and tx2["VDD_SYS_GPU"] == 0.182
    assert tx2["VDD_4V0_WIFI"] == 0
    # RAM, SWAP and IRAM (x/yMB, x/ykB) are no rails.
    assert not {"RAM", "SWAP", "IRAM"} & (set(nano) | set(tx2))
    samples = samples_of(lines("tegrastats-nano-jp4-rails-without-units.txt")[0])
    assert samples[("gpufleet_tegra_ram_used_bytes", ())] == 1464 * 1024 * 1024
    assert samples[("gpufleet_tegra_gpu_load_percent", ())] == 7


def test_a_zone_without_sensor_is_no_temperature_and_nc_is_no_rail():
    line = lines("tegrastats-agx-orin-jp5-no-sensor.txt")[0]
    zones = {
        dict(k[1])["zone"]: v
        for k, v in samples_of(line).items()
        if k[0] == "gpufleet_tegra_temperature_celsius"
    }
    assert "CV0" not in zones and "CV1" not in zones and "CV2" not in zones  # -256C
    assert zones["GPU"] == 38.156 and zones["CPU"] == 43.5
    assert "NC" not in rails(line)
    assert rails(line)["VDD_GPU_SOC"] == 4.788
    # Every series once: the node exporter rejects a file that repeats one.
    text = exposition(parse_tegrastats(line)).splitlines()
    series = [entry.rsplit(" ", 1)[0] for entry in text if not entry.startswith("#")]
    assert len(series) == len(set(series))
