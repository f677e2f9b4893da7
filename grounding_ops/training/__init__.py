"""Training: the typed spec and presets, VeRL override rendering, and the train entrypoint.

Submodules are imported explicitly (``grounding_ops.training.spec`` ...) so that importing the
package stays cheap: nothing here imports torch, transformers or verl at module level.
"""
