"""The texts of a customization's exports (`engine.exports`): the ComfyUI workflow with AnimateDiff-Evolved's
Gen2 nodes, the list of model files it loads, and the READMEs with the Python (diffusers) and the steps
(ComfyUI) that sample a video from the export.

The workflow is ComfyUI's API format (``POST /prompt``; the web UI opens it too): SD 1.5, the user's customized
T2I (their LoRA through ``LoraLoader``, their full UNet through ``UNETLoader``, or their single-file checkpoint
as the checkpoint), the Spatial Adapter through ``LoraLoaderModelOnly``, and the v1-5-2 motion module.
"""

from __future__ import annotations

from pathlib import Path

from common.exports import checkpoint_file_name, spatial_file_name
from engine.models import SCHEDULERS

WORKFLOW_FILE = "workflow_api.json"
MODELS_FILE = "models.json"
LORA_FOLDER = "models/loras"
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SD15_SOURCE = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 (v1-5-pruned-emaonly.safetensors)"
MOTION_MODULE = "mm_sd_v15_v2.ckpt"  # AnimateDiff v1-5-2, the motion adapter the sd15 preset samples with
MOTION_SOURCE = "https://huggingface.co/guoyww/animatediff (mm_sd_v15_v2.ckpt)"
MOTION_FOLDER = "models/animatediff_models"
# Where ComfyUI looks for the user's own checkpoint, by upload format, and the loader that reads it there.
CHECKPOINT_FOLDERS = {"lora": "models/loras", "unet": "models/unet", "ldm": "models/checkpoints"}
REPO = Path(__file__).resolve().parents[1]


def file_names(manifest: dict) -> dict[str, str]:
    """The file names the bundle and the workflow use (`common.exports`: the API names the checkpoint too)."""
    return {"spatial": spatial_file_name(manifest["spatial_adapter"]["sha256"]),
            "checkpoint": checkpoint_file_name(manifest["checkpoint"]["sha256"]),
            "base": SD15_CHECKPOINT, "motion": MOTION_MODULE}


def workflow(manifest: dict, sample: dict, names: dict[str, str]) -> tuple[dict, list[dict]]:
    """(the API-format workflow, the model files it names: ``name``, ``folder``, ``in_bundle``, ``source``)."""
    fmt = manifest["checkpoint"]["format"]
    own = {"name": names["checkpoint"], "folder": CHECKPOINT_FOLDERS[fmt], "in_bundle": False,
           "source": f"your uploaded checkpoint ({fmt}, sha256 {manifest['checkpoint']['sha256']}), renamed"}
    base = {"name": names["base"], "folder": "models/checkpoints", "in_bundle": False, "source": SD15_SOURCE}
    nodes: dict[str, dict] = {}

    def node(class_type: str, title: str, **inputs) -> list:
        key = str(len(nodes) + 1)
        nodes[key] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return [key, 0]

    models = [own]
    if fmt == "ldm":  # a whole SD 1.5 checkpoint: model, CLIP and VAE from it
        checkpoint = node("CheckpointLoaderSimple", "Your checkpoint", ckpt_name=names["checkpoint"])
        model, clip = checkpoint, [checkpoint[0], 1]
    else:
        checkpoint = node("CheckpointLoaderSimple", "SD 1.5", ckpt_name=names["base"])
        models.append(base)
        if fmt == "lora":
            lora = node("LoraLoader", "Your LoRA", model=checkpoint, clip=[checkpoint[0], 1],
                        lora_name=names["checkpoint"], strength_model=1.0, strength_clip=1.0)
            model, clip = lora, [lora[0], 1]
        else:
            model = node("UNETLoader", "Your UNet", unet_name=names["checkpoint"], weight_dtype="default")
            clip = [checkpoint[0], 1]
    spatial = node("LoraLoaderModelOnly", "Still-Moving Spatial Adapter", model=model, lora_name=names["spatial"],
                   strength_model=1.0)
    models.append({"name": names["spatial"], "folder": LORA_FOLDER, "in_bundle": True,
                   "source": "this bundle: the Spatial Adapter, kohya layout"})
    motion = node("ADE_LoadAnimateDiffModel", "Motion module v1-5-2", model_name=names["motion"])
    models.append({"name": names["motion"], "folder": MOTION_FOLDER, "in_bundle": False, "source": MOTION_SOURCE})
    applied = node("ADE_ApplyAnimateDiffModelSimple", "Apply motion module", motion_model=motion)
    animated = node("ADE_UseEvolvedSampling", "Use Evolved Sampling", model=spatial, m_models=applied,
                    beta_schedule="autoselect")
    positive = node("CLIPTextEncode", "Prompt", text=sample["prompt"], clip=clip)
    negative = node("CLIPTextEncode", "Negative prompt", text=sample.get("negative_prompt", ""), clip=clip)
    latent = node("EmptyLatentImage", "Frames", width=sample["width"], height=sample["height"],
                  batch_size=sample["num_frames"])
    sampled = node("KSampler", "KSampler", model=animated, seed=sample["seed"], steps=sample["steps"],
                   cfg=sample["guidance_scale"], sampler_name="ddim", scheduler="ddim_uniform", positive=positive,
                   negative=negative, latent_image=latent, denoise=1.0)
    frames = node("VAEDecode", "Decode", samples=sampled, vae=[checkpoint[0], 2])
    node("SaveAnimatedWEBP", "Save video", images=frames, filename_prefix="stillmoving", fps=8.0, lossless=False,
         quality=90, method="default")
    return nodes, models


def portable(source: str) -> str:
    """A source path inside this repository as a path relative to its root (the shapes world's directories)."""
    path = Path(source)
    if path.is_absolute() and path.is_relative_to(REPO):
        return path.relative_to(REPO).as_posix()
    return source


def _load_checkpoint_code(fmt: str) -> str:
    if fmt == "lora":
        return ('pipe = AnimateDiffPipeline.from_pretrained(BASE, motion_adapter=adapter)\n'
                'pipe.load_lora_weights(CHECKPOINT, adapter_name="customization")  # your LoRA, fused as the '
                'service does\n'
                'pipe.fuse_lora(adapter_names=["customization"], lora_scale=1.0)\n'
                'pipe.unload_lora_weights()\n')
    if fmt == "unet":
        return ('unet = UNet2DConditionModel.from_pretrained(BASE, subfolder="unet")\n'
                'unet.load_state_dict(load_file(CHECKPOINT))  # your full UNet\n'
                'pipe = AnimateDiffPipeline.from_pretrained(BASE, unet=unet, motion_adapter=adapter)\n')
    return ('unet = UNet2DConditionModel.from_single_file(CHECKPOINT, config=BASE, subfolder="unet")\n'
            '# (a text encoder in your single file: load it too, e.g. StableDiffusionPipeline.from_single_file)\n'
            'pipe = AnimateDiffPipeline.from_pretrained(BASE, unet=unet, motion_adapter=adapter)\n')


def diffusers_readme(manifest: dict, sample: dict, sources: tuple[str, str], weights: str) -> str:
    """README of the ``diffusers`` export: the Python that samples a video as the service does."""
    fmt, sha = manifest["checkpoint"]["format"], manifest["checkpoint"]["sha256"]
    scheduler_cls, overrides = SCHEDULERS["ddim"]
    options = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    code = (
        "import torch\n"
        "from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel\n"
        "from diffusers.utils import export_to_video\n"
        "from safetensors.torch import load_file\n\n"
        f"BASE = {portable(sources[0])!r}\n"
        f"MOTION = {portable(sources[1])!r}\n"
        f"CHECKPOINT = {file_names(manifest)['checkpoint']!r}  # your upload ({fmt}, sha256 {sha[:12]}...)\n"
        'EXPORT = "."  # this directory, unzipped\n\n'
        "adapter = MotionAdapter.from_pretrained(MOTION)\n"
        + _load_checkpoint_code(fmt) +
        f'pipe.load_lora_weights(EXPORT, weight_name={weights!r}, adapter_name="spatial")\n'
        f"pipe.scheduler = {scheduler_cls.__name__}.from_config(pipe.scheduler.config, {options})\n"
        f"frames = pipe(prompt={sample['prompt']!r}, num_frames={sample['num_frames']}, height={sample['height']}, "
        f"width={sample['width']},\n"
        f"              num_inference_steps={sample['steps']}, guidance_scale={sample['guidance_scale']},\n"
        f"              generator=torch.Generator(\"cpu\").manual_seed({sample['seed']}), output_type=\"np\").frames[0]\n"
        'export_to_video(list(frames), "video.mp4", fps=8)\n'
    )
    return (
        "# Still-Moving Spatial Adapter (diffusers)\n\n"
        f"`{weights}`: the customization's Spatial Adapter as a diffusers LoRA (peft keys under `unet.`, its\n"
        "LoRA config in the file's `lora_adapter_metadata`), for `load_lora_weights` on an `AnimateDiffPipeline`.\n"
        "It goes over *your* customized T2I (the checkpoint you uploaded, not in this zip) inflated with the\n"
        "motion adapter the customization was made with. This samples the video the service samples for the\n"
        "same prompt, seed and settings (method `still-moving`, Motion Adapter scale 0, DDIM):\n\n"
        f"```python\n{code}```\n"
    )


def comfyui_readme(manifest: dict, sample: dict, names: dict[str, str]) -> str:
    """README of the ``comfyui`` bundle: where each file goes."""
    fmt = manifest["checkpoint"]["format"]
    preset = (manifest.get("model") or {}).get("preset")
    warning = "" if preset == "sd15" else (
        f"\n**This customization was made on the `{preset}` preset, not SD 1.5: its LoRA fits that preset's "
        "UNet only, and ComfyUI serves SD 1.5. The files are laid out as for an `sd15` customization.**\n")
    return (
        "# Still-Moving customization for ComfyUI (AnimateDiff-Evolved)\n"
        f"{warning}\n"
        f"1. Unzip into your ComfyUI directory: `{LORA_FOLDER}/{names['spatial']}` is the Spatial Adapter (kohya\n"
        "   layout).\n"
        f"2. Copy your uploaded checkpoint (not in this bundle) to `{CHECKPOINT_FOLDERS[fmt]}/{names['checkpoint']}`\n"
        f"   (sha256 `{manifest['checkpoint']['sha256']}`).\n"
        f"3. Put `{MOTION_MODULE}` ({MOTION_SOURCE}) in `{MOTION_FOLDER}/`"
        + ("" if fmt == "ldm" else f" and SD 1.5's `{SD15_CHECKPOINT}` in `models/checkpoints/`") + ".\n"
        "4. Install ComfyUI-AnimateDiff-Evolved, then load `workflow_api.json` (ComfyUI's API format; "
        "`POST /prompt` takes it as `prompt`).\n\n"
        f"`{MODELS_FILE}` lists every model file the workflow loads and where it comes from. ComfyUI's noise and\n"
        "samplers are not diffusers': the same seed gives another video than the service's (for the service's\n"
        "own frames, use the `diffusers` export).\n"
    )
