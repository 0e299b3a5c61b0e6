"""Keras -> TFLite export and flatbuffer output edits, shared by every converter so each model is made one way."""
