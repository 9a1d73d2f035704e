"""GPU node steps. For now: detect and report NVIDIA GPUs (the driver deploy builds on it)."""

from __future__ import annotations

from pyinfra.api import deploy

from gpufleet.models import HostSpec
from gpufleet.operations import gpu


@deploy("GPU detection")
def gpu_detection(spec: HostSpec) -> None:
    """
    Report what NVIDIA GPUs the host has against what the inventory declares.

    .. code:: python

        gpu_detection(host_spec())
    """
    gpu.detected(name="Detect NVIDIA GPUs", declared=spec.hardware.nvidia_gpu_count)
