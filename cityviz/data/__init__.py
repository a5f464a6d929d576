"""Data sets: the synthetic default, folders of city photos, safe image decoding."""
