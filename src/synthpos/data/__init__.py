"""Data: in-memory indexed datasets and batched SimCLR augmentation."""

from synthpos.data.augment import (
    BatchAugment,
    adjust_colour,
    crop_and_flip,
    rgb_to_grayscale,
    sample_crop_boxes,
    to_model_input,
)
from synthpos.data.datasets import ImageDataset, find_data_root, load_dataset

__all__ = [
    "BatchAugment",
    "ImageDataset",
    "adjust_colour",
    "crop_and_flip",
    "find_data_root",
    "load_dataset",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "to_model_input",
]
