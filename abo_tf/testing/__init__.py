"""Support for tests and the demo: a synthetic ABO download in the real layout."""
