"""Operations about NVIDIA GPUs."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import operation

from gpufleet.facts.gpu import describe, detected_gpus


@operation()
def detected(declared: int = 0):
    """
    Report the NVIDIA GPUs a host has; changes nothing.

    + declared: how many NVIDIA GPUs the inventory says the host has; fewer found is warned
      about (a card that died or was swapped out).

    .. code:: python

        gpu.detected(name="Detect NVIDIA GPUs", declared=1)
    """
    report = detected_gpus()
    found = max(len(report["pci"]), len(report["nvidia_smi"]))
    if found < declared:
        logger.warning(
            f"{host.print_prefix}inventory declares {declared} NVIDIA GPU(s), "
            f"the host shows {found}: {describe(report)}"
        )
    host.noop(describe(report))
    yield from ()
