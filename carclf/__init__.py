"""carclf: Stanford Cars classification with eight CNNs.

One module per concern: ``data`` (the dataset on disk), ``synthetic`` (a
learnable stand-in in the same layout), ``cache`` (the stage cache under
``pickles/``), ``decoded`` (cropped, resized uint8 images in memory-mapped
``.npy`` files), ``runlog`` (logging and the stage timer), ``config`` (paths
and profiles).
"""

__version__ = "0.1.0"
