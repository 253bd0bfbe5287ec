"""kshot: k-shot fine-tuning with neuron grouping (Yoo, Fan, Boddeti, Kitani, AAAI 2018).

The package holds all the logic of the pipeline; ``workflow/`` only calls it. Its modules form
layers whose imports point down only (``tests/test_architecture.py`` checks it):

1. :mod:`kshot.config` (typed parameters), :mod:`kshot.errors`, :mod:`kshot.io` (atomic files);
2. :mod:`kshot.models`, :mod:`kshot.optim` and the dataset readers of :mod:`kshot.data`;
3. the algorithms, which take and return tensors and dataclasses: :mod:`kshot.finetune` (the
   training loop and its :class:`~kshot.finetune.TrainHook`), :mod:`kshot.activations`,
   :mod:`kshot.grouping`, :mod:`kshot.shared_grad`, :mod:`kshot.controller`, :mod:`kshot.search`,
   :mod:`kshot.population`, :mod:`kshot.episodes`, :mod:`kshot.pretrain` and :mod:`kshot.methods`;
4. :mod:`kshot.params`, the one validator of a whole params file (it checks names against the
   dataset, backbone and method registries);
5. :mod:`kshot.files`, every file format the pipeline writes, with readers and provenance;
6. the reports (:mod:`kshot.tables`, :mod:`kshot.figures`, :mod:`kshot.report`, ...);
7. :mod:`kshot.runner` (one function per stage) and :mod:`kshot.cli` (``kshot <command>``).
"""

__version__ = "0.1.0"
