"""Fidelity checks: each ported competitor cache run next to its authors' own code on the tiny models."""
