"""Small-scale studies that put hizoo's routers and residual streams side by side (``python -m hizoo.study``)."""

from .report import table, write
from .runner import run_study, train_variant
from .variants import SCALES, STUDIES, Scale, Variant, moe_variants, stream_variants

__all__ = ["SCALES", "STUDIES", "Scale", "Variant", "moe_variants", "stream_variants", "run_study", "train_variant",
           "table", "write"]
