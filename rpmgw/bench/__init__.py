"""`rpmgw bench`: throughput, latency and footprint of the gateway against the same machine's limits."""
