"""Operations on Ollama's models (Linux and macOS alike)."""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from gpufleet.facts.ollama import OllamaModels, missing_models


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
