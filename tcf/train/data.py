"""Compatibility name: ``SeqData`` lives in :mod:`tcf.run.seqdata`, where evaluation, zero-shot and
the report import it without importing the trainer."""

from tcf.run.seqdata import SeqData, left_pad  # noqa: F401 - re-exported for code written against the old path
