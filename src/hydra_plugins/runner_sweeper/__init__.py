"""The runner's sweeper as a Hydra plugin (Hydra loads sweepers from `hydra_plugins` only)."""
