"""The comparison engine: named scenarios (eval.scenarios) x policy variants (eval.variants) x rates x seeds, each a
cached simulation cell (``eval.compare.cell``), aggregated with intervals over seeds (``eval.compare.stats``) into
one document (``eval.compare.engine``). ``python -m eval.compare`` is its command; ``eval.reproduce``'s simulator
figures are built on it, so every figure and every comparison goes through one code path."""
