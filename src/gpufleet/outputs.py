"""The shapes of ``gpufleet ... --json``: one pydantic model per command's output.

The commands build their JSON through these models, so what they print is what the models
allow; the JSON Schema of each (``src/gpufleet/schemas/<command>.json``, shipped with the
package) is generated from its model and checked against it by the unit tests, so a change to
an output is a change to its schema. Regenerate the files after changing a model::

    python -m gpufleet.outputs
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

SCHEMAS = Path(__file__).parent / "schemas"
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _Strict(BaseModel):
    """Every key is declared: a key the schema does not list is an error, not a surprise."""

    model_config = ConfigDict(extra="forbid")


# --- gpufleet validate -------------------------------------------------------------------


class ValidatedFile(_Strict):
    path: str
    valid: bool
    hosts: list[str] = Field(description="Host names in inventory order (empty when invalid).")
    groups: list[str] = Field(description="Every group of those hosts, sorted.")
    problems: list[str] = Field(
        description="One entry per problem, each naming host, field and fix (empty when valid)."
    )


class ValidateOutput(_Strict):
    files: list[ValidatedFile] = Field(description="One entry per file, in the order given.")


# --- gpufleet plan -----------------------------------------------------------------------


class SplitPartOut(_Strict):
    host: str
    layers: int
    need_gb: float
    free_gb: float = Field(description="What the host's own placements leave free.")
    bandwidth_gbs: float
    on_gpu: bool
    endpoint: str = Field(description="A worker's ggml-rpc-server (address:port); '' here.")


class RpcPartOut(_Strict):
    head: str = Field(description="The host that serves the model.")
    model: str
    layers: int
    of_layers: int
    need_gb: float
    on_gpu: bool
    server: Literal["ggml-rpc-server", "ray"] = Field(
        description="What holds them: ggml-rpc-server (llama.cpp) or the host's Ray node (vLLM)."
    )


class PlacementPlanOut(_Strict):
    model: str
    engine: str
    quant: str
    context: int
    weights_gb: float
    kv_gb: float
    need_gb: float
    where: Literal["gpu", "partial", "cpu", "hosts", "does-not-fit"]
    gpu_layers: int
    layers: int
    bound_tok_s: float | None = Field(description="Memory-bandwidth bound on decode speed.")
    problem: str | None
    slots: int
    threads: int
    gpus: int
    kind: str
    index: int = Field(description="The placement's position in the host's models.")
    problem_field: str
    ram_gb: float
    memory_max_gb: float
    bound_source: str = Field(
        description="Where the bandwidth behind the bound came from: measured, declared, "
        "estimated or catalogue (GPU's and RAM's for a split placement)."
    )
    rpc: list[SplitPartOut] = Field(
        description="A model split across hosts: each host's share, this host's first."
    )


class HostPlanOut(_Strict):
    host: str
    vram_gb: float
    ram_gb: float
    gpu_bandwidth_gbs: float
    ram_bandwidth_gbs: float
    placements: list[PlacementPlanOut]
    unified: bool
    vram_used_gb: float
    ram_used_gb: float
    problems: list[tuple[str, str]] = Field(description="[field, why] pairs.")
    memory_max_gb: dict[str, float] = Field(description="Engine -> its server's memory limit.")
    gpu_bandwidth_source: Literal["measured", "declared", "estimated", "catalogue"]
    ram_bandwidth_source: Literal["measured", "declared", "estimated", "catalogue"]
    rpc_parts: list[RpcPartOut] = Field(
        description="Layers this host holds of other hosts' models (ggml-rpc-server, or a "
        "pipeline stage in its Ray node)."
    )


class PlanOutput(RootModel[list[HostPlanOut]]):
    """A list, one entry per host that has models (the shape ``plan --json`` always had)."""


# --- gpufleet plan --suggest -------------------------------------------------------------


class SuggestedPlacementOut(_Strict):
    alias: str
    model: str
    host: str
    role: str = Field(description="'replica N of M' (router priority 1) or 'backup N' (2, 3).")
    priority: int = Field(description="The placement's router priority.")
    engine: str
    quant: str
    context: int
    where: Literal["gpu", "partial", "cpu"]
    gpu_layers: int
    layers: int
    need_gb: float
    bound_tok_s: float | None
    why: str = Field(description="Why this host: how many could take it, which came next.")


class UnmetWantOut(_Strict):
    alias: str
    model: str
    role: str
    why: str = Field(description="What stops every host, and what would change it.")


class SkippedHostOut(_Strict):
    host: str
    why: str = Field(description="The first problem of the host's own, which keeps it out.")


class KeptPlacementOut(_Strict):
    alias: str
    host: str


class SuggestOutput(_Strict):
    placements: list[SuggestedPlacementOut]
    unmet: list[UnmetWantOut] = Field(description="Empty when every want is placed.")
    changed_hosts: list[str] = Field(description="Hosts whose models the proposal changes.")
    skipped_hosts: list[SkippedHostOut]
    kept: list[KeptPlacementOut] = Field(
        description="Placements of aliases not met, left where the inventory has them."
    )
    problems: list[str] = Field(
        description="What validate would find with the proposal applied (empty: it validates)."
    )
    diff: str = Field(description="The proposal as a unified diff of the inventory file.")
    by_hand: dict[str, str] = Field(
        description="Host -> its models entry, where the diff could not edit the file."
    )


# --- gpufleet engines --------------------------------------------------------------------


class EngineOut(_Strict):
    engine: str
    port: int
    served: list[str] = Field(description="Model names the server answers to.")
    memory_max_gb: float
    environment: dict[str, str] = Field(description="Secrets appear as references only.")
    command: list[str] = Field(description="The server's command line (empty: a daemon).")
    parameters: dict[str, dict[str, str]] = Field(
        description="Per served model, the parameters the engine takes per model."
    )


class EnginesHost(_Strict):
    host: str
    engines: list[EngineOut]


class EnginesOutput(_Strict):
    hosts: list[EnginesHost]


# --- gpufleet routes ---------------------------------------------------------------------


class RouteTarget(_Strict):
    model: str
    api_base: str | None


class RedundancyRow(_Strict):
    alias: str
    ranks: list[list[str]] = Field(description="Hosts of the primary, backup 1, backup 2 ...")
    then: list[str] = Field(description="Other model groups tried after those, in order.")


class RouterOut(_Strict):
    host: str
    port: int
    model_groups: dict[str, list[RouteTarget]]
    redundancy: list[RedundancyRow]
    fallbacks: dict[str, list[str]]
    keys: dict[str, str] = Field(description="Environment variable -> secret reference.")


class UpstreamOut(_Strict):
    name: str
    route: str
    servers: list[str]


class GatewayOut(_Strict):
    host: str
    https_port: int
    upstreams: list[UpstreamOut]
    clients: dict[str, str] = Field(description="Client name -> its key's reference.")


class RoutesOutput(_Strict):
    routers: list[RouterOut]
    gateways: list[GatewayOut]


# --- gpufleet firewall -------------------------------------------------------------------


class ExposureOut(_Strict):
    service: str
    address: str = Field(description="Where it listens.")
    ports: list[int]
    port_range: list[int] | None = Field(
        None, description="First and last port of a range it listens on besides `ports`."
    )
    reach: Literal["this host", "sources", "anywhere"] = Field(
        description="this host: loopback only; sources: the firewall lets in only `sources`; "
        "anywhere: any address that reaches the host."
    )
    sources: list[str]
    clients: list[str] = Field(description="Fleet hosts that use it.")
    authenticated: bool = Field(description="It asks every client for credentials.")


class FirewallHost(_Strict):
    host: str
    firewall: bool = Field(description="The host's firewall is enabled.")
    exposures: list[ExposureOut]


class FirewallOutput(_Strict):
    hosts: list[FirewallHost]


# --- gpufleet preview --------------------------------------------------------------------


class OperationOut(_Strict):
    name: str
    changes: bool
    commands: list[str] = Field(description="As a dry run shows them, secrets masked.")
    uploads: list[str] = Field(description="Files it would write, by destination.")
    serial: bool = Field(
        False, description="Runs host by host (a reboot: one host at a time), not in parallel."
    )


class PreviewHost(_Strict):
    host: str
    profile: str = Field(description="The fact profile that answered for the host.")
    changing: int
    operations: list[OperationOut]


class PreviewOutput(_Strict):
    deploys: list[str]
    hosts: list[PreviewHost]
    stopped: dict[str, str] = Field(
        default_factory=dict,
        description="Hosts a deploy would stop on, with why; the others are planned.",
    )


# --- gpufleet drift ----------------------------------------------------------------------


class DriftHost(_Strict):
    host: str
    drifted: bool = Field(description="Some operation would change the host.")
    planned: int = Field(description="Operations planned on the host, changing or not.")
    unchecked: str | None = Field(
        description="Why the host was not checked (no SSH connection, a deploy stopped); "
        "null when it was."
    )
    changing: list[OperationOut] = Field(description="The operations that would change it.")


class DriftOutput(_Strict):
    deploys: list[str]
    drifted: bool = Field(description="Some host would change; the exit code is then 1.")
    hosts: list[DriftHost]


# --- gpufleet verify ---------------------------------------------------------------------


class CheckOut(_Strict):
    host: str
    suite: str
    check: str
    result: Literal["pass", "FAIL", "ERROR", "skip"] | None = Field(
        description="None with --list (nothing was run)."
    )
    message: str


class VerifyOutput(_Strict):
    ran: bool = Field(description="False with --list: the checks are listed, none run.")
    passed: bool = Field(description="Every check passed (with --list: the listing worked).")
    junit_xml: str | None
    checks: list[CheckOut]


# --- gpufleet bench ----------------------------------------------------------------------


class BenchRow(_Strict):
    endpoint: str
    host: str
    engine: str
    model: str
    gpu: str
    quant: str
    concurrency: int
    runs: int
    ttft_s: float
    ttft_ci95_s: float | None = Field(description="Half-width; null from a single run.")
    decode_tok_s: float
    decode_tok_s_ci95: float | None
    latency_s: float
    latency_ci95_s: float | None
    claimed_tok_s: float | None
    planner_bound_tok_s: float | None
    measured_over_claimed: float | None
    measured_over_bound: float | None = Field(
        None,
        description="Measured decode speed over the planner's bound: how close the engine "
        "comes to what the memory allows (a ratio, not a verdict).",
    )


class BenchOutput(_Strict):
    csv: str = Field(description="Where the same rows were written as CSV.")
    rows: list[BenchRow]


def bench_row(row: dict[str, object]) -> BenchRow:
    """A CSV row of :func:`gpufleet.bench.measure` as JSON has it: an empty cell or a NaN
    (an interval from one run) is null, which JSON can say and NaN it cannot."""

    def cell(value: object) -> object:
        if value == "" or (isinstance(value, float) and math.isnan(value)):
            return None
        return value

    return BenchRow.model_validate({key: cell(value) for key, value in row.items()})


OUTPUTS: dict[str, type[BaseModel]] = {
    "validate": ValidateOutput,
    "plan": PlanOutput,
    "plan-suggest": SuggestOutput,
    "engines": EnginesOutput,
    "routes": RoutesOutput,
    "firewall": FirewallOutput,
    "preview": PreviewOutput,
    "drift": DriftOutput,
    "verify": VerifyOutput,
    "bench": BenchOutput,
}
"""Command -> the model of its ``--json`` output."""


def schema(command: str) -> dict[str, object]:
    """The JSON Schema of ``command``'s output, as shipped in ``schemas/<command>.json``."""
    generated = OUTPUTS[command].model_json_schema()
    return {
        "$schema": SCHEMA_DRAFT,
        **generated,
        "title": f"gpufleet {command} --json",
    }


def schema_text(command: str) -> str:
    return json.dumps(schema(command), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path = SCHEMAS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for command in OUTPUTS:
        path = folder / f"{command}.json"
        path.write_text(schema_text(command))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(path)
