"""Reporting: the paper's published numbers (``paper``), tables, rendering, prose generated from
numbers (``readings``) and figures. Nothing here runs a model."""
