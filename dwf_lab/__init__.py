"""dwf-lab: a course and reproduction kit for *Divided We Fall* (soft-gated mixture of experts).

Modules follow the paper: ``models`` (experts), ``moe`` (gate and mixture),
``attacks`` (FGSM, PGD), ``data``, ``train`` (Algorithms 1-3), ``evaluate``
(Tables 2-4), ``report``, ``widgets`` and ``pipeline``.
"""
__version__ = "0.1.0"
