"""Mixtures of experts: DWF's gate and soft mixture (Eq. 1-2) and its two MoE peers, SoE and ADVMoE.

Importing this package registers ``dwf_mixture``, ``dwf_mixture_st``, ``soe`` and
``advmoe`` with :func:`dwf_lab.models.build_model`.
"""
from dwf_lab.mixture.advmoe import ADVMoE, advmoe
from dwf_lab.mixture.moe import Gate, MixtureOfExperts, MixtureOutput, dwf_mixture, gate_entropy
from dwf_lab.mixture.soe import SoE, soe

__all__ = ["ADVMoE", "Gate", "MixtureOfExperts", "MixtureOutput", "SoE", "advmoe", "dwf_mixture",
           "gate_entropy", "soe"]
