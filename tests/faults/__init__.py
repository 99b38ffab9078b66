"""Fault suite: real servers killed, cut or flooded; measurements written to docs/RELIABILITY.md."""
