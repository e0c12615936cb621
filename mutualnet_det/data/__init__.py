from .shapes import ensure_split, register_shapes, SPLITS  # noqa: F401

register_shapes()
