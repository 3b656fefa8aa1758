"""Forked worker processes on this machine."""
