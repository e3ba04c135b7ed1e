"""``none``: no synthetic data; the method's own two-view loss."""

from synthpos.modes.base import SyntheticMode, register_mode


@register_mode("none", default=True)  # a recipe that names no mode: plain training
class NoSynthetic(SyntheticMode):
    """The plain method: two augmented views of each real image."""

    needs_store = False
    synthetic = False
    for_every_method = True
