"""Standard fine-tuning: every parameter of the network trains (the paper's main baseline)."""

from kshot.methods.base import GradientMethod


class FullFinetune(GradientMethod):
    kind = "full"
