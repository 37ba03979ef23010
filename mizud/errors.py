"""Errors every part may raise."""

from __future__ import annotations


class StartupError(Exception):
    """mizud cannot start (a port cannot be bound, the store cannot open); the message is one line
    for the operator."""
