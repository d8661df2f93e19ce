"""nodewarden: a node agent that judges every process and connection against YAML rules."""

__version__ = "0.1.0"
