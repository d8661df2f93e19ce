"""The shipped rules, installed as package data so `--rules` can be omitted."""
