"""The run contract, at the bottom of the import graph: what every stage of a run imports downward.

- :mod:`tcf.run.config`: the typed, validated configuration of one run (``RunConfig``).
- :mod:`tcf.run.seqdata`: the leave-one-out split as per-user sequences (``SeqData``), read by
  training, evaluation, zero-shot and the report.
"""
