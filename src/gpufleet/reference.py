"""The host data reference, generated from the models so it cannot drift.

gpufleet reference      # prints the Markdown that docs/reference/host-data.md holds between
                        # its markers
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from functools import cache
from ipaddress import IPv4Address
from itertools import pairwise
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gpufleet.engines import ENGINES
from gpufleet.engines.triton import TritonModel
from gpufleet.engines.vllm import RaySettings
from gpufleet.models import (
    Accelerator,
    CloudModel,
    ContainerToolkit,
    DcgmExporter,
    DockerEngine,
    GatewayServer,
    GrafanaServer,
    Hardware,
    HostSpec,
    LiteLLMRouter,
    LxcGpuPassthrough,
    LxcGuest,
    Measured,
    ModelCacheServer,
    ModelPlacement,
    NvidiaDriver,
    PrometheusServer,
    ProxmoxHost,
    RouterDatabase,
    RouterRedis,
    ServiceClaim,
    TailscaleNode,
    VaultServer,
)

START = "<!-- host-data-reference:start -->"
END = "<!-- host-data-reference:end -->"
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("Host (`HostSpec`)", HostSpec),
    ("`hardware` (`Hardware`)", Hardware),
    ("`hardware.accelerators[]` (`Accelerator`)", Accelerator),
    ("`hardware.measured` (`Measured`)", Measured),
    ("`models[]` (`ModelPlacement`)", ModelPlacement),
    ("`services[]` (`ServiceClaim`)", ServiceClaim),
    ("`nvidia_driver` (`NvidiaDriver`)", NvidiaDriver),
    ("`docker` (`DockerEngine`)", DockerEngine),
    ("`container_toolkit` (`ContainerToolkit`)", ContainerToolkit),
    ("`tailscale` (`TailscaleNode`)", TailscaleNode),
    ("`proxmox` (`ProxmoxHost`)", ProxmoxHost),
    ("`proxmox.lxc[]` (`LxcGpuPassthrough`)", LxcGpuPassthrough),
    ("`lxc_guest` (`LxcGuest`)", LxcGuest),
    ("`vault` (`VaultServer`)", VaultServer),
    ("`litellm` (`LiteLLMRouter`)", LiteLLMRouter),
    ("`litellm.cloud_models[]` (`CloudModel`)", CloudModel),
    ("`litellm.redis` (`RouterRedis`)", RouterRedis),
    ("`litellm.database` (`RouterDatabase`)", RouterDatabase),
    ("`gateway` (`GatewayServer`)", GatewayServer),
    ("`prometheus` (`PrometheusServer`)", PrometheusServer),
    ("`model_cache` (`ModelCacheServer`)", ModelCacheServer),
    *dict.fromkeys(
        (f"`{e.settings_key}` (`{e.settings_model.__name__}`)", e.settings_model)
        for e in ENGINES
        if e.settings_model is not None
    ),
    ("`vllm.ray` (`RaySettings`)", RaySettings),
    ("`triton.models[]` (`TritonModel`)", TritonModel),
    ("`grafana` (`GrafanaServer`)", GrafanaServer),
    ("`dcgm_exporter` (`DcgmExporter`)", DcgmExporter),
)
SET_BY_GPUFLEET = {"name", "groups"}


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = re.sub(r"\b(typing|ipaddress|gpufleet\.models)\.", "", str(annotation))
    text = re.sub(r"Annotated\[(int|str), FieldInfo\(.*?\)\]\)?\]", r"\1", text)
    return text if "[" in text or "|" in text else (getattr(annotation, "__name__", text))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return "see its table"
    if isinstance(value, tuple):
        value = [str(v) if isinstance(v, IPv4Address) else v for v in value]
    elif isinstance(value, IPv4Address):
        value = str(value)
    return f"`{value!r}`" if value not in ({}, []) else "empty"


@cache
def _docstrings(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of one class body (a string right after
    ``name: type = ...``), as pydantic's ``use_attribute_docstrings`` reads them."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    found = {}
    statements = getattr(body, "body", [])
    for field, after in pairwise(statements):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[field.target.id] = inspect.cleandoc(after.value.value)
    return found


def field_meaning(model: type[BaseModel], name: str) -> str:
    """A field's description, or else the docstring under it in the nearest class that
    defines it."""
    description = model.model_fields[name].description
    if description is not None:
        return description
    for cls in model.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return _docstrings(cls).get(name, "")
    return ""


def markdown() -> str:
    out = []
    for title, model in SECTIONS:
        out += [f"#### {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if model is HostSpec and name in SET_BY_GPUFLEET:
                continue
            meaning = " ".join(field_meaning(model, name).split()).replace("|", "\\|")
            kind = _type_name(field.annotation).replace("|", "\\|")
            out.append(f"| `{name}` | `{kind}` | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def marked_section(page: str) -> str:
    """The part of a documentation page between the markers."""
    return page.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
