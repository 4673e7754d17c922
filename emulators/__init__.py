"""Process model, neural surrogates, training, refit and checkpoints of coastal biogeochemistry."""
