"""The torch-free inference core: bundles, preprocessing, tokens, templates, vectors, encoders."""
