"""A/B experiment analysis: what the analysis job reads of ABlaze's experiments, and the
observations it writes back for ABlaze to analyse.

The job (:mod:`jobs.batch.experiment_analysis`) runs on EMR, where only the ``jobs`` package
ships, so it cannot import ABlaze. It writes each cell's sufficient statistics, and ABlaze
(``ablaze/results.py``) turns them into effects, intervals and verdicts when it reads them,
so the statistics live in one place. This docstring is the contract between the two.

Experiments table (read): every item with a ``document`` attribute is an experiment, its
``document`` the experiment as ABlaze's JSON (:mod:`jobs.experiments.documents` reads the
fields it needs and ignores the rest); items without one are ABlaze's surface claims.

Results table (written): one item per experiment and run.

- ``experiment_id`` (S): partition key.
- ``computed_at`` (S): sort key, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, so text order is
  time order; the item with the greatest is the current one.
- ``observations`` (S): JSON, format 1::

      {"format": 1,
       "cells": {"<cell>": {"members": <int>,
                            "metrics": {"<metric>": {"n": <int>, "mean": <float>,
                                                     "variance": <float>}}}},
       "cell_conflicts": <int>,
       "window": ["<start>", "<end>"]}

  ``cells`` holds every cell of the experiment, also those nobody was exposed in yet.
  ``members`` counts the members first exposed in the cell; each metric of the experiment
  (its primary metric and guardrails) has one value per member, so ``n`` equals
  ``members``. ``mean`` is the mean of those values and ``variance`` their sample variance
  (divisor ``n - 1``; 0 when ``n < 2``), which is ABlaze's ``Sample``. A proportion's values
  are 0 or 1, so its mean is the share of members with the event. ``cell_conflicts`` counts
  the members seen in more than one cell, each counted in the cell they were first seen in;
  ``window`` is the half-open interval of exposures and outcomes (times as ``computed_at``).

A change that ABlaze of the previous format could not read gets a new ``format`` number.
"""
