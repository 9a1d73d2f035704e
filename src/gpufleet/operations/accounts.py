"""Operations on a host's accounts."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import files

from gpufleet.facts.system import Account, GroupExists


@operation()
def system_user(
    user: str,
    home: str,
    shell: str = "/usr/sbin/nologin",
    group: str | None = None,
    create_home: bool = False,
    ensure_home: bool = True,
):
    """
    A system account a service runs as: made with ``useradd --system`` where it is missing
    (in the group of its name where one exists already, as ``useradd`` would fail to make
    it), its home, shell and primary group set with ``usermod`` where they differ, and its
    home folder owned by it.

    pyinfra's ``server.user`` does the same from its ``Users`` fact, which reads every
    account on the host (and their last logins and password hashes) for each call; this one
    asks about the one account (:class:`~gpufleet.facts.system.Account`).

    + user: the account's name
    + home: its home folder (``usermod --home`` does not move what is in the old one)
    + shell: its login shell; the default lets nobody log in
    + group: its primary group; None: the group of its name (made by ``useradd`` if missing)
    + create_home: whether ``useradd`` makes the home folder from the skeleton
    + ensure_home: whether the home folder must exist, owned by the account and its group

    .. code:: python

        accounts.system_user(name="ollama user", user="ollama", home="/usr/share/ollama")
    """
    existing = host.get_fact(Account, user=user)
    if existing is None:
        primary = group or (user if host.get_fact(GroupExists, group=user) else None)
        command = ["useradd", "--system", "--home-dir", home, "--shell", shell]
        command += ["--gid", primary] if primary else []
        command.append("--create-home" if create_home else "--no-create-home")
        yield shlex.join([*command, user])
    else:
        changes = []
        if existing["home"] != home:
            changes += ["--home", home]
        if existing["shell"] != shell:
            changes += ["--shell", shell]
        if group and existing["group"] != group:
            changes += ["--gid", group]
        if changes:
            yield shlex.join(["usermod", *changes, user])
        else:
            host.noop(f"user {user} exists")
    if ensure_home:
        yield from files.directory._inner(
            path=home, user=user, group=group or user, _no_fail_on_link=True
        )
