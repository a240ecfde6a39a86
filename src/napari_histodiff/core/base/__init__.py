"""Shared basics: user-facing errors, progress events, device choice, job options and output folders."""
