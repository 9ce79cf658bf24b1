"""sd4match_utils: the tested package behind the SD4Match notebooks, one concept of the paper per module
(``models`` / ``tiny``, ``data``, ``features``, ``conditioning``, ``dino``, ``matching``, ``metrics``, ``evaluate``,
``benchmark``, ``cli``)."""

__version__ = "0.1.0"
