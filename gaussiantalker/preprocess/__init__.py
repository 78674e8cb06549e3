"""preprocess subpackage."""
