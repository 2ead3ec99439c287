"""The method itself: backbone, head, losses, legend, CRF and inference on windows."""
