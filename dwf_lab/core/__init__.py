"""The bottom layer: settings and the threat model, the runtime (device, speed switches, seeds),
file writing and progress bars, and torchrun support. Imports nothing else of dwf_lab."""
