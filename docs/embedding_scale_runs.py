"""The side runs of docs/RESULTS.md (residual streams): does the embedding's scale explain the stream inits'
perplexities and HC's lead over the plain residual?

    python docs/embedding_scale_runs.py [--out runs/embedding_scale]

Seed 0 of the cpu scale, three runs: HC and mHC with ``copy`` init and the embedding divided by n in every
stream (the streams stay identical but sum to the embedding once, as with ``split``), and the plain residual
with the embedding multiplied by 4. The scaling patches ``StreamExpansion.forward`` for this process only.
"""

import argparse
from pathlib import Path

import hizoo.models.stream_init as stream_init
from hizoo.study import SCALES, stream_variants
from hizoo.study.runner import build_datamodule, train_variant

EXPAND = stream_init.StreamExpansion.forward


def scaled_expansion(copy_factor: float, plain_factor: float):
    def forward(self, x):
        streams = EXPAND(self, x)  # [B, S, n, d]
        if self.n_streams == 1:
            return streams * plain_factor
        return streams * copy_factor if self.kind == "copy" else streams
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/embedding_scale")
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    args = parser.parse_args()
    out, scale = Path(args.out), SCALES[args.scale]
    datamodule = build_datamodule(scale, out, None)
    variants = {v.name: v for v in stream_variants(scale)}
    runs = [("hc_copy", 1 / scale.n_streams, 1.0), ("mhc_copy", 1 / scale.n_streams, 1.0), ("plain", 1.0, 4.0)]
    for name, copy_factor, plain_factor in runs:
        stream_init.StreamExpansion.forward = scaled_expansion(copy_factor, plain_factor)
        result = train_variant(variants[name], scale, 0, out, datamodule)
        factor = plain_factor if name == "plain" else copy_factor
        print(f"{name}, embedding x{factor:g}: val ppl {result['val_ppl']:.2f}", flush=True)
    stream_init.StreamExpansion.forward = EXPAND


if __name__ == "__main__":
    main()
