"""sd4match_utils: the tested package behind the SD4Match notebooks.

One concept of the paper per module: ``models`` / ``tiny`` (Stable Diffusion 2-1, real or embedded),
``data`` (benchmark formats and the synthetic generator), ``features`` (UNet read-out), ``prompts``
(text conditioning), ``dino`` / ``cpm`` (the conditional prompting module and its DINOv2 input), ``official``
(importing the paper's checkpoints), ``matching``, ``metrics`` (PCK), ``evaluate`` and ``cli``.
"""

__version__ = "0.1.0"
