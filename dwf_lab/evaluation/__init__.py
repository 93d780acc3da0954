"""Evaluation: the paper's protocol (``protocol``, Tables 2-4), attacks beyond it (``adaptive``),
the gradient-masking checklist, mixture diagnostics, metric keys and the per-example runner
(``metrics``) and the result records on disk (``records``)."""
