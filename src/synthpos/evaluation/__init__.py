"""Evaluation of frozen features: weighted kNN and linear probing."""

from synthpos.evaluation.knn import knn_accuracy, knn_predict
from synthpos.evaluation.linear_probe import linear_probe
from synthpos.evaluation.features import extract_features
from synthpos.evaluation.evaluate import evaluate_backbone, score_features
from synthpos.evaluation.cka import cka
