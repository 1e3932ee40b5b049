"""A deterministic two-controller world for the decision core: used by the hypothesis model and `hactl simulate`.

It runs the real :func:`hacontrol.core.decide.decide` against a simulated
coordinator, shared disks with SCSI-3 persistent reservations, addresses and
watchdogs. Like the core, it does no I/O and reads no clock.
"""
