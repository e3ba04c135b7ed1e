"""What each stage reads from outside its own output, checked before the lock, any record
or any file is touched (one row's ``check``; see :func:`synthpos.stages.status.check_inputs`).

Each check is ``check(config, explicit, upfront)``: ``explicit`` for the stage's own command,
``upfront`` for ``synthpos run`` checking every stage before the first starts (an input an
earlier stage of the run makes is then left for the check at that stage's turn).

Raises (each): SynthposError, one line naming the key, the value and the fix.
"""

from __future__ import annotations

import json
import zipfile
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


def _safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file is not whole, from its layout alone (an 8-byte header length, a JSON header, then
    exactly the bytes the header's offsets describe): a file cut short or zeroed fails, without loading it."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
        if header_len == 0 or 8 + header_len > size:
            return f"{size} bytes, its header zeroed or cut short"
        try:
            header = json.loads(fh.read(header_len))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if 8 + header_len + end != size:
        return f"{size} bytes where its header describes {8 + header_len + end}"
    return None


def weights_damage(folder: Path) -> tuple[Path, str] | None:
    """The first weight file of a generator folder (``unet/diffusion_pytorch_model.*``, as DDPMPipeline writes it)
    that is not whole, and why; None when every one is (or the folder has none: its loader says what is missing)."""
    for path in sorted(Path(folder).glob("unet/diffusion_pytorch_model.*")):
        if path.suffix == ".safetensors":
            why = _safetensors_damage(path)
        elif path.suffix == ".bin":
            why = None if zipfile.is_zipfile(path) else "not a whole torch file (cut short or zeroed)"
        else:
            continue
        if why is not None:
            return path, why
    return None


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
    """A generator folder named by ``generate.generator`` exists; the generator's weights (that folder's, or the run's
    own that train-generator made) are whole."""
    if config.generate.generator is None:
        from synthpos.registry import GENERATORS

        if not GENERATORS.get(config.generate.kind).trains_on_data:  # a generator folder left by another kind is unused
            return
        own = config.generator_model
        if not upfront and (damage := weights_damage(own)) is not None:  # in a run, train-generator remakes them first
            raise SynthposError(f"the generator's weights {damage[0]} are damaged ({damage[1]}); run `synthpos "
                                "train-generator` with the config that trained it: it is not done while they are "
                                "damaged and writes them again from its last checkpoint")
        return
    from synthpos.generators.diffusion import resolve_generator_dir

    folder = resolve_generator_dir(config.generate.generator)
    if not folder.is_dir():
        raise SynthposError(f"generate.generator={config.generate.generator}: {folder} does not exist; point it at "
                            "a generator folder (`synthpos train-generator` writes one) or builtin:fashion_mnist")
    if (damage := weights_damage(folder)) is not None:
        raise SynthposError(f"generate.generator={config.generate.generator}: its weights {damage[0]} are damaged "
                            f"({damage[1]}); restore the folder, or point generate.generator at a whole generator")


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
