"""Augmentation of training crops: standard (MONAI), SLAug's location-scale + saliency fusion, GIN-IPA.

Per-crop transforms that need only the crop (:mod:`~udavae.augment.standard`,
:mod:`~udavae.augment.location_scale`) run in the data layer, seeded by the crop's position in the stream;
transforms that need the network or run best on the device (:mod:`~udavae.augment.saliency`,
:mod:`~udavae.augment.gin`) run on the batch in :class:`~udavae.augment.stage.SourceAugmenter`, which the
trainer applies before every method's step. Nothing here runs at validation, evaluation or prediction.
"""

from udavae.augment.gin import gin_views, ipa_blend, random_field, random_gin
from udavae.augment.location_scale import (
    bezier_curve,
    class_location_scale,
    global_location_scale,
    local_location_scale,
)
from udavae.augment.saliency import fuse, saliency_map
from udavae.augment.stage import SourceAugmenter
from udavae.augment.standard import StandardAugment

__all__ = [
    "SourceAugmenter",
    "StandardAugment",
    "bezier_curve",
    "class_location_scale",
    "fuse",
    "gin_views",
    "global_location_scale",
    "ipa_blend",
    "local_location_scale",
    "random_field",
    "random_gin",
    "saliency_map",
]
