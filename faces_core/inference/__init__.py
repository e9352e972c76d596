"""Inference shared by every stage that runs a model: the attribute model's definition and
loading (``model``), face detection (``detect``, ``cascade``), face crops (``crop``) and
prediction on images and URLs (``predict``).

Training builds and saves the model defined here; evaluate, predict and annotate load it and
run it. None of them owns it, so none imports another stage's package for it.
"""
