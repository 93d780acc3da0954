"""Training: the stages of a run (``stages``), what each kind trains on (``recipes``: Algorithms
1-3, FGSM-AT, PGD-AT, SoE, ADVMoE), the loop (``loop``), model factories (``builders``) and the
ablation variants (``variants``)."""
