"""Applications of LTAU: the force-field pipeline, relaxations, training-set tuning."""
