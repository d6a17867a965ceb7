"""Loaded models and the loop that serves them: the model store, one model, its scheduler."""
