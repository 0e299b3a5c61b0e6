"""How a classifier or a bundle is scored: the shared metrics, the VGGish classifier on AudioSet embeddings and any
bundle on the labelled real recordings.
"""
