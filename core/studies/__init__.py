"""Studies: the units each analysis is made of, combined into result objects (see base.py)."""
