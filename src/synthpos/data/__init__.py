"""Data: in-memory indexed datasets, batched SimCLR augmentation, the synthetic store and its Dataset."""

from synthpos.data.augment import (
    BatchAugment,
    adjust_colour,
    crop_and_flip,
    rgb_to_grayscale,
    sample_crop_boxes,
    to_model_input,
)
from synthpos.data.datasets import ImageDataset, find_data_root, load_dataset
from synthpos.data.store.dataset import SyntheticPositivesDataset
from synthpos.data.store import SyntheticStore, dataset_fingerprint

__all__ = [
    "BatchAugment",
    "ImageDataset",
    "SyntheticPositivesDataset",
    "SyntheticStore",
    "adjust_colour",
    "crop_and_flip",
    "dataset_fingerprint",
    "find_data_root",
    "load_dataset",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "to_model_input",
]
