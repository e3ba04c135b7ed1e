"""``quality`` (GenView, Li et al., NeurIPS 2024): ``replace`` with each positive pair's loss weighted."""

from __future__ import annotations

from synthpos.data.augment import to_model_input
from synthpos.modes.contrast import PAIRS
from synthpos.modes.base import register_mode
from synthpos.modes.replace import Replace


@register_mode("quality")
class Quality(Replace):
    """``replace``'s data; each pair's loss weighted by ``N * softmax(gamma * q)``, q the pair's
    foreground minus background similarity under the frozen ``scorer``: every term of the method's
    objective must be a mean over positive pairs (``Term.weighted``)."""

    for_every_method = False
    needs = "a loss per positive pair to weight"
    requires = PAIRS
    uses_scorer = True  # the config checks pretrain.synthetic.scorer exists

    @classmethod
    def plain_on_anchors(cls, config) -> bool:
        return False  # replace's views, but each pair weighted by its score: never the plain loss

    @classmethod
    def check(cls, method, config) -> None:
        super().check(method, config)
        if config.scorer is None:
            raise ValueError("pretrain.synthetic.mode=quality needs pretrain.synthetic.scorer: a frozen network "
                             "(a synthpos backbone.pt or a TorchScript file) that scores positive pairs")

    @classmethod
    def frozen_model(cls, config, dataset, seed):
        from synthpos.models.scorer import build_scorer

        size, s = config.augment.crop_size, config.synthetic
        return build_scorer(s.scorer, dataset.images, lambda x: to_model_input(x, size, dataset.mean, dataset.std),
                            s.gamma, s.scorer_fit_images, seed)

    def method_loss(self, method, views, outputs, batch):
        weights = method.scorer.pair_weights(views[0], views[1])
        return method.objective(outputs[:2], views[:2], batch).loss(weights)
