"""``predict``: ordinary image files in, the trained model's top classes out.

:mod:`.images` reads files with Pillow (orientation, transparency, size limits), :mod:`.preprocess`
turns a grayscale picture into a Fashion-MNIST-like 28×28 image, :mod:`.run` ties them to models.
"""
