"""SAMMed worker: Segment Anything encoders, embedding cache and decoders for CT/MR annotation."""

__version__ = "0.1.0"
