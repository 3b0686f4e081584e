"""The side runs of docs/RESULTS.md (residual streams): does the embedding's scale explain the stream inits'
perplexities and HC's lead over the plain residual?

    python docs/embedding_scale_runs.py [--out runs/embedding_scale] [--scale cpu]

Seed 0 of the cpu scale, three runs: HC and mHC with ``copy`` init and the embedding divided by n in every
stream (the streams stay identical but sum to the embedding once, as with ``split``), and the plain residual
with the embedding multiplied by 4. Each is a study variant with the config field ``stream_embedding_scale``
set, trained through the study's runner (train.py's entry point); runs/<variant>_embedding_x<scale>/seed0
holds each result.json.
"""

import argparse
from dataclasses import replace
from pathlib import Path

from hizoo.study import SCALES, stream_variants
from hizoo.study.runner import build_datamodule, train_variant
from hizoo.study.variants import Scale, Variant


def scaled_variants(scale: Scale) -> list[Variant]:
    """hc_copy and mhc_copy with stream_embedding_scale 1/n, plain with 4."""
    variants = {v.name: v for v in stream_variants(scale)}
    out = []
    for name, factor in (("hc_copy", 1 / scale.n_streams), ("mhc_copy", 1 / scale.n_streams), ("plain", 4.0)):
        v = variants[name]
        out.append(replace(v, name=f"{name}_embedding_x{factor:g}", label=f"{v.label}, embedding x{factor:g}",
                           model={**v.model, "stream_embedding_scale": factor}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/embedding_scale")
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    args = parser.parse_args()
    out, scale = Path(args.out), SCALES[args.scale]
    build_datamodule(scale, out, None)  # the tokenizer, once, in out/cache
    for variant in scaled_variants(scale):
        result = train_variant(variant, scale, 0, out)
        print(f"{variant.label}: val ppl {result['val_ppl']:.2f}", flush=True)


if __name__ == "__main__":
    main()
