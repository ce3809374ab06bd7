"""Atomistic layer of ltau (needs ASE; the core ``ltau`` package never imports it).

``structures`` reads labelled structures (energies, forces) and numbers their atoms;
``calculator`` is the ASE calculator base every force-field integration builds on (model
outputs in, LTAU's per-atom results out); ``relaxation`` relaxes structures with per-step
uncertainty; ``pipeline`` fits, calibrates and evaluates LTAU for any force field whose
descriptors and force errors it is given, making every choice on a validation split;
``active_learning`` ranks a pool of unlabelled structures by LTAU's uncertainty (what to label
next).
"""
