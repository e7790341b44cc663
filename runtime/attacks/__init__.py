"""Attacks: black-box distillation of served models.

    recipes   the rungs (RUNGS: one registry; KINDS, LADDER_RUNGS derived) and the presets
    models    the clean and defended files an attack runs against, and the features it reads
    adaptive  the adaptive attacker's transforms (inverting ASVP, filtering outputs)
    distill   the steps of one attack over typed data (plan, answers, teachers, students)
    task      attack_task: those steps in order, and the result
    store     trained students' cache, and the cache version (a digest of the code that produces it)
    claims    whether a drop counts, and which of the paper's claims hold
    report    the table, figure and text of `asvp attack`
    run       run_attack, and the planning and per-task step the ladder shares
    ladder    every rung, paired seeds, one table (`--kind ladder`); ladder_report renders it
    sweep     teacher vs student drop over a grid of ASVP configurations
The served-model plumbing and the students live below, in runtime.evaluation (served, students), shared with the
owner's fingerprint (runtime.fingerprint).
"""
