"""Config files that must be valid before they are live, and files that hold secrets.

The content comes from a function, called when the operation is planned (to see whether
anything changes) and again when it runs (to write it). A secret is therefore never part of
the plan, the dry-run output or a log line: only the file name and "will change" are.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
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


def _install(
    state: State,
    host: Host,
    dest: str,
    render: Callable[[], str],
    mode: str,
    owner: str,
    group: str,
    validate: str | None,
) -> bool:
    try:
        content = render()
    except NOT_YET as error:
        host.log_styled(f"{dest}: {error}", fg="red")
        return False
    staged, previous = f"{dest}.gpufleet-new", f"{dest}.gpufleet-old"
    q = shlex.quote
    prepare = f"mkdir -p {q(dest.rsplit('/', 1)[0] or '/')} && rm -f {q(staged)}"
    if not host.run_shell_command(prepare, print_output=False, print_input=False)[0]:
        return False
    # Created empty with its final mode first, so the content is never readable by others.
    if not host.run_shell_command(
        f"install -m {mode} -o {owner} -g {group} /dev/null {q(staged)}",
        print_output=False,
        print_input=False,
    )[0]:
        return False
    if not host.put_file(StringIO(content), staged, print_output=False, print_input=False):
        return False
    swap = f"if [ -e {q(dest)} ]; then cp -p {q(dest)} {q(previous)}; fi; mv {q(staged)} {q(dest)}"
    if validate:
        restore = (
            f"if [ -e {q(previous)} ]; then mv {q(previous)} {q(dest)}; else rm -f {q(dest)}; fi"
        )
        swap += f"; if ! ( {validate} ); then {restore}; exit 1; fi"
    swap += f"; rm -f {q(previous)}"
    ok, output = host.run_shell_command(swap, print_output=False, print_input=False)
    if not ok:
        host.log_styled(
            f"{dest}: rejected by `{validate}`; the previous file is back in place:\n"
            + "\n".join(output.stderr_lines[-8:]),
            fg="red",
        )
    return bool(ok)


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
    try:
        wanted: str | None = render()
    except NOT_YET:
        wanted = None
    current = host.get_fact(File, path=dest)
    if current is False:
        raise OperationError(f"{dest} exists and is not a regular file")
    same_attributes = False
    if current:
        same_attributes = (
            str(current["mode"]) == mode.lstrip("0")
            and current["user"] == owner
            and current["group"] == group
        )
    if wanted is not None and same_attributes:
        digest = hashlib.sha256(wanted.encode()).hexdigest()
        if host.get_fact(Sha256File, path=dest) == digest:
            host.noop(f"{dest} is up to date")
            return
    yield FunctionCommand(_install, (dest, render, mode, owner, group, validate), {})


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
    return _install(state, host, key, lambda: key_pem, "640", "root", group, None) and _install(
        state, host, cert, lambda: cert_pem, "644", "root", "root", None
    )


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
