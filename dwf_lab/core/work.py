"""The unit of compute the kit counts work in: one *pass*.

A pass is one training step (forward + backward + update) of one ResNet-18 of the run's width on
one image. Training recipes (:mod:`dwf_lab.training.recipes`) and attacks
(:mod:`dwf_lab.evaluation.suite`) state their cost in passes; the course's cost banner turns
passes into seconds with a measured rate. Measured on one thread of a 2-core CPU at the laptop
width: a training step 190 images/s, a PGD step 240-380, a forward pass 1,180.
"""
FORWARD = 0.2          # a forward pass, in training steps
ATTACK_STEP = 2 / 3    # forward + backward to the input (no weight gradients)
