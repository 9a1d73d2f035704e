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
from pyinfra.api import FactBase, OperationValueError, operation

from gpufleet.paths import HOST_STATE, state_folder, state_record

STAMPS = f"{HOST_STATE}/verified"
"""Root's records, never beside the file: its folder may be one a service reads."""


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


def _sha256_from_list(sha256_list: str, name: str) -> str:
    """Shell that prints the checksum a release's list (``sha256sum`` output, as
    ``<hash>  ./dist/<name>`` or ``<hash> *<name>``) gives for the file ``name``, and fails
    when the list cannot be fetched or does not name the file."""
    url = shlex.quote(sha256_list)
    missing = shlex.quote(f"no sha256 for {name} in {sha256_list}")
    pick = (
        "awk -v f=" + shlex.quote(name) + ' \'{n=$2; sub(/^[*]/, "", n); sub(/.*[/]/, "", n)}'
        " n == f && length($1) == 64 && $1 ~ /^[0-9a-f]+$/ {print $1; exit}'"
    )
    return (
        f"expected=$( ( curl -fsSL --retry 3 {url} || wget -q -O - {url} ) | {pick} )"
        f' && {{ [ -n "$expected" ] || {{ echo {missing} >&2; false; }}; }}'
    )


@operation()
def verified_download(
    src: str,
    dest: str,
    sha256: str | None = None,
    mode: str | None = None,
    sha256_list: str | None = None,
    mirrors: list[str] | None = None,
):
    """
    Download ``src`` to ``dest`` unless a file with that sha256 is there; a download whose
    checksum differs is removed and fails the operation.

    + src: http(s) URL
    + dest: path on the host
    + sha256: the file's expected checksum
    + mode: octal permissions of the file (``"755"`` for a binary)
    + sha256_list: without ``sha256``, the URL of the checksum list the release publishes
      (``sha256sum`` output naming the file as ``src`` does); the file's checksum is read from
      it on the host, when the file is fetched, and recorded like a given one
    + mirrors: URLs asked before ``src`` (the fleet's model cache), in order; what one serves
      counts only if its checksum is right, else the next is asked, then ``src``

    .. code:: python

        downloads.verified_download(
            src="https://example.org/model.gguf",
            dest="/var/lib/llama.cpp/models/model.gguf",
            sha256="a5fd3b62...",
            mode="644",
        )
    """
    if sha256 is None and sha256_list is None:
        raise OperationValueError("verified_download needs sha256 or sha256_list")
    found = host.get_fact(VerifiedFile, path=dest)
    if found is not None:
        recorded, _, size_mtime = found["stamp"].partition(" ")
        if size_mtime == f"{found['size']} {found['mtime']}" and recorded == (sha256 or recorded):
            if mode is not None and found["mode"] != mode.lstrip("0"):
                yield f"chmod {mode} {shlex.quote(dest)}"
            else:
                host.noop(f"{dest} is there with its verified sha256")
            return
    file, part = shlex.quote(dest), shlex.quote(f"{dest}.part")
    mismatch = shlex.quote(f"sha256 mismatch: {src}")
    fetch = (
        f"( curl -fsSL --retry 3 -o {part} {shlex.quote(src)}"
        f" || wget -q -O {part} {shlex.quote(src)} )"
    )
    if sha256 is not None:
        checksum, line, known = f"'{sha256}'", f"'{sha256}  '", []
    else:
        assert sha256_list is not None
        name = src.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        checksum, line = '"$expected"', '"$expected  "'
        known = [_sha256_from_list(sha256_list, name)]
    if mirrors:
        # Each mirror once, briefly: a cache that is down or serves another file costs a
        # moment, then the origin is asked (with its retries).
        tried = " || ".join(
            f"( curl -fsSL --connect-timeout 5 -o {part} {shlex.quote(url)}"
            f" && echo {line}{part} | sha256sum -c --status )"
            for url in mirrors
        )
        fetch = f"{tried} || {fetch}"
    # A file already there (an older run, or put there by hand) is hashed once, not fetched.
    yield " && ".join(
        [
            state_folder(STAMPS),
            f"mkdir -p $(dirname {file})",
            *known,
            f"( echo {line}{file} | sha256sum -c --status 2>/dev/null"
            f" || ( {fetch} && ( echo {line}{part} | sha256sum -c --status"
            f" || ( rm -f {part}; echo {mismatch} >&2; false ) )"
            # -T: a link at the destination is replaced, never followed into a folder.
            f" && mv -fT {part} {file} ) )",
            *([f"chmod {mode} {file}"] if mode else []),
            state_record(stamp_path(dest), f"{checksum} $(stat -c '%s %Y' {file})"),
        ]
    )


def primary_fingerprints(colons: list[str]) -> list[str]:
    """The fingerprints of the primary keys in ``gpg --show-keys --with-colons`` output: the
    ``fpr`` line that follows each ``pub`` line (a subkey's ``fpr`` follows its ``sub``)."""
    found, after_pub = [], False
    for line in colons:
        fields = line.strip().split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            found.append(fields[9].upper())
            after_pub = False
        elif fields[0] in ("sub", "sec", "ssb"):
            after_pub = False
    return found


_PRIMARY_FPRS = 'awk -F: \'$1=="pub"{p=1;next} $1=="fpr"&&p{print $10;p=0} $1=="sub"{p=0}\''
"""Shell twin of :func:`primary_fingerprints`: one primary key fingerprint a line."""


def fingerprint_check(path: str, fingerprint: str, src: str) -> str:
    """Shell that succeeds when the key file ``path`` holds exactly one primary key, the one
    with ``fingerprint``, and fails naming what it holds instead. A file with an extra key
    would let that key sign the repository too, so it is refused like a wrong one."""
    quoted = shlex.quote(path)
    refused = shlex.quote(f"signing key from {src} refused: expected {fingerprint}, it holds: ")
    return (
        f"got=$(gpg --batch --show-keys --with-colons {quoted} 2>/dev/null | {_PRIMARY_FPRS})"
        f' && if [ "$got" = {shlex.quote(fingerprint)} ]; then true;'
        f' else echo {refused}"${{got:-no OpenPGP key}}" >&2; false; fi'
    )


class KeyFingerprints(FactBase):
    """
    The primary key fingerprints of an OpenPGP key file, as gpg reads them: ``["C95B..."]``;
    an empty list when the file or gpg is missing.
    """

    def command(self, path: str) -> str:
        # Exit 0 without the file or gpg: no key is an answer, not an error.
        return (
            f"gpg --batch --show-keys --with-colons {shlex.quote(path)} 2>/dev/null"
            " | grep -E '^(pub|sub|fpr):' || true"
        )

    def process(self, output: list[str]) -> list[str]:
        return primary_fingerprints(output)


@operation()
def signing_key(src: str, dest: str, fingerprint: str, mode: str = "644"):
    """
    Install an apt repository's signing key at ``dest`` only once its fingerprint is the one
    expected: the key is fetched to ``<dest>.part``, read with gpg, moved into place when it
    holds that one primary key and removed (failing the operation) otherwise. A key already
    at ``dest`` with that fingerprint is left as it is.

    + src: http(s) URL of the key (ASCII-armoured or binary)
    + dest: the keyring file a source's ``Signed-By`` names
    + fingerprint: the 40 hex digits of the expected primary key
    + mode: octal permissions of the key file

    .. code:: python

        downloads.signing_key(
            src="https://apt.grafana.com/gpg.key",
            dest="/etc/apt/keyrings/grafana.asc",
            fingerprint="B53AE77BADB630A683046005963FA27710458545",
        )
    """
    if host.get_fact(KeyFingerprints, path=dest) == [fingerprint]:
        host.noop(f"{dest} holds the key {fingerprint}")
        return
    file, part = shlex.quote(dest), shlex.quote(f"{dest}.part")
    url = shlex.quote(src)
    check = fingerprint_check(f"{dest}.part", fingerprint, src)
    yield " && ".join(
        [
            f"mkdir -p $(dirname {file})",
            f"( curl -fsSL --retry 3 -o {part} {url} || wget -q -O {part} {url} )",
            f"( {check} || {{ rm -f {part}; false; }} )",
            f"chmod {mode} {part}",
            f"mv {part} {file}",
        ]
    )
