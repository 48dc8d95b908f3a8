"""The cloud's CLIP teacher: the open_clip factory, the ``Teacher`` wrapper and its training."""
