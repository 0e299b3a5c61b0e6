"""The published backbones made into bundles: YAMNet and EfficientAT with their class mapping, VGGish rebuilt
from its checkpoint with the trained classifier, and the embeddings a head is trained on.
"""
