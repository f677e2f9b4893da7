"""grounding-ops: box annotations in, better vision-language grounding models out."""

__version__ = "0.1.0"
