"""Fashion-MNIST's facts, written once: image size, classes and split sizes.

Plain Python, no imports: the CLI, the engine's defaults, the exporters and the plots read these
without loading NumPy, requests or tqdm.
"""

IMAGE_SIDE = 28                                 # images are IMAGE_SIDE × IMAGE_SIDE grey pixels
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
NUM_FEATURES = IMAGE_SIDE * IMAGE_SIDE          # 784: an image as one input row
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)                  # 10: labels are 0..9
TRAIN_IMAGES = 60_000                           # the training file's images (validation is cut from them)
TEST_IMAGES = 10_000                            # the test file's images: the final score only
