"""A job's stages: plan, generate, check, assemble, describe, deliver (and stream)."""
