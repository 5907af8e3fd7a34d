"""Faces: finding the face in a photo before the eval transform.

- :mod:`.geometry`: the crop record (:class:`FaceCrop`), the square crop box, the detection image
  (small photos upscaled, borders padded) and the mapping of its boxes back, the whole-image fallback.
- :mod:`.haar`: OpenCV's Haar cascade, largest face.
- :mod:`.align`: dlib's HOG detector and 5-point landmarks, eyes levelled (the optional ``align`` extra).
- :mod:`.settings`: the ranges of every face setting and the face-mode vocabulary, written once.
- :mod:`.factory`: the one way to build a detector from settings, and the decode-time crop of training.

Nothing here imports the inference or training side; both import from here. This ``__init__``
imports nothing, so reading the settings does not load OpenCV or dlib.
"""
