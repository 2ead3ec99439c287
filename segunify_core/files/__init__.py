"""Readers and writers: atomic writes, rasters, model files, manifests, outputs, previews, vectors."""
