"""``cdca simulate``: many devices, each in its own changing cloud_models, taught by one cloud."""
