"""The classifier over VGGish's AudioSet embeddings: its training data, its training and the folder it is
handed on in (`classifier.tflite` + `classifier.json`), read by the VGGish converter and `evaluate`.
"""
