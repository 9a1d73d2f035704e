"""Operations on Ollama's models (Linux and macOS alike)."""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from gpufleet.facts.ollama import OllamaModels, OllamaStore, missing_models


@operation()
def models(
    pulled: list[str],
    aliases: dict[str, str] | None = None,
    modelfiles: str = "/var/lib/gpufleet/ollama",
    env: dict[str, str] | None = None,
):
    """
    Pull the models Ollama lacks, and create each alias from its Modelfile (the model and
    the parameters the planner decided); an alias whose Modelfile changed is created again.

    + pulled: model tags to have, e.g. ``["qwen2.5-coder:32b"]``
    + aliases: alias -> Modelfile text (``FROM <tag>`` and ``PARAMETER`` lines)
    + modelfiles: folder the Modelfiles are kept in on the host
    + env: environment the ``ollama`` client needs to reach the server (macOS: PATH)

    .. code:: python

        ollama.models(
            pulled=["qwen2.5:14b"],
            aliases={"M-LOC-FRE-qwen2.5-14b": "FROM qwen2.5:14b\\nPARAMETER num_ctx 8192\\n"},
        )
    """
    listed = host.get_fact(OllamaModels, _env=env or {}) or set()
    changed = False
    for tag in missing_models(pulled, listed):
        changed = True
        yield f"ollama pull {shlex.quote(tag)}"
    folder_made = False
    for alias, text in (aliases or {}).items():
        path = f"{modelfiles}/{alias}.Modelfile"
        current = host.get_fact(FileContents, path=path)
        written = "\n".join(current) + "\n" if current is not None else None
        if written == text and not missing_models([alias], listed):
            continue
        changed = True
        if not folder_made:
            folder_made = True
            yield f"mkdir -p {shlex.quote(modelfiles)}"
        yield from files.put._inner(src=StringIO(text), dest=path, mode="644")
        yield f"ollama create {shlex.quote(alias)} -f {shlex.quote(path)}"
    if not changed:
        host.noop(f"Ollama has {len(pulled)} model(s) and {len(aliases or {})} alias(es)")


FETCH_TOOL = "/usr/local/lib/gpufleet/ollama_fetch.py"
"""Where the deploy puts :mod:`gpufleet.ollama_fetch` on the host."""


@operation()
def stored(
    store: str,
    models: list[str],
    sources: list[str],
    owner: str | None = None,
    optional: bool = False,
):
    """
    Copy the models an Ollama model store lacks (their manifests and blobs) from the first of
    ``sources`` that serves them, each blob checked against its sha256 digest; the store's
    own files are left as they are.

    + store: the store's folder (``OLLAMA_MODELS``; the cache's copy on the cache host)
    + models: model tags, e.g. ``["gemma3:270m"]``
    + sources: ``registry=URL`` (the registry's API) or ``store=URL`` (another store over
      HTTP, the fleet's model cache), asked in order
    + owner: user (and group) that owns what is written (Ollama's, where Ollama reads it)
    + optional: a model no source serves is left for ``ollama pull`` instead of failing

    .. code:: python

        ollama.stored(
            store="/usr/share/ollama/.ollama/models",
            models=["gemma3:270m"],
            sources=["store=http://10.0.0.5:8090/ollama"],
            owner="ollama",
        )
    """
    from gpufleet.ollama_fetch import name_and_tag

    whole: set[str] = host.get_fact(OllamaStore, store=store)
    missing = [m for m in models if "{}:{}".format(*name_and_tag(m)) not in whole]
    if not missing:
        host.noop(f"{store} holds {', '.join(models)}")
        return
    command = ["python3", FETCH_TOOL, "--store", store]
    for model in missing:
        command += ["--model", model]
    for source in sources:
        command += ["--from", source]
    if owner:
        command += ["--owner", owner]
    if optional:
        command.append("--optional")
    yield " ".join(shlex.quote(part) for part in command)
