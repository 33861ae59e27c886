"""The Stanford Cars dataset on disk: find it, read it, and say what is wrong with it.

Two layouts are read: ``class-folder`` (the Kaggle copy: ``names.csv``, ``anno_train.csv``,
``anno_test.csv``, ``car_data/car_data/{train,test}/<class folder>/``) and ``devkit`` (the Stanford release:
``cars_train/``, ``cars_test/``, ``devkit/*.mat``). Problems that leave a usable dataset are collected in a
:class:`ValidationReport`; problems that do not raise :class:`DatasetError` naming the file and the fix.
This package does not import TensorFlow or Keras.
"""

from carclf.data.annotations import class_names
from carclf.data.layout import CLASS_FOLDER, COLUMNS, DEVKIT, SPLITS, DatasetError, detect_layout, folder_name
from carclf.data.report import Problem, ValidationReport
from carclf.data.scan import dataset_fingerprint, labels, load_stanford_cars, scan_stanford_cars

__all__ = [
    "CLASS_FOLDER",
    "COLUMNS",
    "DEVKIT",
    "DatasetError",
    "Problem",
    "SPLITS",
    "ValidationReport",
    "class_names",
    "dataset_fingerprint",
    "detect_layout",
    "folder_name",
    "labels",
    "load_stanford_cars",
    "scan_stanford_cars",
]
