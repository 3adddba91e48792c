"""slimp: SLIMP skin-lesion image-metadata pre-training as a library and a CLI."""

__version__ = "0.1.0"
