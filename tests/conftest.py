"""Test configuration: server fixtures live in tests/fixtures/, one module per server."""

pytest_plugins = [
    "tests.fixtures.mqtt",
    "tests.fixtures.influx",
    "tests.fixtures.db",
    "tests.fixtures.twilio",
]
