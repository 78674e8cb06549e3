"""Rendering: the batched rasterizer call (``rasterize``); video writing lives in ``render.video``."""
