"""OMR Desktop: review and reprocess scanned OMR answer sheets."""

import os

__version__ = "0.1.0"

# OpenCV rejects an image of more pixels than this once it has read the
# header, in every format, so that one such file cannot take the memory of
# a reprocess. It reads the variable when it is imported, and every module
# of the package that imports OpenCV is imported after this one. The same
# number is omr_desktop.engine.image.MAX_PIXELS, which checks JPEG and PNG
# headers itself.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "100000000")
