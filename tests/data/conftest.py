"""Helpers shared across tests/data: the writers of each dataset's on-disk format live in
tests/data/dataset_sources/dataset_files.py (the stream tests write Fashion-MNIST with them), and the
dataset contract writes WebDataset shards with tests/data/test_stream.py's writers. Importing this
conftest puts tests/data on the path (pytest's prepend import mode); the line
below adds dataset_sources/ (not named datasets/: with tests/data on the path that would shadow
Hugging Face's ``datasets`` package).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "dataset_sources"))
