"""Atomistic helpers for ltau (need ASE; the core ``ltau`` package never imports them).

``ltau.atomistic.structures`` reads labelled structures (energies, forces) and numbers their
atoms; ``ltau.atomistic.calculator`` is the ASE calculator base every force-field integration
builds on (model outputs in, LTAU's per-atom results out); ``ltau.atomistic.oracle`` generates small force-field training and test sets of
adsorbates on fcc(111) metal slabs, labelled with ASE's EMT calculator as a physical oracle.
"""
