"""sd4match_utils: the tested package behind the SD4Match notebooks.

One concept of the paper per module: ``models`` / ``tiny`` (Stable Diffusion 2-1, real or embedded),
``data`` (benchmark formats and the synthetic generator), ``features`` (UNet read-out), ``conditioning``
(fixed prompts, learned Single / Class prompts, the conditional prompting module, prompt files and importing the
paper's checkpoints), ``dino`` (the CPM's DINOv2 input), ``matching``, ``metrics`` (PCK), ``evaluate`` and
``cli``.
"""

__version__ = "0.1.0"
