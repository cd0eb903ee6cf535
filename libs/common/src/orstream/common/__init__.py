"""Shared code of orstream: everything two services both need, and nothing else."""
