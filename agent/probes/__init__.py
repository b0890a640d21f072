"""Peripheral probes: each turns one device's native status into a PeripheralStatus."""

from agent.probes.base import Probe

__all__ = ["Probe"]
