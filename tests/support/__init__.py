"""Helpers shared by the tests: one project factory, one server harness, real data and CLI runs."""
