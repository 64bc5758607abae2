"""OMR Desktop: review and reprocess scanned OMR answer sheets."""

__version__ = "0.1.0"
