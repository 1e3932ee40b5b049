"""Adapters: one module (or package) per real system. Nothing third-party leaks out of its adapter."""
