"""A learnable stand-in for Stanford Cars, written in the real dataset's exact on-disk layouts.

Each class is a car drawing with its own combination of body shape (sedan,
SUV, pickup...), colour range and, past 88 classes, wheel size, proportions,
stripe and window pillars. Every image puts one instance, jittered within its
class's ranges, on a cluttered street-like background. The real set's quirks
are reproduced: varied image sizes and aspect ratios, a few grayscale JPEGs,
boxes that touch or cross the image border, loose or tight boxes, and the
class ``Ram C/V Cargo Van Minivan 2012`` whose name cannot be a folder name.

Same arguments give byte-identical files: every image draws from its own
generator seeded by ``(seed, split, index)``, so the order the workers run in
does not matter. This package does not import TensorFlow or Keras.

``classes`` names and describes the classes, ``drawing`` draws one image, ``writer`` writes a whole set.
"""

from carclf.synthetic.classes import COLOURS, FAMILIES, MAX_CLASSES, RAM_CV, CarClass, class_table
from carclf.synthetic.writer import LAYOUTS, make_synthetic

__all__ = ["COLOURS", "FAMILIES", "LAYOUTS", "MAX_CLASSES", "RAM_CV", "CarClass", "class_table", "make_synthetic"]
