"""Defaults for every host. Values here override the model defaults documented in
README.md ("Host data reference"); a host's own data overrides these."""

# Prometheus scrapes every host's node exporter on this port.
node_exporter_port = 9100

# Public NTP pool; point at a LAN time server if the homelab has one.
ntp_servers = ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"]
