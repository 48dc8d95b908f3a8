"""``cdca simulate``: many devices, each in its own changing world, taught by one cloud."""
