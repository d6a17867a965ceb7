"""Sweeps over settings (Hydra multirun): the batched runs, and the report that compares them."""
