"""AudioSet/VGGish constants, the one home: the daemon uses them, the converter imports them from here.

They are fixed by Google's released AudioSet embeddings (vggish_params.py), which our classifier is trained on, so
they are not settings: a different value would feed the classifier a distribution it never saw.
"""

from __future__ import annotations

from .frontend import VGGISH

NUM_FRAMES = VGGISH.patch_frames  # 96 log-mel frames of 10 ms per 0.96 s patch (vggish_params.NUM_FRAMES)
NUM_BANDS = VGGISH.mel_bands  # 64 mel bands (vggish_params.NUM_BANDS)
EMBEDDING_SIZE = 128  # VGGish embedding width, before and after the PCA (vggish_params.EMBEDDING_SIZE)
FRAMES_PER_CLIP = 10  # embeddings in one 10 s AudioSet segment (one per 0.96 s): what the classifier takes
QUANTIZE_MIN_VAL = -2.0  # the postprocess clips PCA'd embeddings to [min, max] and maps them onto 0..255
QUANTIZE_MAX_VAL = 2.0
DEQUANT_SCALE = (QUANTIZE_MAX_VAL - QUANTIZE_MIN_VAL) / 255.0  # uint8 -> [-2, 2]: x * scale + offset
DEQUANT_OFFSET = QUANTIZE_MIN_VAL
