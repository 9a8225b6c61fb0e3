"""te's core layer: facts about the machine and small helpers every command may use (no torch import)."""
