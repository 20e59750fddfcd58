"""Post-training compensation methods applied on top of a baseline plan (CWAC, QwT v1)."""
