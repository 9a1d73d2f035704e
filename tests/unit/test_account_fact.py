"""The one-account fact, run by a real shell on this machine, against Python's own reading
of the account database."""

from __future__ import annotations

import grp
import pwd
import subprocess

from gpufleet.facts.system import Account, GroupExists


def _run(command: str) -> list[str]:
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_an_account_is_read_as_the_account_database_has_it():
    fact = Account()
    root = pwd.getpwnam("root")
    answer = fact.process(_run(fact.command("root")))
    assert answer is not None
    assert (answer["uid"], answer["gid"], answer["home"], answer["shell"]) == (
        root.pw_uid,
        root.pw_gid,
        root.pw_dir,
        root.pw_shell,
    )
    assert answer["group"] == grp.getgrgid(root.pw_gid).gr_name
    assert answer["group"] not in answer["groups"]


def test_a_missing_account_or_group_is_none_and_a_name_is_never_shell():
    fact = Account()
    assert fact.process(_run(fact.command("no-such-account-here"))) is None
    assert fact.process(_run(fact.command("root; echo root:x:0:0::/:/bin/sh"))) is None
    assert GroupExists().process(_run(GroupExists().command("root"))) is True
    assert GroupExists().process(_run(GroupExists().command("no-such-group $(id)"))) is False
