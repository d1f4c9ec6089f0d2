"""tcf: language models as item encoders and zero-shot recommenders."""

__version__ = "0.1.0"
