"""The fleet's internal certificate authority, kept on the control machine.

``openssl`` makes a P-256 CA once (key 0600 in a 0700 folder) and signs server certificates
for Vault's listener and the gateway. Clients trust ``ca.crt``. Where Vault runs, its PKI
engine holds the same CA and issues the gateway's certificate. Example::

    ca = FleetCA.ensure("~/.config/gpufleet/ca")
    cert_pem, key_pem = ca.issue("pi5l", names=["pi5l", "pi5l.tailnet.ts.net"], ips=["10.0.0.111"])
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class PkiError(RuntimeError):
    pass


def _openssl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


@dataclass(frozen=True)
class FleetCA:
    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def key(self) -> Path:
        return self.folder / "ca.key"

    @classmethod
    def ensure(cls, folder: str | Path, days: int = 3650) -> FleetCA:
        """The CA in ``folder``, made there first if there is none."""
        ca = cls(Path(os.path.expanduser(str(folder))))
        if ca.cert.exists() and ca.key.exists():
            return ca
        ca.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        old_umask = os.umask(0o077)
        try:
            _openssl(
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(ca.key), "-out", str(ca.cert), "-days", str(days),
                "-subj", "/CN=gpufleet fleet CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip
        finally:
            os.umask(old_umask)
        ca.cert.chmod(0o644)
        return ca

    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the CA certificate, as ``openssl x509 -fingerprint`` prints."""
        out = _openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(self.cert))
        return out.strip().split("=", 1)[1]

    def pem(self) -> str:
        return self.cert.read_text()

    def bundle(self) -> str:
        """Certificate and key, for importing into Vault's PKI engine."""
        return self.key.read_text() + self.cert.read_text()

    def issue(
        self, common_name: str, names: list[str], ips: list[str], days: int = 90
    ) -> tuple[str, str]:
        """A server certificate (PEM) and its new private key (PEM), signed by this CA."""
        alt = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
        with tempfile.TemporaryDirectory() as work:
            key, csr, cert, ext = (Path(work) / n for n in ("key", "csr", "crt", "ext"))
            ext.write_text(
                f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
            )
            _openssl(
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}",
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                "-set_serial", str(secrets.randbits(120)), "-days", str(days),
                "-extfile", str(ext), "-out", str(cert),
            )  # fmt: skip
            return cert.read_text() + self.pem(), key.read_text()


def certificate_names(cert_pem: str) -> tuple[set[str], str]:
    """The subject alternative names and issuer of a PEM certificate (the first in the
    chain), e.g. ``({"DNS:pi5l", "IP:10.0.0.111"}, "CN = gpufleet fleet CA")``."""
    out = _openssl("x509", "-noout", "-ext", "subjectAltName", "-issuer", stdin=cert_pem)
    names: set[str] = set()
    issuer = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("issuer="):
            issuer = line.removeprefix("issuer=").strip()
        elif line.startswith(("DNS:", "IP Address:")):
            for item in line.split(","):
                kind, _, value = item.strip().partition(":")
                names.add(f"{'IP' if kind == 'IP Address' else 'DNS'}:{value}")
    return names, issuer
