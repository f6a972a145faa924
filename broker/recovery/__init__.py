"""Rebuilding from the log: replay, replay to a new directory, verify, and one job's history."""
