"""What each stage reads from outside its own output, checked before the lock, any record
or any file is touched (one row's ``check``; see :func:`synthpos.stages.status.check_inputs`).

Each check is ``check(config, explicit, upfront)``: ``explicit`` for the stage's own command,
``upfront`` for ``synthpos run`` checking every stage before the first starts (an input an
earlier stage of the run makes is then left for the check at that stage's turn).

Raises (each): SynthposError, one line naming the key, the value and the fix.
"""

from __future__ import annotations

from pathlib import Path

from synthpos.config import RunConfig
from synthpos.errors import SynthposError


def readable_backbone(path: Path, key: str) -> None:
    """Raise unless ``path`` loads as a synthpos backbone (weights and the ``.json`` that describes them)."""
    from synthpos.models.backbones import load_backbone

    try:
        load_backbone(path)
    except SynthposError as err:
        raise SynthposError(f"{key}={path}: {err}") from None
    except (ValueError, KeyError, TypeError) as err:  # a .json that is not a synthpos description
        raise SynthposError(f"{key}={path} is not a synthpos backbone ({path.with_suffix('.json').name} does not "
                            f"describe one: {type(err).__name__}); point it at a backbone.pt written by synthpos") from None


def check_train_generator(config: RunConfig, explicit: bool, upfront: bool) -> None:
    """An embedding-conditioned generator's encoder: a readable backbone, or round 0's once it ran."""
    if config.train_generator.condition is None:
        return
    encoder = config.condition_encoder
    if config.train_generator.condition.encoder is not None:
        readable_backbone(encoder, "train_generator.condition.encoder")
    elif not upfront and not encoder.is_file():
        raise SynthposError(f"the generator is conditioned on round 0's encoder, {encoder}, which is not there; "
                            "`synthpos run --config FILE` pretrains it first, or set train_generator.condition.encoder")


def check_generate(config: RunConfig, explicit: bool, upfront: bool) -> None:
    """A generator folder named by ``generate.generator`` exists."""
    if config.generate.generator is None:
        return
    from synthpos.generators.diffusion import resolve_generator_dir

    folder = resolve_generator_dir(config.generate.generator)
    if not folder.is_dir():
        raise SynthposError(f"generate.generator={config.generate.generator}: {folder} does not exist; point it at "
                            "a generator folder (`synthpos train-generator` writes one) or builtin:fashion_mnist")


def check_pretrain(config: RunConfig, explicit: bool, upfront: bool) -> None:
    """The scorer a mode uses loads; the store pretraining reads verifies (in a run, generate makes it first)."""
    from synthpos.registry import MODES
    from synthpos.stages.store_state import check_store_input

    if (scorer := config.pretrain.synthetic.scorer) is not None and MODES.get(config.pretrain.synthetic.mode).uses_scorer:
        from synthpos.models.scorer import load_scorer_network

        load_scorer_network(Path(scorer))
    if not upfront:
        check_store_input(config)


def check_evaluate(config: RunConfig, explicit: bool, upfront: bool) -> None:
    """A backbone or baseline encoder from elsewhere, or the run's own when ``synthpos evaluate`` is asked for
    alone (in ``run``, pretraining has just written it)."""
    from synthpos.evaluation.external import check_evaluate_input

    check_evaluate_input(config, explicit, readable_backbone)
