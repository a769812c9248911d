"""llm4all.distill: KD losses (dense and top-k), feature/relation KD, the offline teacher cache."""

from llm4all.distill.features import (
    FeatureProjector,
    attention_relation_loss,
    capture_qkv,
    default_layer_map,
    feature_loss,
    gram_relation_loss,
)
from llm4all.distill.losses import DIVERGENCES, kd_and_ce, kd_loss, sparse_kd
from llm4all.distill.teacher_cache import TeacherCache, build_cache

__all__ = ["DIVERGENCES", "FeatureProjector", "TeacherCache", "attention_relation_loss", "build_cache",
           "capture_qkv", "default_layer_map", "feature_loss", "gram_relation_loss", "kd_and_ce", "kd_loss",
           "sparse_kd"]
