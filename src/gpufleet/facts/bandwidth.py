"""How fast the host itself reads memory: a short, bounded probe of system memory, and of each
NVIDIA GPU's memory where the driver is installed, for the planner's decode-speed bound.

Why a probe approximates what decode reads: generating one token reads every active weight
once, front to back, from memory far larger than any cache, on all the cores llama.cpp runs
(or on the GPU). The probe does the same with nothing but what every gpufleet host has
(python3): one process per CPU, each streaming its own buffer with ``memchr`` (what
``bytes.find`` of one byte is: vectorised, as fast as a core can read), all at once, the
buffers together far larger than the last-level cache, best of a few rounds. The figure is
**read** bandwidth, since decode reads weights and writes almost nothing; it is what a
perfect engine could reach on this host, so the bound stays a bound.

The GPU's figure comes from the driver's own library (``libcuda``, present wherever the
NVIDIA driver is, no compiler or toolkit needed) through ctypes: device-to-device copies of
a buffer far larger than the GPU's L2, counted as bytes read plus bytes written (as CUDA's
bandwidthTest and STREAM count a copy). A copy reads and writes at close to the rate a
read-only stream reaches, so it stands in for the read bandwidth decode needs; a host
without the library (no driver yet, a Mac) gives no GPU figure and the planner keeps the
catalogue's.

Bounded so it never harms a busy host: the probe runs at nice 10, takes at most an eighth of
the memory available (and no probe under 128 MB of it), at most an eighth of a GPU's free
memory (none under 64 MB), and stops after 30 s (``timeout`` kills it at 60 s where it
exists). Taken while the host serves, the figures are lower: measure an idle host.
"""

from __future__ import annotations

import json
import shlex
from typing import TypedDict

from pyinfra.api import FactBase

PROBE_SECONDS = 30
"""The probe gives up (and reports what it has) after this long."""

PROBE = r"""
import json, os, signal, struct, sys, time

LIMIT_S, RAM_MB, ROUNDS, GPU_MB = (int(a) for a in sys.argv[1:5])
STARTED = time.monotonic()


class OutOfTime(Exception):
    pass


def out_of_time(*_):
    raise OutOfTime()


def available_bytes():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # a Mac: no MemAvailable; a quarter of the memory counts as free
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 0


def child(size, commands, answers, inherited):
    try:  # never returns: a child that raised would go on as a second parent
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(LIMIT_S + 5)
        for fd in inherited:  # the other children's pipes: each sees its own end alone
            os.close(fd)
        buffer = b"\x02" * size  # written, so every page is real memory, not the zero page
        os.write(answers, b"r")
        while os.read(commands, 1) == b"g":
            started, cpu = time.perf_counter(), time.process_time()
            buffer.find(b"\x01")  # memchr over the whole buffer: it holds no 1
            wall = time.perf_counter() - started
            os.write(answers, struct.pack("dd", wall, time.process_time() - cpu))
    finally:
        os._exit(0)


def ram():
    available = available_bytes()
    total = min(RAM_MB << 20, available // 8)
    if total < 128 << 20:
        why = f"{available >> 20} MB of memory available" if total < RAM_MB << 20 else "asked"
        return {"ram_read_gbs": None, "ram_note": f"{total >> 20} MB to read ({why}); not probed"}
    workers = max(1, min(os.cpu_count() or 1, 64))
    size = total // workers
    pipes = []
    for _ in range(workers):
        command_r, command_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            theirs = [fd for _, w, r in pipes for fd in (w, r)]
            child(size, command_r, answer_w, [*theirs, command_w, answer_r])
        os.close(command_r)  # a child that dies is then an end of file, not a hang
        os.close(answer_w)
        pipes.append((pid, command_w, answer_r))
    best, share, rounds, note = 0.0, 0.0, 0, None
    try:
        for _, _, answer_r in pipes:
            os.read(answer_r, 1)
        for _ in range(ROUNDS):
            for _, command_w, _ in pipes:
                os.write(command_w, b"g")
            times = [struct.unpack("dd", os.read(r, 16)) for _, _, r in pipes]
            slowest = max(wall for wall, _ in times)
            if size * workers / slowest / 1e9 > best:
                best = size * workers / slowest / 1e9
                # How much of the round the readers ran: on a busy host they wait for a CPU
                # and the figure says more about the load than about the memory.
                share = sum(cpu for _, cpu in times) / sum(wall for wall, _ in times)
            rounds += 1
    except OutOfTime:
        if not rounds:
            raise
        note = f"stopped after {LIMIT_S} s, best of {rounds} rounds"  # a figure all the same
    finally:
        for pid, command_w, _ in pipes:
            os.close(command_w)  # the child reads the end of its pipe and leaves
        for pid, _, _ in pipes:
            os.waitpid(pid, 0)
    report = {
        "ram_read_gbs": round(best, 1),
        "ram_bytes": size * workers,
        "workers": workers,
        "cpu_share": round(min(share, 1.0), 2),
    }
    if note:
        report["ram_note"] = note
        signal.alarm(1)  # no time left for the GPUs: end there, as the limit says
    return report


def gpus():
    import ctypes

    cuda = None
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if cuda is None:
        return {"gpus": [], "gpu_note": "no libcuda (no NVIDIA driver)"}
    pointer, size_t = ctypes.c_uint64, ctypes.c_size_t

    def check(result, what):
        if result != 0:
            raise RuntimeError(f"{what} returned CUDA error {result}")

    check(cuda.cuInit(0), "cuInit")
    count = ctypes.c_int()
    check(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    release = getattr(cuda, "cuDevicePrimaryCtxRelease_v2", None) or cuda.cuDevicePrimaryCtxRelease
    found = []
    for index in range(count.value):
        device, context = ctypes.c_int(), ctypes.c_void_p()
        check(cuda.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(name, 256, device)
        seen = {"index": index, "name": name.value.decode(errors="replace"), "copy_gbs": None}
        found.append(seen)
        check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuCtxRetain")
        buffers = []
        try:
            check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
            free, total = size_t(), size_t()
            check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
            size = min(GPU_MB << 20, free.value // 16) // 2**20 * 2**20
            if size < 32 << 20:
                seen["note"] = "under 512 MB of GPU memory free; not probed"
                continue
            for _ in range(2):
                buffer = pointer()
                check(cuda.cuMemAlloc_v2(ctypes.byref(buffer), size_t(size)), "cuMemAlloc")
                buffers.append(buffer)
            source, target = buffers
            check(cuda.cuMemsetD8_v2(source, ctypes.c_ubyte(2), size_t(size)), "cuMemsetD8")
            check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
            best, copies = 0.0, 20  # many copies per round: launch overhead drops out
            for _ in range(ROUNDS):
                started = time.perf_counter()
                for _ in range(copies):
                    check(cuda.cuMemcpyDtoD_v2(target, source, size_t(size)), "cuMemcpyDtoD")
                check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
                best = max(best, 2 * size * copies / (time.perf_counter() - started) / 1e9)
            seen["copy_gbs"] = round(best, 1)
        finally:
            for buffer in buffers:
                cuda.cuMemFree_v2(buffer)
            release(device)
    return {"gpus": found}


signal.signal(signal.SIGALRM, out_of_time)
signal.alarm(LIMIT_S)
os.nice(10)
report = {"ram_read_gbs": None, "gpus": []}
for part in (ram, gpus):
    try:
        report.update(part())
    except OutOfTime:
        report["note"] = f"stopped after {LIMIT_S} s"
        break
    except Exception as error:
        report[part.__name__ + "_error"] = f"{type(error).__name__}: {error}"
report["seconds"] = round(time.monotonic() - STARTED, 2)
print("BANDWIDTH " + json.dumps(report))
"""
"""The probe as python3 runs it: ``python3 -c PROBE LIMIT_S RAM_MB ROUNDS GPU_MB``."""

MARKER = "BANDWIDTH "
BUSY_SHARE = 0.8
"""A RAM figure is kept only where the probe's readers ran at least this share of the time
they took: below it they waited for CPUs other work held, and the figure would pull the
planner's bound below what the memory allows."""


class GpuReading(TypedDict):
    index: int
    name: str
    copy_gbs: float | None
    """Device-to-device copy bandwidth (bytes read + written per second) in GB/s."""
    note: str | None


class BandwidthReading(TypedDict):
    ram_read_gbs: float | None
    """All CPUs reading system memory at once, GB/s; None where it was not probed."""
    gpus: list[GpuReading]
    notes: list[str]
    """What stopped or limited the RAM probe (no python3, too little memory free, the time
    limit, an error)."""
    gpu_notes: list[str]
    """Why a GPU has no figure (no driver, too little GPU memory free, an error)."""
    seconds: float | None


def probe_command(
    ram_mb: int = 1024, rounds: int = 5, gpu_mb: int = 512, limit_s: int = PROBE_SECONDS
) -> str:
    """The shell line that runs the probe (under ``timeout`` where the host has it)."""
    run = shlex.join(["python3", "-c", PROBE, str(limit_s), str(ram_mb), str(rounds), str(gpu_mb)])
    hard_stop = f"timeout {2 * limit_s}"
    return (
        "if ! command -v python3 >/dev/null 2>&1; then echo 'no python3'; "
        f"elif command -v timeout >/dev/null 2>&1; then {hard_stop} {run}; "
        f"else {run}; fi"
    )


def parse_bandwidth(output: list[str]) -> BandwidthReading:
    """The probe's report line; a reading without figures (and why) when there is none."""
    line = next((line for line in reversed(output) if line.startswith(MARKER)), None)
    if line is None:
        said = " ".join(output).strip()
        why = "no python3 on the host" if said == "no python3" else f"no report ({said[:200]!r})"
        return BandwidthReading(
            ram_read_gbs=None, gpus=[], notes=[why], gpu_notes=[why], seconds=None
        )
    try:
        report = json.loads(line[len(MARKER) :])
    except json.JSONDecodeError:
        unreadable = ["unreadable report"]
        return BandwidthReading(
            ram_read_gbs=None, gpus=[], notes=unreadable, gpu_notes=unreadable, seconds=None
        )
    notes = [str(report[key]) for key in ("ram_note", "ram_error", "note") if report.get(key)]
    gpu_notes = [str(report[key]) for key in ("gpu_note", "gpus_error") if report.get(key)]
    gpus = [
        GpuReading(
            index=int(gpu["index"]),
            name=str(gpu["name"]),
            copy_gbs=_positive(gpu.get("copy_gbs")),
            note=gpu.get("note"),
        )
        for gpu in report.get("gpus") or []
    ]
    gpu_notes += [f"GPU {g['index']} ({g['name']}): {g['note']}" for g in gpus if g["note"]]
    ram = _positive(report.get("ram_read_gbs"))
    share = report.get("cpu_share")
    if ram is not None and isinstance(share, int | float) and share < BUSY_SHARE:
        notes.append(
            f"the host was busy: its readers ran {share:.0%} of the time and read "
            f"{ram:g} GB/s, which says more about the load than the memory; measure it idle"
        )
        ram = None
    return BandwidthReading(
        ram_read_gbs=ram,
        gpus=gpus,
        notes=notes,
        gpu_notes=gpu_notes,
        seconds=report.get("seconds"),
    )


def _positive(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def slowest_gpu_gbs(reading: BandwidthReading) -> float | None:
    """The slowest GPU's figure, as the planner bounds a host's GPUs by their slowest; None
    unless every GPU was measured (one unmeasured GPU may be the slowest)."""
    figures = [gpu["copy_gbs"] for gpu in reading["gpus"]]
    if not figures or any(figure is None for figure in figures):
        return None
    return min(figure for figure in figures if figure is not None)


class MemoryBandwidth(FactBase[BandwidthReading]):
    """
    Memory bandwidth the host reaches: all CPUs reading system memory, each NVIDIA GPU
    copying within its own memory (a probe of a few seconds; see the module).

    .. code:: python

        {"ram_read_gbs": 61.3, "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090",
         "copy_gbs": 921.4, "note": None}], "notes": [], "gpu_notes": [], "seconds": 3.1}
    """

    prefetch = False
    """Seconds of every CPU: never asked ahead of an operation that wants it (see
    :class:`gpufleet.pyinfra_costs.FactRecord`)."""

    def command(self) -> str:
        return probe_command()

    def process(self, output: list[str]) -> BandwidthReading:
        return parse_bandwidth(output)
