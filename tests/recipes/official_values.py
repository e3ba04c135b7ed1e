"""The official values of every paper recipe, typed by hand from the official code.

Not generated from our recipes: each value was read in the file and line given, at these commits:

* CLSP: dewenzeng/clsp @ 91c8f9e37a8aaac84b5dee282be0ae55728baaa8
* GSSL: VectorInstitute/GenerativeSSL @ ce9945152f22813e2275e50fee68b8991efe69b2
* GenView: xiaojieli0903/genview @ 38a6a7801ba1af43b3a6c5758682f141f71e1e99

Keys are dotted paths into :class:`synthpos.config.RunConfig`, in our units (e.g. the CLSP
guidance weight w = 1.8 is our scale 1 + w = 2.8; solo-learn's per-GPU lr and batch are
given as the global values solo-learn computes from them). A key that our schema does not
have yet is still listed: the test reports it as a gap. docs/recipes.md explains each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Official:
    key: str
    value: Any
    source: str


def _o(key: str, value: Any, source: str) -> Official:
    return Official(key, value, source)


# ------------------------------------------------------------------------------------------- CLSP

_CLSP_COMMON = [
    _o("pretrain.epochs", 1000, "CLSP configs/*_cifar10.yaml:1"),
    _o("pretrain.projector_hidden_dim", 4096, "CLSP configs/moco_clsp_cifar10.yaml:16"),
    _o("pretrain.projector_out_dim", 256, "CLSP configs/moco_clsp_cifar10.yaml:15"),
    _o("pretrain.temperature", 0.2, "CLSP configs/moco_clsp_cifar10.yaml:19"),
    _o("pretrain.optimizer.name", "sgd", "CLSP train_moco_clsp.py:289"),
    _o("pretrain.optimizer.momentum", 0.9, "CLSP train_moco_clsp.py:289"),
    _o("pretrain.optimizer.weight_decay", 1e-4, "CLSP configs/moco_clsp_cifar10.yaml:7"),
    _o("pretrain.optimizer.exclude_bias_and_norm", False, "CLSP train_moco_clsp.py:289 (SGD(model.parameters()))"),
    _o("pretrain.optimizer.warmup_epochs", 10, "CLSP train_moco_clsp.py:292"),
    _o("pretrain.optimizer.warmup_start_lr", 1e-3, "CLSP configs/moco_clsp_cifar10.yaml:4"),
    _o("pretrain.optimizer.min_lr", 0.0, "CLSP train_moco_clsp.py:292 (eta_min=0.0)"),
    _o("pretrain.augment.crop_size", 32, "CLSP configs/moco_clsp_cifar10.yaml:8"),
    _o("pretrain.augment.crop_scale", (0.08, 1.0), "CLSP train_moco_clsp.py:185"),
    _o("pretrain.augment.jitter_prob", 0.8, "CLSP train_moco_clsp.py:186"),
    _o("pretrain.augment.brightness", 0.4, "CLSP train_moco_clsp.py:175"),
    _o("pretrain.augment.contrast", 0.4, "CLSP train_moco_clsp.py:175"),
    _o("pretrain.augment.hue", 0.1, "CLSP train_moco_clsp.py:175"),
    _o("pretrain.augment.grayscale_prob", 0.2, "CLSP train_moco_clsp.py:188"),
    _o("pretrain.augment.hflip_prob", 0.5, "CLSP train_moco_clsp.py:187"),
    _o("pretrain.precision", "fp32", "CLSP train_moco_clsp.py:295-317 (no autocast)"),
    _o("evaluate.linear.epochs", 100, "CLSP utils/eval_utils.py:119"),
    _o("evaluate.linear.batch_size", 256, "CLSP utils/eval_utils.py:114"),
    _o("evaluate.linear.momentum", 0.0, "CLSP utils/eval_utils.py:115"),
    _o("evaluate.linear.weight_decay", 0.0, "CLSP utils/eval_utils.py:115"),
    _o("evaluate.linear.milestones", [0.6, 0.8], "CLSP utils/eval_utils.py:116 ([60, 80] of 100)"),
    _o("train_generator.unet.block_out_channels", [128, 256, 256, 256], "CLSP configs/diffusion_cifar10.yaml:4-9"),
    _o("train_generator.unet.attention_levels", [1], "CLSP configs/diffusion_cifar10.yaml:10-11"),
    _o("train_generator.unet.layers_per_block", 2, "CLSP configs/diffusion_cifar10.yaml:12"),
    _o("train_generator.unet.dropout", 0.1, "CLSP configs/diffusion_cifar10.yaml:13"),
    _o("train_generator.learning_rate", 2e-4, "CLSP configs/diffusion_cifar10.yaml:14"),
    _o("train_generator.beta_start", 1e-4, "CLSP configs/diffusion_cifar10.yaml:15"),
    _o("train_generator.beta_end", 0.02, "CLSP configs/diffusion_cifar10.yaml:16"),
    _o("train_generator.num_train_timesteps", 1000, "CLSP configs/diffusion_cifar10.yaml:3"),
    _o("train_generator.grad_clip", 1.0, "CLSP configs/diffusion_cifar10.yaml:18"),
    _o("generate.candidates", 8, "CLSP configs/moco_clsp_cifar10.yaml:28"),
    _o("generate.clsp.num_steps", 100, "CLSP README.md:83"),
    _o("generate.clsp.eta", 0.1, "CLSP README.md:83"),
    _o("generate.clsp.interpolation_weight", 0.1, "CLSP README.md:82"),
    _o("generate.clsp.clip_x0", False, "CLSP ddpm.py:237,275 (only the final sample is clipped)"),
]

_CLSP_MOCO = [
    _o("pretrain.method", "mocov2plus", "CLSP train_moco_clsp.py:306-310"),
    _o("pretrain.batch_size", 512, "CLSP configs/moco_clsp_cifar10.yaml:2"),
    _o("pretrain.optimizer.lr", 0.3, "CLSP configs/moco_clsp_cifar10.yaml:5"),
    _o("pretrain.queue_size", 32768, "CLSP configs/moco_clsp_cifar10.yaml:17"),
    _o("pretrain.momentum.base", 0.99, "CLSP train_moco_clsp.py:108-114"),
    _o("pretrain.momentum.final", 0.999, "CLSP train_moco_clsp.py:108-114"),
    _o("pretrain.augment.saturation", 0.2, "CLSP train_moco_clsp.py:175; train_moco.py:169"),
    _o("pretrain.augment.solarize_prob", 0.2, "CLSP train_moco_clsp.py:189; train_moco.py:183"),
    _o("pretrain.per_view_batchnorm", True, "CLSP train_moco_clsp.py:129-139"),
]

_CLSP_SIMCLR = [
    _o("pretrain.method", "simclr", "CLSP train_simclr_clsp.py"),
    _o("pretrain.batch_size", 1024, "CLSP configs/simclr_clsp_cifar10.yaml:2"),
    _o("pretrain.optimizer.lr", 0.5, "CLSP configs/simclr_clsp_cifar10.yaml:4"),
    _o("pretrain.augment.saturation", 0.4, "CLSP train_simclr_clsp.py:90"),
    _o("pretrain.augment.solarize_prob", 0.0, "CLSP train_simclr_clsp.py:96-140 (no Solarization)"),
    _o("pretrain.per_view_batchnorm", False, "CLSP train_simclr_clsp.py:199-200 (views concatenated)"),
]


def _clsp(dataset: str, method: str, backbone: str, clsp: bool) -> list[Official]:
    entries = [*_CLSP_COMMON, *(_CLSP_MOCO if method == "mocov2plus" else _CLSP_SIMCLR)]
    entries.append(_o("data.name", dataset, f"CLSP configs/*_{dataset}.yaml:13"))
    entries.append(_o("pretrain.backbone.name", backbone, "CLSP README.md:19-38 (ResNet18 / ResNet50 rows)"))
    entries.append(_o("pretrain.backbone.cifar_stem", True, "CLSP train_moco_clsp.py:266-268 (size='small')"))
    if clsp:
        entries.append(_o("pretrain.synthetic.mode", "clsp", "CLSP train_moco_clsp.py:312-313"))
        weight, src = {
            ("cifar10", "mocov2plus"): (0.5, "CLSP configs/moco_clsp_cifar10.yaml:27"),
            ("cifar100", "mocov2plus"): (0.2, "CLSP configs/moco_clsp_cifar100.yaml:27"),
            ("cifar10", "simclr"): (1.0, "CLSP configs/simclr_clsp_cifar10.yaml:24"),
            ("cifar100", "simclr"): (1.0, "CLSP configs/simclr_clsp_cifar100.yaml:24"),
        }[(dataset, method)]
        entries.append(_o("pretrain.synthetic.weight", weight, src))
    else:
        entries.append(_o("pretrain.synthetic.mode", "none", "CLSP train_moco.py / train_simclr.py"))
    linear = 10.0 if (dataset, method, clsp) == ("cifar100", "mocov2plus", True) else 1.0
    source = "CLSP configs/moco_clsp_cifar100.yaml:6" if linear == 10.0 else "CLSP configs/*_cifar10.yaml:5-6 (linear_eval_lr)"
    entries.append(_o("evaluate.linear.lr", linear, source))
    return entries


#: Published linear top-1 (official README): recipe -> (baseline, CLSP).
PUBLISHED: dict[str, tuple[float, float]] = {}
# (dataset, backbone) -> SimCLR, CLSP-SimCLR, MoCo, CLSP-MoCo; CLSP README.md:19-38.
_README = {
    ("cifar10", "resnet18"): (91.45, 94.45, 92.29, 94.62),
    ("cifar10", "resnet50"): (93.03, 95.57, 94.62, 96.04),
    ("cifar100", "resnet18"): (68.10, 72.41, 68.91, 72.33),
    ("cifar100", "resnet50"): (70.16, 74.65, 72.68, 76.43),
}

RECIPES: dict[str, list[Official]] = {}
for _dataset in ("cifar10", "cifar100"):
    for _method, _name in (("simclr", "simclr"), ("mocov2plus", "mocov2plus")):
        for _backbone, _suffix in (("resnet18", ""), ("resnet50", "_resnet50")):
            _numbers = _README[(_dataset, _backbone)]
            _pair = _numbers[:2] if _method == "simclr" else _numbers[2:]
            for _clsp_on, _prefix in ((True, "clsp_"), (False, "clsp_baseline_")):
                _path = f"configs/{_dataset}/{_prefix}{_name}{_suffix}.yaml"
                RECIPES[_path] = _clsp(_dataset, _method, _backbone, _clsp_on)
                PUBLISHED[_path] = _pair

RECIPES["configs/cifar10/generator_conditional.yaml"] = [
    _o("train_generator.class_conditional", True, "CLSP train_conditional_diffusion.py"),
    _o("train_generator.unet.block_out_channels", [128, 256, 256, 256], "CLSP configs/conditional_diffusion_cifar10.yaml:4-9"),
    _o("train_generator.unet.dropout", 0.15, "CLSP configs/conditional_diffusion_cifar10.yaml:11"),
    _o("train_generator.unet.attention_levels", [0, 1, 2, 3], "CLSP models/unet_condition.py:124,179 (down ResBlocks attn=True by default)"),
    _o("train_generator.unet.up_attention_levels", [], "CLSP models/unet_condition.py:195 (up ResBlocks attn=False)"),
    _o("train_generator.unet.layers_per_block", 2, "CLSP configs/conditional_diffusion_cifar10.yaml:10"),
    _o("train_generator.learning_rate", 2.5e-4, "CLSP configs/conditional_diffusion_cifar10.yaml:12"),
    _o("train_generator.beta_start", 1e-4, "CLSP configs/conditional_diffusion_cifar10.yaml:13"),
    _o("train_generator.beta_end", 0.028, "CLSP configs/conditional_diffusion_cifar10.yaml:14"),
    _o("generate.clsp.guidance_scale", 2.8, "CLSP ddpm.py:213-215, configs/conditional_diffusion_cifar10.yaml:15 (w 1.8)"),
    _o("generate.clsp.num_steps", 100, "CLSP README.md:129"),
    _o("generate.clsp.eta", 0.1, "CLSP README.md:129"),
    _o("generate.clsp.interpolation_weight", 1.0, "CLSP generate_synthetic_dataset_conditional.py:105 (plain DDIM, no anchor)"),
]

# ------------------------------------------------------------------------------- GenerativeSSL

_GSSL_COMMON = [
    _o("data.name", "image_folder", "GSSL solo-learn/scripts/pretrain/imagenet/*_diff.yaml (data.dataset imagenet)"),
    _o("generate.kind", "unclip", "GSSL data_generation/img2img_stable_diff.py:23"),
    _o("generate.candidates", 10, "GSSL simclr_diff.yaml:27-28 (synthetic_index 0..9)"),
    _o("generate.unclip.num_steps", 10, "GSSL img2img_stable_diff.py:92"),
    _o("generate.unclip.eta", 0.0, "GSSL img2img_stable_diff.py:108"),
    _o("generate.unclip.guidance_scale", 10.0, "GSSL img2img_stable_diff.py:59-65 (pipeline default)"),
    _o("generate.unclip.noise_level", 0, "GSSL img2img_stable_diff.py:59-65 (pipeline default)"),
    _o("generate.unclip.trailing_zero_snr", True, "GSSL img2img_stable_diff.py:38-42"),
    _o("pretrain.synthetic.mode", "replace", "GSSL solo/data/pretrain_dataloader.py:161-177"),
    _o("pretrain.synthetic.replace_prob", 1.0, "GSSL simclr_diff.yaml:29 (generative_augmentation_prob: 1)"),
    _o("pretrain.synthetic.replace_view", "second", "GSSL solo/data/pretrain_dataloader.py:172-175 (x_s for every view after the first)"),
    _o("pretrain.synthetic.crop_synthetic", True, "GSSL augmentations/synthetic_symmetric.yaml:27-30 (rrc enabled in the synthetic list)"),
    _o("pretrain.backbone.name", "resnet50", "GSSL simclr_diff.yaml:17"),
    _o("pretrain.backbone.cifar_stem", False, "GSSL (ImageNet ResNet-50)"),
    _o("pretrain.epochs", 100, "GSSL simclr_diff.yaml:52"),
    _o("pretrain.sync_batchnorm", True, "GSSL simclr_diff.yaml:54"),
    _o("pretrain.devices", 4, "GSSL simclr_diff.yaml:53"),
    _o("pretrain.augment.crop_size", 224, "GSSL augmentations/synthetic_symmetric.yaml:24"),
    _o("pretrain.augment.crop_scale", (0.08, 1.0), "GSSL augmentations/synthetic_symmetric.yaml:6-7"),
    _o("pretrain.augment.jitter_prob", 0.8, "GSSL augmentations/synthetic_symmetric.yaml:9"),
    _o("pretrain.augment.brightness", 0.8, "GSSL augmentations/synthetic_symmetric.yaml:10"),
    _o("pretrain.augment.contrast", 0.8, "GSSL augmentations/synthetic_symmetric.yaml:11"),
    _o("pretrain.augment.saturation", 0.8, "GSSL augmentations/synthetic_symmetric.yaml:12"),
    _o("pretrain.augment.hue", 0.2, "GSSL augmentations/synthetic_symmetric.yaml:13"),
    _o("pretrain.augment.grayscale_prob", 0.2, "GSSL augmentations/synthetic_symmetric.yaml:15"),
    _o("pretrain.augment.solarize_prob", 0.0, "GSSL augmentations/synthetic_symmetric.yaml:19"),
    _o("pretrain.augment.hflip_prob", 0.5, "GSSL augmentations/synthetic_symmetric.yaml:23"),
    _o("pretrain.augment.blur_prob", 0.5, "GSSL augmentations/synthetic_symmetric.yaml:16-17"),
    _o("pretrain.augment.blur_sigma", (0.1, 2.0), "GSSL solo/data/dali_dataloader.py:163,170 (U[0, 1] x 1.9 + 0.1)"),
    _o("pretrain.augment.blur_kernel_size", 23, "GSSL solo/data/dali_dataloader.py:148,439 (window_size 23)"),
    _o("pretrain.optimizer.warmup_epochs", 10, "GSSL solo-learn/solo/methods/base.py:301-302 (default)"),
    _o("pretrain.optimizer.warmup_start_lr", 3e-5, "GSSL solo-learn/solo/methods/base.py:298-299 (default)"),
]


def _gssl(method: str, entries: list[Official]) -> list[Official]:
    return [*_GSSL_COMMON, _o("pretrain.method", method, f"GSSL {method}_diff.yaml:15"), *entries]


# solo-learn scales lr by batch_size * devices / 256 (solo-learn/solo/args/pretrain.py:164-165).
RECIPES["configs/imagenet/generativessl_simclr.yaml"] = _gssl("simclr", [
    _o("pretrain.projector_hidden_dim", 4096, "GSSL simclr_diff.yaml:19"),
    _o("pretrain.projector_out_dim", 512, "GSSL simclr_diff.yaml:20"),
    _o("pretrain.temperature", 0.2, "GSSL simclr_diff.yaml:21"),
    _o("pretrain.optimizer.name", "lars", "GSSL simclr_diff.yaml:33"),
    _o("pretrain.batch_size", 1024, "GSSL simclr_diff.yaml:34 (256 x 4)"),
    _o("pretrain.optimizer.lr", 1.2, "GSSL simclr_diff.yaml:35 (0.3 x 4)"),
    _o("pretrain.optimizer.weight_decay", 1e-6, "GSSL simclr_diff.yaml:37"),
    _o("pretrain.optimizer.eta", 0.02, "GSSL simclr_diff.yaml:40"),
    _o("pretrain.optimizer.lars_clip", True, "GSSL simclr_diff.yaml:39 (clip_lr)"),
    _o("pretrain.optimizer.lars_trust", "grad_and_decay", "GSSL solo/utils/lars.py:142-145"),
    # LARS(exclude_bias_n_norm=True) skips both the decay and the scaling of 1-D parameters (lars.py:140-151),
    # which is our exclusion; exclude_bias_n_norm_wd False (base.py:282-283) only leaves them in the optimiser's groups.
    _o("pretrain.optimizer.exclude_bias_and_norm", True, "GSSL simclr_diff.yaml:41; solo/utils/lars.py:140-151"),
])
RECIPES["configs/imagenet/generativessl_byol.yaml"] = _gssl("byol", [
    _o("pretrain.projector_hidden_dim", 4096, "GSSL byol_diff.yaml:19"),
    _o("pretrain.projector_out_dim", 256, "GSSL byol_diff.yaml:20"),
    _o("pretrain.predictor_hidden_dim", 4096, "GSSL byol_diff.yaml:21"),
    _o("pretrain.momentum.base", 0.99, "GSSL byol_diff.yaml:23"),
    _o("pretrain.momentum.final", 1.0, "GSSL byol_diff.yaml:24"),
    _o("pretrain.optimizer.name", "lars", "GSSL byol_diff.yaml:36"),
    _o("pretrain.batch_size", 1024, "GSSL byol_diff.yaml:37 (256 x 4)"),
    _o("pretrain.optimizer.lr", 0.8, "GSSL byol_diff.yaml:38 (0.2 x 4)"),
    _o("pretrain.optimizer.weight_decay", 1.5e-6, "GSSL byol_diff.yaml:40"),
    _o("pretrain.optimizer.eta", 0.001, "GSSL byol_diff.yaml:43"),
    _o("pretrain.optimizer.lars_clip", False, "GSSL byol_diff.yaml:42 (clip_lr)"),
    _o("pretrain.optimizer.lars_trust", "grad_and_decay", "GSSL solo/utils/lars.py:142-145"),
    _o("pretrain.optimizer.exclude_bias_and_norm", True, "GSSL byol_diff.yaml:44; solo/utils/lars.py:140-151"),
])
RECIPES["configs/imagenet/generativessl_mocov2plus.yaml"] = _gssl("mocov2plus", [
    _o("pretrain.projector_hidden_dim", 2048, "GSSL moco_diff.yaml:19"),
    _o("pretrain.projector_out_dim", 256, "GSSL moco_diff.yaml:20"),
    _o("pretrain.queue_size", 65536, "GSSL moco_diff.yaml:21"),
    _o("pretrain.temperature", 0.2, "GSSL moco_diff.yaml:22"),
    _o("pretrain.momentum.base", 0.99, "GSSL moco_diff.yaml:24"),
    _o("pretrain.momentum.final", 0.999, "GSSL moco_diff.yaml:25"),
    _o("pretrain.optimizer.name", "sgd", "GSSL moco_diff.yaml:37"),
    _o("pretrain.batch_size", 256, "GSSL moco_diff.yaml:38 (64 x 4)"),
    _o("pretrain.optimizer.lr", 0.3, "GSSL moco_diff.yaml:39 (0.3 x 1)"),
    _o("pretrain.optimizer.weight_decay", 3e-5, "GSSL moco_diff.yaml:41"),
    _o("pretrain.optimizer.exclude_bias_and_norm", False, "GSSL solo/methods/base.py:282-283"),
])
RECIPES["configs/imagenet/generativessl_simsiam.yaml"] = _gssl("simsiam", [
    _o("pretrain.projector_hidden_dim", 4096, "GSSL simsiam_diff.yaml:17"),
    _o("pretrain.projector_out_dim", 4096, "GSSL simsiam_diff.yaml:18"),
    _o("pretrain.predictor_hidden_dim", 512, "GSSL simsiam_diff.yaml:19"),
    _o("pretrain.optimizer.name", "sgd", "GSSL simsiam_diff.yaml:32"),
    _o("pretrain.batch_size", 256, "GSSL simsiam_diff.yaml:33 (64 x 4)"),
    _o("pretrain.optimizer.lr", 0.5, "GSSL simsiam_diff.yaml:34"),
    _o("pretrain.optimizer.weight_decay", 1e-5, "GSSL simsiam_diff.yaml:36"),
    _o("pretrain.simsiam.fixed_predictor_lr", True, "GSSL solo-learn/solo/methods/simsiam.py:99-103 (static_lr)"),
    _o("pretrain.optimizer.exclude_bias_and_norm", False, "GSSL solo/methods/base.py:282-283"),
])
RECIPES["configs/imagenet/generativessl_barlow_twins.yaml"] = _gssl("barlow_twins", [
    _o("pretrain.projector_hidden_dim", 4096, "GSSL barlow_diff.yaml:19"),
    _o("pretrain.projector_out_dim", 4096, "GSSL barlow_diff.yaml:20"),
    _o("pretrain.barlow_twins.lambda_param", 0.0051, "GSSL barlow_diff.yaml:21"),
    _o("pretrain.barlow_twins.scale", 0.048, "GSSL barlow_diff.yaml:22"),
    _o("pretrain.optimizer.name", "lars", "GSSL barlow_diff.yaml:34"),
    _o("pretrain.batch_size", 256, "GSSL barlow_diff.yaml:35 (64 x 4)"),
    _o("pretrain.optimizer.lr", 0.8, "GSSL barlow_diff.yaml:36"),
    _o("pretrain.optimizer.weight_decay", 1.5e-6, "GSSL barlow_diff.yaml:38"),
    _o("pretrain.optimizer.eta", 0.001, "GSSL barlow_diff.yaml:41"),
    _o("pretrain.optimizer.lars_clip", False, "GSSL barlow_diff.yaml:40 (clip_lr)"),
    _o("pretrain.optimizer.lars_trust", "grad_and_decay", "GSSL solo/utils/lars.py:142-145"),
    _o("pretrain.optimizer.exclude_bias_and_norm", True, "GSSL barlow_diff.yaml:42; solo/utils/lars.py:140-151"),
])

# ------------------------------------------------------------------------------------- GenView

_GENVIEW_GENERATION = [
    _o("data.name", "image_folder", "GenView configs_genview/_base_/datasets/imagenet_bs512_mocov3.py"),
    _o("generate.kind", "unclip", "GenView tools/toolbox_genview/generate_image_variations_noiselevels.py:18"),
    _o("generate.candidates", 1, "GenView generate_image_variations_noiselevels.py:60 (num_images_per_prompt 1)"),
    _o("generate.unclip.num_steps", 20, "GenView generate_image_variations_noiselevels.py:56"),
    _o("generate.unclip.guidance_scale", 10.0, "GenView generate_image_variations_noiselevels.py:58"),
    _o("generate.unclip.trailing_zero_snr", False, "GenView generate_image_variations_noiselevels.py:18-21 (own scheduler)"),
    _o("generate.unclip.prompt", "Your custom text prompt here", "GenView generate_image_variations_noiselevels.py:77"),
    _o("generate.unclip.adaptive_noise.enabled", True, "GenView README.md:93-161"),
    _o("generate.unclip.adaptive_noise.bins", [0.2, 0.4, 0.6, 0.8], "GenView tools/clip_pca/generate_ada_noise_level.py:56"),
    _o("generate.unclip.adaptive_noise.levels", [0, 100, 200, 300, 400], "GenView generate_ada_noise_level.py:57"),
    _o("generate.unclip.adaptive_noise.fit_images", 10000, "GenView tools/clip_pca/extract_features_pca.py:326"),
    _o("generate.unclip.adaptive_noise.foreground_share", 0.35, "GenView extract_features_pca.py:175-187,294"),
    _o("pretrain.synthetic.mode", "quality", "GenView mmpretrain/models/selfsup/mocov3.py:190-194"),
    _o("pretrain.synthetic.replace_prob", 1.0, "GenView mocov3_..._clipmask.py:155"),
    _o("pretrain.synthetic.gamma", 1.0, "GenView mmpretrain/models/selfsup/mocov3.py:71"),
    _o("pretrain.synthetic.scorer_fit_images", 10000, "GenView README.md:249"),
    _o("pretrain.synthetic.replace_view", "random", "GenView mmpretrain/datasets/transforms/wrappers.py:76-78"),
    _o("pretrain.synthetic.crop_synthetic", True, "GenView wrappers.py:96-100 (gen_img goes through the view's own pipeline, RRC first)"),
    _o("pretrain.backbone.name", "resnet50", "GenView mocov3_..._clipmask.py:15-16"),
    _o("pretrain.backbone.cifar_stem", False, "GenView (mmpretrain ImageNet ResNet-50)"),
    _o("pretrain.sync_batchnorm", True, "GenView mocov3_..._clipmask.py:17"),
    _o("pretrain.devices", 8, "GenView mocov3_resnet50_8xb512 (8 GPUs)"),
    _o("pretrain.augment.crop_size", 224, "GenView mocov3_..._clipmask.py:91"),
    _o("pretrain.augment.crop_scale", (0.2, 1.0), "GenView mocov3_..._clipmask.py:92"),
    _o("pretrain.augment.jitter_prob", 0.8, "GenView mocov3_..._clipmask.py:104"),
    _o("pretrain.augment.brightness", 0.4, "GenView mocov3_..._clipmask.py:99"),
    _o("pretrain.augment.contrast", 0.4, "GenView mocov3_..._clipmask.py:100"),
    _o("pretrain.augment.hue", 0.1, "GenView mocov3_..._clipmask.py:102"),
    _o("pretrain.augment.grayscale_prob", 0.2, "GenView mocov3_..._clipmask.py:107"),
    _o("pretrain.augment.hflip_prob", 0.5, "GenView mocov3_..._clipmask.py:116"),
]

RECIPES["configs/imagenet/genview_mocov3.yaml"] = [
    *_GENVIEW_GENERATION,
    _o("pretrain.method", "mocov3", "GenView mocov3_..._clipmask.py:9"),
    _o("pretrain.projector_hidden_dim", 4096, "GenView mocov3_..._clipmask.py:22"),
    _o("pretrain.projector_out_dim", 256, "GenView mocov3_..._clipmask.py:23"),
    _o("pretrain.predictor_hidden_dim", 4096, "GenView mocov3_..._clipmask.py:35"),
    _o("pretrain.temperature", 1.0, "GenView mocov3_..._clipmask.py:7"),
    _o("pretrain.momentum.base", 0.99, "GenView mocov3_..._clipmask.py:10 (base_momentum 0.01)"),
    _o("pretrain.momentum.final", 1.0, "GenView mocov3_..._clipmask.py:10 (cosine to 1)"),
    _o("pretrain.optimizer.name", "lars", "GenView mocov3_..._clipmask.py:50"),
    _o("pretrain.optimizer.lr", 9.6, "GenView mocov3_..._clipmask.py:50"),
    _o("pretrain.optimizer.weight_decay", 1e-6, "GenView mocov3_..._clipmask.py:50"),
    _o("pretrain.optimizer.momentum", 0.9, "GenView mocov3_..._clipmask.py:50"),
    _o("pretrain.optimizer.exclude_bias_and_norm", True, "GenView mocov3_..._clipmask.py:51-57"),
    _o("pretrain.optimizer.eta", 0.001, "GenView mocov3_..._clipmask.py:50 (not set: mmpretrain/engine/optimizers/lars.py:43)"),
    _o("pretrain.optimizer.lars_trust", "grad_and_decay", "GenView mmpretrain/engine/optimizers/lars.py:102-111"),
    _o("pretrain.optimizer.lars_clip", False, "GenView mmpretrain/engine/optimizers/lars.py (no clipping)"),
    _o("pretrain.optimizer.warmup_epochs", 10, "GenView mocov3_..._clipmask.py:62-68"),
    _o("pretrain.optimizer.warmup_start_lr", 9.6e-4, "GenView mocov3_..._clipmask.py:64 (start_factor 1e-4)"),
    _o("pretrain.epochs", 100, "GenView mocov3_..._clipmask.py:79"),
    _o("pretrain.batch_size", 4096, "GenView mocov3_..._clipmask.py:161 (512 x 8)"),
    _o("pretrain.augment.saturation", 0.2, "GenView mocov3_..._clipmask.py:101"),
    _o("pretrain.augment.solarize_prob", (0.0, 0.2), "GenView mocov3_..._clipmask.py:115,145 (view 1, view 2)"),
    _o("pretrain.augment.blur_prob", (1.0, 0.1), "GenView mocov3_..._clipmask.py:110-114,140-144"),
    _o("pretrain.augment.blur_sigma", (0.1, 2.0), "GenView mocov3_..._clipmask.py:112,142"),
    _o("evaluate.linear.epochs", 90, "GenView mocov3/benchmarks/resnet50_8xb128-linear-coslr-90e_in1k.py:30"),
    _o("evaluate.linear.lr", 0.4, "GenView resnet50_8xb128-linear-coslr-90e_in1k.py:21"),
    _o("evaluate.linear.momentum", 0.9, "GenView resnet50_8xb128-linear-coslr-90e_in1k.py:21"),
    _o("evaluate.linear.batch_size", 1024, "GenView resnet50_8xb128-linear-coslr-90e_in1k.py:9 (128 x 8)"),
]

RECIPES["configs/imagenet/genview_simsiam.yaml"] = [
    *(o for o in _GENVIEW_GENERATION if o.key not in ("pretrain.devices",)),
    _o("pretrain.devices", 8, "GenView simsiam_resnet50_8xb32 (8 GPUs)"),
    _o("pretrain.method", "simsiam", "GenView simsiam_..._clipmask.py:9"),
    _o("pretrain.projector_hidden_dim", 2048, "GenView simsiam_..._clipmask.py:21"),
    _o("pretrain.projector_out_dim", 2048, "GenView simsiam_..._clipmask.py:22"),
    _o("pretrain.predictor_hidden_dim", 512, "GenView simsiam_..._clipmask.py:32"),
    _o("pretrain.optimizer.name", "sgd", "GenView simsiam_..._clipmask.py:44"),
    _o("pretrain.optimizer.lr", 0.05, "GenView simsiam_..._clipmask.py:41"),
    _o("pretrain.optimizer.weight_decay", 1e-4, "GenView simsiam_..._clipmask.py:44"),
    _o("pretrain.optimizer.exclude_bias_and_norm", False, "GenView simsiam_..._clipmask.py:45 (no decay_mult)"),
    _o("pretrain.simsiam.fixed_predictor_lr", True, "GenView simsiam_..._clipmask.py:45,54 (fix_lr, SimSiamHook fix_pred_lr)"),
    _o("pretrain.batch_size", 256, "GenView simsiam_..._clipmask.py:96 (32 x 8)"),
    _o("pretrain.epochs", 200, "GenView simsiam _base_/schedules/imagenet_sgd_coslr_200e.py"),
    _o("pretrain.augment.saturation", 0.4, "GenView simsiam_..._clipmask.py:72"),
    _o("pretrain.augment.solarize_prob", 0.0, "GenView simsiam_..._clipmask.py:60-86 (no Solarize)"),
    _o("pretrain.augment.blur_prob", 0.5, "GenView simsiam_..._clipmask.py:82-85"),
    _o("pretrain.augment.blur_sigma", (0.1, 2.0), "GenView simsiam_..._clipmask.py:83"),
]
