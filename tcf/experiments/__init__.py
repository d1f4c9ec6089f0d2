"""Experiments: expand a sweep file into runs, run them, read their results back and report.

The run configuration and the results record they share with every stage live below, in
:mod:`tcf.run`; nothing under ``tcf/`` except the CLI imports this package.
"""
