"""Convert a Google BERT / bert4keras TensorFlow checkpoint (no TensorFlow needed) into a Suji or a
plain transformers checkpoint, tokenizer included.

    suji-convert-tf path/to/chinese_L-12_H-768_A-12 out/bert-base-chinese            # Suji format
    suji-convert-tf path/to/roformer_ckpt out/roformer --format transformers          # plain transformers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import SujiForCausalLM, SujiForMaskedLM, export_to_transformers
from .tf_names import tf_checkpoint_to_hf


def _tokenizer_for(source: Path):
    folder = source if source.is_dir() else source.parent
    for name in ("vocab.txt", "spiece.model", "sentencepiece.model"):
        if (folder / name).is_file():
            try:
                from tokenization import load_tokenizer
            except ImportError:  # the char WordPiece is all a BERT vocab needs
                from transformers import BertTokenizer

                return BertTokenizer(vocab=str(folder / name)) if name == "vocab.txt" else None
            return load_tokenizer(folder / name)
    return None


def convert(checkpoint, output, fmt: str = "suji", strict_weights: bool = True) -> Path:
    hf_config, _, _ = tf_checkpoint_to_hf(checkpoint)
    cls = SujiForCausalLM if hf_config.model_type == "gpt2" else SujiForMaskedLM
    model, info = cls.from_pretrained(checkpoint, strict_weights=strict_weights, output_loading_info=True)
    output = Path(output)
    if fmt == "transformers":
        export_to_transformers(model, output)
    else:
        model.save_pretrained(output)
    tokenizer = _tokenizer_for(Path(checkpoint))
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    dropped = info["unexpected_keys"] + info["ignored_keys"]
    print(f"wrote {fmt} {type(model).__name__} ({hf_config.model_type}) to {output}"
          + (f"; not carried over: {', '.join(dropped)}" if dropped else "")
          + ("" if tokenizer is not None else "; no vocab.txt / .model found, no tokenizer written"))
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder, its prefix (bert_model.ckpt) or any of its files")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--format", choices=("suji", "transformers"), default="suji")
    parser.add_argument("--no_strict", action="store_true", help="report missing/unknown weights instead of failing")
    args = parser.parse_args(argv)
    convert(args.checkpoint, args.output, args.format, strict_weights=not args.no_strict)


if __name__ == "__main__":
    main()
