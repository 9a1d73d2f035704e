"""pyinfra's own ``ssh_*`` host data, typed: pyinfra's SSH connector takes these as given, so a
port of 70000 would reach the socket as 70000 % 65536 = 4464 and a misspelt key
(``ssh_username``) would be ignored while the connection falls back to defaults."""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Annotated, Any

from pydantic import Field, field_validator

from gpufleet.fields import NAME_PATTERN, SSH_KEY_PATTERN, SSH_USER_PATTERN, Port, Spec


class SshData(Spec):
    """The keys of pyinfra's SSH connector (``pyinfra.connectors.ssh.ConnectorData``)."""

    ssh_hostname: str = ""
    ssh_port: Port = 22
    ssh_user: Annotated[str, Field(pattern=SSH_USER_PATTERN)] = "root"
    ssh_password: str = ""
    ssh_key: Annotated[str, Field(pattern=SSH_KEY_PATTERN)] = ""
    ssh_key_password: str = ""
    ssh_allow_agent: bool = True
    ssh_look_for_keys: bool = True
    ssh_forward_agent: bool = False
    ssh_config_file: Annotated[str, Field(pattern=SSH_KEY_PATTERN)] = ""
    ssh_known_hosts_file: Annotated[str, Field(pattern=SSH_KEY_PATTERN)] = ""
    ssh_strict_host_key_checking: Annotated[str, Field(pattern=r"^(yes|no|accept-new|ask)$")] = (
        "accept-new"
    )
    ssh_paramiko_connect_kwargs: dict[str, Any] = {}
    ssh_connect_retries: int = Field(0, ge=0)
    ssh_connect_retry_min_delay: float = Field(0.1, ge=0)
    ssh_connect_retry_max_delay: float = Field(0.5, ge=0)
    ssh_file_transfer_protocol: Annotated[str, Field(pattern=r"^(sftp|scp)$")] = "sftp"

    @field_validator("ssh_hostname")
    @classmethod
    def _host_name_or_address(cls, value: str) -> str:
        try:
            ip_address(value)
        except ValueError:
            if not re.match(NAME_PATTERN, value):
                raise ValueError(
                    "must be a host name (letters, digits and inner hyphens, dot-separated) "
                    "or an IP address"
                ) from None
        return value


SSH_KEYS = tuple(SshData.model_fields)


def ssh_data(data: dict[str, Any]) -> dict[str, Any]:
    """The ``ssh_*`` part of a host's data."""
    return {k: v for k, v in data.items() if k.startswith("ssh_")}
