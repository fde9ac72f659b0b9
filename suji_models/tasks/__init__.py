"""Task libraries behind the flat `finetune/*.py` recipes: readers, encoding, models, decoding, metrics.

Each task module keeps everything a recipe needs but argument handling and the run itself, so
that the script stays a page of wiring. The recipes parse options with
:func:`suji_models.training.options.parse_args`, as ``pretrain/run_*.py`` do.
"""
