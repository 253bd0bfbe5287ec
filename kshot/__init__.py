"""kshot: k-shot fine-tuning with neuron grouping (Yoo, Fan, Boddeti, Kitani, AAAI 2018).

The package holds all the logic of the pipeline; ``workflow/`` only calls it. Import the pieces you
need from their modules (``kshot.models``, ``kshot.finetune``, ``kshot.methods``, ...).
"""

__version__ = "0.1.0"
