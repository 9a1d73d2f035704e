"""The base of every host-data model and the field types they share. Pure pydantic.

Engine modules define their settings on these, so the host spec can nest them without the
engines importing the host spec.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

Port = Annotated[int, Field(ge=1, le=65535)]

SECRET_REFERENCE_PATTERN = r"^(vault:[A-Za-z0-9_./-]+#[A-Za-z0-9_]+|file:/[A-Za-z0-9_./@+-]+)$"
"""Where a secret is kept, never the secret: ``vault:kv/path#key`` or ``file:/absolute``."""
SecretRef = Annotated[str, Field(pattern=SECRET_REFERENCE_PATTERN)]

URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+=:@,/?&#!-]*)?$"
"""An http(s) URL of characters that mean nothing to a shell, a unit or a config file: no
quotes, ``$``, ``;``, ``|``, backticks, spaces or backslashes (percent-encode what needs it)."""
Url = Annotated[str, Field(pattern=URL_PATTERN)]
TEMPLATED_URL_PATTERN = (
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/([A-Za-z0-9._~%+=:@,/?&#!-]|\{[a-z]+\})*)?$"
)
"""A URL with ``{placeholders}`` gpufleet fills in (``{version}``, ``{arch}``)."""
TemplatedUrl = Annotated[str, Field(pattern=TEMPLATED_URL_PATTERN)]

APT_URL_PATTERN = (
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/([A-Za-z0-9._~%+=:@,/?&#!-]|\$\(ARCH\))*)?$"
)
"""A URL of an apt repository, where apt's own ``$(ARCH)`` may stand for the architecture."""

NAME_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
"""An RFC 1123 host name (labels of letters, digits and inner hyphens, dot-separated)."""
HostName = Annotated[str, Field(pattern=NAME_PATTERN)]

WORD_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A name that is safe as a file name, a config key or a command argument: no ``/``, no
``..`` at its start, no spaces, quotes or metacharacters."""
Word = Annotated[str, Field(pattern=WORD_PATTERN)]

MODEL_TAG_PATTERN = (
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$"
)
"""An Ollama-style model tag (``qwen2.5:72b-instruct-q4_K_M``, ``hf.co/org/repo:Q4_K_M``):
path segments that cannot be ``..``, no spaces, quotes or metacharacters."""
ModelTag = Annotated[str, Field(pattern=MODEL_TAG_PATTERN)]

IMAGE_PATTERN = (
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$"
)
"""A container image reference pinned by its digest (registry, path, optional tag, then
``@sha256:``): a tag can be moved to other contents, a digest cannot, so what was checked is
what runs."""
ImageRef = Annotated[str, Field(pattern=IMAGE_PATTERN)]

FINGERPRINT_PATTERN = r"^[0-9A-F]{40}$"
"""An OpenPGP v4 key fingerprint as gpg prints it: 40 upper-case hex digits, no spaces."""
Fingerprint = Annotated[str, Field(pattern=FINGERPRINT_PATTERN)]

SOURCE_PATTERN = (
    r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+=:@,/?&#!-]*)?"
    r"|(/[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*)+"
    r"|[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)$"
)
"""Where a model's files come from: a URL as above, an absolute path on the host whose parts
are never ``..`` nor start with a dot, or a Hugging Face repository id (``org/name``)."""

MODPROBE_OPTIONS_PATTERN = (
    r"^options [a-z0-9_-]{1,64}( [A-Za-z0-9_]{1,64}=[A-Za-z0-9_,:+/-]+(\.[A-Za-z0-9_,:+/-]+)*)+$"
)
"""A line of ``/etc/modprobe.d``: ``options MODULE name=value ...``, values of characters that
mean nothing to modprobe's parser (no quotes, spaces inside a value, ``..``)."""
ModprobeOptions = Annotated[str, Field(pattern=MODPROBE_OPTIONS_PATTERN)]

SSH_USER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$"
_PATH_PART = r"\.?[A-Za-z0-9_@+=,-][A-Za-z0-9_.@+=,-]*"
SSH_KEY_PATTERN = rf"^(~/|/|\./)?{_PATH_PART}(/{_PATH_PART})*$"
"""A key file's path on the control machine: absolute, ``~/``-relative or relative, parts of
safe characters, never ``..``."""

APT_COMPONENT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
TAILSCALE_TAG_PATTERN = r"^tag:[a-z0-9][a-z0-9-]{0,62}$"

_NO_METACHARACTERS = "without spaces, quotes, $, ;, |, backticks or backslashes"
PATTERN_HINTS = {
    SOURCE_PATTERN: f"must be a URL ({_NO_METACHARACTERS}), an absolute path on the host with "
    "no part starting with '.', or a Hugging Face repository id 'org/name'",
    SECRET_REFERENCE_PATTERN: "is not a reference: write where the secret is kept "
    "(vault:kv/path#key or file:/absolute/path), never the secret itself",
    URL_PATTERN: f"must be an http(s) URL {_NO_METACHARACTERS} (percent-encode what needs them)",
    TEMPLATED_URL_PATTERN: f"must be an http(s) URL {_NO_METACHARACTERS}; {{version}} and "
    "{arch} are filled in",
    APT_URL_PATTERN: f"must be an http(s) URL {_NO_METACHARACTERS}; $(ARCH) is apt's",
    NAME_PATTERN: "must be an RFC 1123 host name: letters, digits and inner hyphens, dot-separated",
    WORD_PATTERN: "must be a name of letters, digits, '_', '.' and '-' (starting with a letter "
    "or digit, at most 64), with no '/'",
    MODEL_TAG_PATTERN: "must be a model tag like 'qwen2.5:14b' or 'hf.co/org/repo:Q4_K_M': "
    "letters, digits, '.', '_', '-', '/' between parts and one ':' before the tag",
    IMAGE_PATTERN: "must be a container image reference pinned by digest, like "
    "'nvcr.io/nvidia/tritonserver:26.07-py3@sha256:<64 hex>' (lower-case path, optional tag); "
    "a tag alone can be moved to other contents: read its digest with 'docker buildx "
    "imagetools inspect IMAGE' or 'skopeo inspect docker://IMAGE'",
    FINGERPRINT_PATTERN: "must be an OpenPGP key fingerprint: 40 upper-case hex digits without "
    "spaces, as 'gpg --show-keys --with-colons KEYFILE' prints it on its fpr line",
    APT_COMPONENT_PATTERN: "must be an apt component like 'main', 'contrib' or "
    "'non-free-firmware': lower-case letters, digits and '-'",
    MODPROBE_OPTIONS_PATTERN: "must be one modprobe line 'options MODULE name=value ...' "
    "(like 'options nvidia-drm modeset=1'): names of letters, digits, '_' and '-', values "
    "without spaces, quotes or '..'",
    SSH_USER_PATTERN: "must be a user name: letters, digits, '_', '.' and '-', starting with "
    "a letter or '_', at most 32",
    SSH_KEY_PATTERN: "must be the path of a key file on this machine (like '~/.ssh/id_ed25519'): "
    "letters, digits and '_.@+=,-' between '/', no '..'",
    TAILSCALE_TAG_PATTERN: "must be a Tailscale tag like 'tag:gpu': 'tag:' then lower-case "
    "letters, digits and '-'",
}
"""What each shared pattern means, for the message that refuses a value."""

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple | set | frozenset):
        return [s for item in value for s in _strings(item)]
    return []


class Spec(BaseModel):
    """Base of every host-data model: unknown keys are errors (typos fail loudly), and no
    string holds a control character (a newline would end the line of the unit, config file
    or command it goes into and start one of its own)."""

    # No use_attribute_docstrings: pydantic would read and parse each model's source as it
    # defines the class, a tenth of a second of every run; the reference page reads them.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # After validation nested models are objects, checked by their own fields: what is
        # left here is this model's own strings (and tuples and dicts of them).
        if any(CONTROL_CHARACTER.search(text) for text in _strings(value)):
            raise ValueError(
                "holds a control character (a newline, tab or the like), which would start a "
                "line of its own in the unit, config or command it goes into; remove it"
            )
        return value


NGINX_PATHS = ("/etc/nginx/", "/var/log/nginx/")
"""Where an absolute path in an extra NGINX directive may point."""
NGINX_CODE_DIRECTIVES = re.compile(r"^(load_module|perl\w*|js_\w+|\w*_by_lua\w*)$")
_NGINX_DIRECTIVE = re.compile(
    r"^([a-z_][a-z0-9_]*)((?: (?:\"[^\"\\;{}#$`]*\"|[A-Za-z0-9_.:/=,+*@%~-]+"
    r"|\$[a-z_][a-z0-9_]*))*);$"
)


def nginx_directive(text: str) -> str:
    """One simple NGINX directive (``add_header X-Frame-Options DENY;``): a name, arguments
    separated by single spaces, one ``;`` at the end. No block (``{``/``}``), no comment, no
    ``$(...)``, no directive that loads code, paths (an ``include`` too) only under /etc/nginx/
    or /var/log/nginx/."""
    match = _NGINX_DIRECTIVE.match(text)
    if match is None:
        raise ValueError(
            "must be one NGINX directive like 'add_header X-Frame-Options DENY;': a name, "
            "arguments separated by single spaces (double quotes, no '{', '}', '#', ';', "
            "backticks or '$(' inside) and one ';' at the end; write one directive per entry"
        )
    if NGINX_CODE_DIRECTIVES.match(match[1]):
        raise ValueError(
            f"{match[1]} loads code gpufleet does not manage; use plain directives (or an "
            "include of a file under /etc/nginx/)"
        )
    for argument in match[2].split():
        path = argument.strip('"')
        outside = path.startswith("/") and not path.startswith(NGINX_PATHS)
        if outside or ("/" in path and ".." in path):
            raise ValueError(
                f"{path} is outside {' and '.join(NGINX_PATHS)}; keep files NGINX reads or "
                "writes there (no '..')"
            )
    return text
