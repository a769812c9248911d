"""llm4all.distill: KD losses (dense, top-k, fused with the head), feature/relation KD, the teacher cache."""

from llm4all.distill.features import (
    FeatureProjector,
    attention_relation_loss,
    capture_qkv,
    default_layer_map,
    feature_loss,
    gram_relation_loss,
)
from llm4all.distill.fused import fused_sparse_kd_ce
from llm4all.distill.losses import DIVERGENCES, kd_and_ce, kd_loss, sparse_kd
from llm4all.distill.teacher_cache import TeacherCache, build_cache

__all__ = ["DIVERGENCES", "FeatureProjector", "TeacherCache", "attention_relation_loss", "build_cache",
           "capture_qkv", "default_layer_map", "feature_loss", "fused_sparse_kd_ce", "gram_relation_loss",
           "kd_and_ce", "kd_loss", "sparse_kd"]
