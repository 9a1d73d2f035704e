"""Downloads checked against a sha256, without hashing them again on every run.

pyinfra's ``files.download`` hashes the file on the host each time it runs to compare it with
the wanted checksum: for a 40 GB GGUF that is minutes per converge. Here the checksum is
verified once, when the file arrives, and recorded with the file's size and mtime; later runs
compare those two numbers and hash again only when they differ (the file was replaced or
touched by something else).
"""

from __future__ import annotations

import hashlib
import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

STAMPS = "/var/lib/gpufleet/verified"


def stamp_path(dest: str) -> str:
    """Where the record of ``dest``'s verified checksum is kept on the host."""
    return f"{STAMPS}/{hashlib.sha256(dest.encode()).hexdigest()[:24]}"


class VerifiedFile(FactBase):
    """
    A file's size, mtime and mode, and the checksum record written when it was verified:
    ``{"size": 123, "mtime": 1700000000, "mode": "644", "stamp": "<sha256> 123 1700000000"}``,
    or None when the file is not there.
    """

    def command(self, path: str) -> str:
        quoted, stamp = shlex.quote(path), shlex.quote(stamp_path(path))
        # Exit 0 whether or not the file is there: an absent file is an answer, not an error.
        return f"{{ stat -c '%s %Y %a' {quoted} && cat {stamp}; }} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict | None:
        if not output:
            return None
        size, mtime, mode = output[0].split()
        return {
            "size": int(size),
            "mtime": int(mtime),
            "mode": mode,
            "stamp": output[1].strip() if len(output) > 1 else "",
        }


@operation()
def verified_download(src: str, dest: str, sha256: str, mode: str | None = None):
    """
    Download ``src`` to ``dest`` unless a file with that sha256 is there; a download whose
    checksum differs is removed and fails the operation.

    + src: http(s) URL
    + dest: path on the host
    + sha256: the file's expected checksum
    + mode: octal permissions of the file (``"755"`` for a binary)

    .. code:: python

        downloads.verified_download(
            src="https://example.org/model.gguf",
            dest="/var/lib/llama.cpp/models/model.gguf",
            sha256="a5fd3b62...",
            mode="644",
        )
    """
    found = host.get_fact(VerifiedFile, path=dest)
    if found is not None and found["stamp"] == f"{sha256} {found['size']} {found['mtime']}":
        if mode is not None and found["mode"] != mode.lstrip("0"):
            yield f"chmod {mode} {shlex.quote(dest)}"
        else:
            host.noop(f"{dest} is there with its verified sha256")
        return
    file, part = shlex.quote(dest), shlex.quote(f"{dest}.part")
    mismatch = shlex.quote(f"sha256 mismatch: {src}")
    stamp = shlex.quote(stamp_path(dest))
    fetch = (
        f"( curl -fsSL --retry 3 -o {part} {shlex.quote(src)}"
        f" || wget -q -O {part} {shlex.quote(src)} )"
    )
    # A file already there (an older run, or put there by hand) is hashed once, not fetched.
    yield " && ".join(
        [
            f"mkdir -p {shlex.quote(STAMPS)} $(dirname {file})",
            f"( echo '{sha256}  '{file} | sha256sum -c --status 2>/dev/null"
            f" || ( {fetch} && ( echo '{sha256}  '{part} | sha256sum -c --status"
            f" || ( rm -f {part}; echo {mismatch} >&2; false ) )"
            f" && mv {part} {file} ) )",
            *([f"chmod {mode} {file}"] if mode else []),
            f"echo '{sha256}' $(stat -c '%s %Y' {file}) > {stamp}",
        ]
    )
