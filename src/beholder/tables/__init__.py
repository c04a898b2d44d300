"""Catalogues: score the images a table names, into the same table with scores, resumably.

``io`` reads and writes the table formats, ``parts`` commits the output in resumable parts,
``scoring`` turns rows into scored rows (paths, URLs, the Scorer), ``local`` and ``ray_engine``
drive it on one machine or on Ray, ``groups`` ranks rows within groups, and ``run`` ties them
together as :func:`score_table`. See docs/catalogues.md.
"""

from __future__ import annotations

from beholder.tables.run import ScorerSpec, score_table

__all__ = ["ScorerSpec", "score_table"]
