"""Config files that must be valid before they are live, and files that hold secrets.

The content comes from a function, called when the operation is planned (to see whether
anything changes) and again when it runs (to write it). A secret is therefore never part of
the plan, the dry-run output or a log line: only the file name and "will change" are.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, OperationError, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.facts.files import File, Sha256File

from gpufleet.pki import certificate_names
from gpufleet.secrets import SecretError
from gpufleet.vault import VaultError

NOT_YET = (SecretError, VaultError)
"""A secret that cannot be read while planning (Vault not set up yet on a first run) is read
again when the operation runs, after the steps before it."""


@dataclass(frozen=True)
class WantedFile:
    dest: str
    render: Callable[[], str]
    mode: str = "644"
    owner: str = "root"
    group: str = "root"


def _install(state: State, host: Host, wanted: list[WantedFile], validate: str | None) -> bool:
    """Stage every file, swap them in together, run ``validate``; on failure put every old
    file back (or remove a new one), so files that only work together change together."""
    q = shlex.quote
    swap, restore = [], []
    for file in wanted:
        try:
            content = file.render()
        except NOT_YET as error:
            host.log_styled(f"{file.dest}: {error}", fg="red")
            return False
        staged, previous = f"{file.dest}.gpufleet-new", f"{file.dest}.gpufleet-old"
        folder = file.dest.rsplit("/", 1)[0] or "/"
        # Created empty with its final mode first, so the content is never readable by others.
        prepare = (
            f"mkdir -p {q(folder)} && rm -f {q(staged)} && "
            f"install -m {file.mode} -o {file.owner} -g {file.group} /dev/null {q(staged)}"
        )
        if not host.run_shell_command(prepare, print_output=False, print_input=False)[0]:
            return False
        if not host.put_file(StringIO(content), staged, print_output=False, print_input=False):
            return False
        swap.append(
            f"if [ -e {q(file.dest)} ]; then cp -p {q(file.dest)} {q(previous)}; fi; "
            f"mv {q(staged)} {q(file.dest)}"
        )
        restore.append(
            f"if [ -e {q(previous)} ]; then mv {q(previous)} {q(file.dest)}; "
            f"else rm -f {q(file.dest)}; fi"
        )
    command = "; ".join(swap)
    if validate:
        command += f"; if ! ( {validate} ); then {'; '.join(restore)}; exit 1; fi"
    command += "; rm -f " + " ".join(q(f"{file.dest}.gpufleet-old") for file in wanted)
    ok, output = host.run_shell_command(command, print_output=False, print_input=False)
    if not ok:
        names = ", ".join(file.dest for file in wanted)
        host.log_styled(
            f"{names}: rejected by `{validate}`; the previous files are back in place:\n"
            + "\n".join(output.stderr_lines[-8:]),
            fg="red",
        )
    return bool(ok)


def _up_to_date(file: WantedFile) -> bool | None:
    """True when the host's file has the content and attributes wanted; None when the
    content cannot be rendered yet (a secret the run itself will create)."""
    try:
        content = file.render()
    except NOT_YET:
        return None
    current = host.get_fact(File, path=file.dest)
    if current is False:
        raise OperationError(f"{file.dest} exists and is not a regular file")
    if not current or (str(current["mode"]), current["user"], current["group"]) != (
        file.mode.lstrip("0"),
        file.owner,
        file.group,
    ):
        return False
    return host.get_fact(Sha256File, path=file.dest) == hashlib.sha256(content.encode()).hexdigest()


@operation()
def config_file(
    dest: str,
    render: Callable[[], str],
    mode: str = "644",
    owner: str = "root",
    group: str = "root",
    validate: str | None = None,
):
    """
    Write a file whose content ``render()`` returns, checked by ``validate`` before it counts.

    + dest: path on the host
    + render: returns the content; may read secrets (never shown anywhere)
    + mode, owner, group: the file's; it is created with them before any byte is written
    + validate: shell command run with the new file in place (``nginx -t``); if it fails the
      old file is put back and the operation fails, so the running service keeps its config

    .. code:: python

        config.config_file(
            dest="/etc/nginx/conf.d/gpufleet.conf",
            render=lambda: render_template("nginx/gateway.conf.j2", gateway=gw),
            validate="nginx -t",
        )
    """
    wanted = WantedFile(dest, render, mode, owner, group)
    if _up_to_date(wanted):
        host.noop(f"{dest} is up to date")
        return
    yield FunctionCommand(_install, ([wanted], validate), {})


@operation()
def file_set(files: list[WantedFile], validate: str | None = None):
    """
    Files that only work together (a certificate and its key): written, validated and, if
    ``validate`` fails, put back together.

    .. code:: python

        config.file_set(
            files=[WantedFile("/etc/nginx/tls/gw.crt", read_cert),
                   WantedFile("/etc/nginx/tls/gw.key", read_key, mode="640")],
            validate="nginx -t -q",
        )
    """
    if all(_up_to_date(file) for file in files):
        host.noop(f"{', '.join(f.dest for f in files)} are up to date")
        return
    yield FunctionCommand(_install, (list(files), validate), {})


@operation()
def tls_certificate(
    cert: str,
    key: str,
    names: list[str],
    ips: list[str],
    ca_cert: str,
    issue: Callable[[], tuple[str, str]],
    min_days_left: int = 30,
    group: str = "root",
):
    """
    Install a server certificate and key, issuing a new pair only when the one there is
    missing, names other hosts, expires within ``min_days_left`` days or does not chain to
    ``ca_cert`` (a CA file on the host). The key is 0640 ``root:group``; it is created on the
    control machine by ``issue`` when the operation runs (never in a dry run).

    .. code:: python

        config.tls_certificate(
            cert="/etc/nginx/tls/gateway.crt", key="/etc/nginx/tls/gateway.key",
            names=["pi5l"], ips=["10.0.0.111"], ca_cert="/etc/gpufleet/fleet-ca.crt",
            issue=lambda: ca.issue("pi5l", ["pi5l"], ["10.0.0.111"]),
        )
    """
    wanted = {f"DNS:{n}" for n in names} | {f"IP:{ip}" for ip in ips}
    state = host.get_fact(
        CertificateState, path=cert, ca_cert=ca_cert, seconds=min_days_left * 86400
    )
    if state and state["fresh"] and state["trusted"] and state["names"] == wanted:
        host.noop(f"{cert} is valid for {', '.join(sorted(wanted))}")
        return
    yield FunctionCommand(_install_pair, (cert, key, issue, group), {})


def _install_pair(
    state: State, host: Host, cert: str, key: str, issue: Callable[[], tuple[str, str]], group: str
) -> bool:
    cert_pem, key_pem = issue()
    pair = [
        WantedFile(key, lambda: key_pem, "640", "root", group),
        WantedFile(cert, lambda: cert_pem),
    ]
    return _install(state, host, pair, None)


class CertificateState(FactBase):
    """Names, freshness and trust of a PEM certificate on the host (None if absent).

    .. code:: python

        {"names": {"DNS:pi5l", "IP:10.0.0.111"}, "fresh": True, "trusted": True}
    """

    def command(self, path: str, ca_cert: str, seconds: int) -> str:
        p, ca = shlex.quote(path), shlex.quote(ca_cert)
        return (
            f"if [ -f {p} ]; then cat {p}; "
            f"openssl x509 -in {p} -noout -checkend {seconds} >/dev/null && echo fresh=yes; "
            f"openssl verify -CAfile {ca} {p} >/dev/null 2>&1 && echo trusted=yes; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, object] | None:
        if not output:
            return None
        pem = "\n".join(line for line in output if "=yes" not in line) + "\n"
        try:
            names, _ = certificate_names(pem)
        except Exception:  # an unreadable file is as good as none
            names = set()
        return {"names": names, "fresh": "fresh=yes" in output, "trusted": "trusted=yes" in output}
