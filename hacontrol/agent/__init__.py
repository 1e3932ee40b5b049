"""The agent: observe → decide → execute, glued to the adapters (no decisions are made here)."""
