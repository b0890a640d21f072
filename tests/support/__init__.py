"""Shared test support: builders and waits that several test modules use."""
