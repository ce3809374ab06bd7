"""Atomistic helpers for ltau (need ASE; the core ``ltau`` package never imports them).

``ltau.atomistic.oracle`` generates small force-field training and test sets of adsorbates on
fcc(111) metal slabs, labelled with ASE's EMT calculator as a cheap physical oracle.
"""
