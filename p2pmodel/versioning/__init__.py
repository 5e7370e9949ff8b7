"""Versions of the model. store.py: content-addressed checkpoints (safetensors, atomic, digest-verified)
and the crash-safe pointer to the last committed round."""
