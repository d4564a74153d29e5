"""Anonymizer generator speed: one LoRA training step (the recipe's learnable_layers, only LoRA trainable) against
one full-UNet fine-tuning step (every UNet weight trainable) on the same model and input, their peak memory, and
inference images/s of the stock StableDiffusionInpaintPipeline with the LoRA loaded.

The step is the generator's training step without the optional parts: VAE-encode the crop and the masked crop,
noise the latent at a fixed timestep, let the inpainting UNet predict, diffusion MSE on the prediction, x0 from
it decoded by the (frozen) VAE, composited into the region, L1 against the crop (the recipe's self-reconstruction
warm-up). Both variants share one UNet: the full variant runs with the adapter disabled, so it computes exactly
the base UNet. Figures are medians over interleaved repeats and ratios measured in one run (shared, noisy machines).

Models (the label says which one the numbers are for):
  default        the embedded tiny random base (training.anonymizer.tiny_base), written to a temp dir
  --model-dir D  a diffusers SD2-inpainting folder (real weights; loaded with from_pretrained)
  --full-size    without --model-dir: random weights in SD2-inpainting's exact architecture (UNet 865M params,
                 its VAE and a 23-layer 1024-wide CLIP text encoder), built in memory: timing and memory do not
                 depend on the weights' values. Default resolution 512.

Peak memory: CUDA: torch.cuda.max_memory_allocated over two steps (second one with the optimizer state in
place), after the other variant's gradients and optimizer state are freed; also given above the frozen model's
own footprint. CPU: RSS, sampled every millisecond from /proc/self/statm during two steps, minus RSS just before
them, each variant in a fresh child process (glibc keeps freed memory, so in one process the second variant
would reuse the first one's pages). tracemalloc is not used: it only sees Python's allocator, not torch's.

    .venv/bin/python bench/anonymizer.py                                  # tiny base, CPU, 64 px
    .venv/bin/python bench/anonymizer.py --device cuda --full-size        # SD2-shaped random, 512 px, fp16 autocast
    .venv/bin/python bench/anonymizer.py --device cuda --model-dir weights/stable-diffusion-2-inpainting
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from training.anonymizer.generator import (  # noqa: E402
    InpaintComponents,
    activate_adapter,
    add_lora,
    enable_memory_efficient_attention,
    encode_prompts,
    load_inpaint_components,
    load_lora_into_pipeline,
    lora_parameters,
    lora_target_modules,
    save_lora,
)

RECIPE_LAYERS = ["unet.mid_block", "unet.up_blocks[-1]"]
PROMPT = "a photo of a person's face"
TIMESTEP = 500
LR = {"lora": 1e-4, "full": 1e-5}  # params.yaml lr.generator for LoRA; full fine-tuning needs a smaller one
GRAD_CLIP = 1.0

# stabilityai/stable-diffusion-2-inpainting's component configs (unet/, vae/, text_encoder/ config.json)
SD2_UNET = dict(
    sample_size=64, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
SD2_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                hidden_act="gelu", projection_dim=512, max_position_embeddings=77, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ models


def tokenizer_dir(tmp: Path) -> Path:
    from training.anonymizer.clip_vocab import SETUP_HINT, clip_tokenizer_files, find_clip_bpe_source

    source = find_clip_bpe_source(ROOT)
    if source is None or not source.is_file():
        sys.exit(f"bench/anonymizer.py: CLIP BPE vocabulary not provisioned: {SETUP_HINT}")
    return clip_tokenizer_files(source, tmp / "clip_tokenizer")


def sd2_shaped_pipeline(tok_dir: Path, seed: int = 0):
    """SD2-inpainting's architecture with random weights (see the module docstring)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from training.anonymizer.clip_vocab import VOCAB_SIZE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD2_UNET)
        vae = AutoencoderKL(**SD2_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, **SD2_TEXT))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder,
                                          tokenizer=CLIPTokenizer.from_pretrained(tok_dir), unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def components_of(pipe, device: torch.device) -> InpaintComponents:
    from diffusers import DDPMScheduler

    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.to(device)
    pipe.vae.eval()
    pipe.text_encoder.eval()
    return InpaintComponents("sd2", pipe.unet, pipe.vae, (pipe.text_encoder,), (pipe.tokenizer,),
                             DDPMScheduler.from_config(pipe.scheduler.config), torch.float32, device, True)


# ------------------------------------------------------------------------------------------------ the step


class StepBench:
    def __init__(self, comps: InpaintComponents, resolution: int, batch: int, rank: int, amp: bool):
        self.c, self.device, self.amp = comps, comps.device, amp
        unet = comps.unet
        enable_memory_efficient_attention(unet, enable_xformers=False)  # SDPA for both: same attention kernels
        self.targets = lora_target_modules(unet, RECIPE_LAYERS)
        add_lora(unet, self.targets, rank=rank, alpha=float(rank))
        unet.train()
        self.lora = lora_parameters(unet)
        lora_ids = {id(p) for p in self.lora}
        self.base = [p for p in unet.parameters() if id(p) not in lora_ids]
        self.params = {"lora": self.lora, "full": self.base}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

        g = torch.Generator().manual_seed(0)
        # A smooth random image: content does not change the cost, and a smooth one keeps the VAE's numbers tame.
        low = torch.rand(batch, 3, max(2, resolution // 8), max(2, resolution // 8), generator=g)
        self.x = (F.interpolate(low, size=(resolution, resolution), mode="bicubic", align_corners=False)
                  .clamp(0, 1) * 2 - 1).to(self.device)
        mask = torch.zeros(batch, 1, resolution, resolution)
        q = resolution // 4
        mask[..., q:resolution - q, q:resolution - q] = 1.0
        self.mask = mask.to(self.device)
        latent = resolution // comps.vae_scale_factor
        self.noise = torch.randn(batch, 4, latent, latent, generator=g).to(self.device)
        self.t = torch.full((batch,), TIMESTEP, dtype=torch.long, device=self.device)
        self.mask_latent = F.interpolate(self.mask, size=(latent, latent), mode="nearest")
        hidden, _ = encode_prompts(comps, [PROMPT] * batch)
        self.hidden = hidden

    def select(self, variant: str) -> None:
        unet = self.c.unet
        if variant == "lora":
            unet.enable_adapters()
            activate_adapter(unet, "default")
        else:
            unet.disable_adapters()
            for p in self.lora:
                p.requires_grad_(False)
            for p in self.base:
                p.requires_grad_(True)

    def optimizer(self, variant: str) -> torch.optim.Optimizer:
        if variant not in self.opts:
            self.opts[variant] = torch.optim.AdamW(self.params[variant], lr=LR[variant])
        return self.opts[variant]

    def free(self) -> None:
        """Drop gradients and optimizer state (memory probes start from the frozen model alone)."""
        self.opts.clear()
        for p in self.c.unet.parameters():
            p.grad = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step(self, variant: str) -> float:
        c, sf = self.c, self.c.vae.config.scaling_factor
        self.select(variant)
        opt = self.optimizer(variant)
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            latents = c.vae.encode(self.x).latent_dist.mode() * sf
            masked = c.vae.encode(self.x * (1 - self.mask)).latent_dist.mode() * sf
        latents, masked = latents.float(), masked.float()
        sched = c.noise_scheduler
        noisy = sched.add_noise(latents, self.noise, self.t)
        abar = sched.alphas_cumprod.to(self.device)[self.t].view(-1, 1, 1, 1)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            pred = c.unet(torch.cat([noisy, self.mask_latent, masked], dim=1), self.t,
                          encoder_hidden_states=self.hidden).sample.float()
            if sched.config.prediction_type == "v_prediction":
                target = sched.get_velocity(latents, self.noise, self.t)
                x0 = abar.sqrt() * noisy - (1 - abar).sqrt() * pred
            else:
                target = self.noise
                x0 = (noisy - (1 - abar).sqrt() * pred) / abar.sqrt()
            decoded = c.vae.decode(x0 / sf).sample.float()
            composite = decoded * self.mask + self.x * (1 - self.mask)
            loss = F.mse_loss(pred, target) + (composite - self.x).abs().mean()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(self.params[variant], GRAD_CLIP)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)  # torch releases the GIL inside its kernels, so this thread keeps sampling

    def __enter__(self) -> "RssPeak":
        self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def memory_probe(bench: StepBench, variant: str) -> dict:
    bench.free()
    bench.select(variant)
    dev = bench.device
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        bench.step(variant)
        bench.step(variant)  # the second step holds the optimizer state from the first
        peak = torch.cuda.max_memory_allocated(dev)
        out = {"peak_mb": peak / 2**20, "over_model_mb": (peak - before) / 2**20}
    else:
        before = _rss()
        with RssPeak() as rss:
            bench.step(variant)
            bench.step(variant)
        out = {"over_model_mb": (rss.peak - before) / 2**20, "rss_before_mb": before / 2**20}
    bench.free()
    return out


def cpu_memory_in_child(variant: str, model_dir: Path | None, argv: list[str]) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-probe", variant]
    if model_dir is not None and "--model-dir" not in argv:
        args += ["--model-dir", str(model_dir)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ inference


def inference(pipe, lora_dir: Path, device: torch.device, dtype: torch.dtype, resolution: int, batch: int,
              steps: int, repeats: int, guidance: float) -> dict:
    from PIL import Image

    load_lora_into_pipeline(pipe, lora_dir)
    pipe.to(device)
    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
    mask = np.zeros((resolution, resolution), np.uint8)
    q = resolution // 4
    mask[q:resolution - q, q:resolution - q] = 255
    mask_image = Image.fromarray(mask)

    def call() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=[PROMPT] * batch, image=[image] * batch, mask_image=[mask_image] * batch, height=resolution,
                 width=resolution, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator(device.type).manual_seed(0), output_type="np")
        _sync(device)
        return time.perf_counter() - start

    call()  # warm-up
    per_call = statistics.median(call() for _ in range(repeats))
    return {"steps": steps, "guidance_scale": guidance, "batch": batch, "s_per_call": round(per_call, 4),
            "images_per_s": round(batch / per_call, 3), "dtype": str(dtype).replace("torch.", "")}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--resolution", type=int, default=None, help="square crop side (default 64 on the tiny base, "
                                                                   "else 512)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the inference measurement")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed steps per variant")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (params.yaml lora_rank); alpha = rank")
    ap.add_argument("--model-dir", type=Path, default=None, help="diffusers SD2 inpainting folder")
    ap.add_argument("--full-size", action="store_true", help="without --model-dir: SD2's architecture, random weights")
    ap.add_argument("--precision", choices=("fp16", "fp32"), default=None,
                    help="CUDA: fp16 autocast + grad scaler on fp32 weights (default), or fp32; CPU always fp32")
    ap.add_argument("--guidance", type=float, default=7.5, help="inference classifier-free guidance (>1 doubles the "
                                                                 "UNet batch, as the stock pipeline does)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the bench machines are shared)")
    ap.add_argument("--memory-probe", choices=("lora", "full"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/anonymizer.py: --device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    amp = device.type == "cuda" and (args.precision or "fp16") == "fp16"

    with tempfile.TemporaryDirectory(prefix="bench-anonymizer-") as tmp_name:
        tmp = Path(tmp_name)
        pipe = None
        if args.model_dir is not None:
            model_dir = args.model_dir
        elif args.full_size:
            model_dir = None
            pipe = sd2_shaped_pipeline(tokenizer_dir(tmp))
        else:
            from training.anonymizer.tiny_base import write_tiny_inpaint_base

            model_dir = write_tiny_inpaint_base(tmp / "tiny-sd2-inpainting", tokenizer_dir(tmp))
        if pipe is None:
            comps = load_inpaint_components(model_dir, "sd2", device, torch.float32)
            label = ("embedded tiny random base (numbers not those of SD2)" if comps.tiny_random
                     else f"{model_dir} (real weights)")
        else:
            comps = components_of(pipe, device)
            label = "SD2-inpainting architecture, random weights (built in memory)"
        # SD2's own resolution for real or SD2-shaped models; the tiny base's 64 px otherwise (also when a child
        # process gets the tiny folder as --model-dir)
        resolution = args.resolution or (64 if comps.tiny_random and pipe is None else 512)
        bench = StepBench(comps, resolution, args.batch, args.rank, amp)

        if args.memory_probe:
            print(json.dumps(memory_probe(bench, args.memory_probe)))
            return

        for variant in ("lora", "full"):
            bench.step(variant)  # warm-up: allocator, kernels, optimizer state
        times: dict[str, list[float]] = {"lora": [], "full": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            for variant in ("lora", "full"):
                times[variant].append(bench.step(variant))
        lora_s, full_s = statistics.median(times["lora"]), statistics.median(times["full"])
        n_lora = sum(p.numel() for p in bench.lora)
        n_full = sum(p.numel() for p in bench.base)
        n_targets = len(bench.targets)

        if device.type == "cuda":
            memory = {v: memory_probe(bench, v) for v in ("lora", "full")}
            key, method = "peak_mb", "torch.cuda.max_memory_allocated over 2 steps (absolute; over_model_mb: above " \
                                     "the frozen model's allocation)"
        else:
            bench.free()
            child_argv = [*sys.argv[1:], "--resolution", str(resolution)]
            memory = {v: cpu_memory_in_child(v, model_dir, child_argv) for v in ("lora", "full")}
            key, method = "over_model_mb", "RSS peak (sampled every 1 ms, /proc/self/statm) during 2 steps minus RSS " \
                                           "before them, one fresh process per variant"

        lora_dir = save_lora(comps.unet, tmp / "lora").parent
        infer_dtype = torch.float16 if amp else torch.float32
        if pipe is None:
            from diffusers import StableDiffusionInpaintPipeline

            del bench, comps
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            # The deployment path: a stock pipeline from the folder, the LoRA file loaded into it.
            infer_pipe = StableDiffusionInpaintPipeline.from_pretrained(str(model_dir), safety_checker=None,
                                                                        requires_safety_checker=False,
                                                                        torch_dtype=infer_dtype)
        else:
            comps.unet.delete_adapters("default")  # the file brings the adapter back through load_lora_weights
            del bench
            infer_pipe = pipe
        infer = inference(infer_pipe, lora_dir, device, infer_dtype, resolution, args.batch, args.steps,
                          max(1, args.repeats // 2 + 1), args.guidance)

    result = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "model": label,
        "resolution": resolution, "batch": args.batch,
        "precision": "fp16 autocast, fp32 weights" if amp else "fp32",
        "lora": {"layers": RECIPE_LAYERS, "rank": args.rank, "alpha": float(args.rank),
                 "target_projections": n_targets},
        "trainable_params": {"lora": n_lora, "full": n_full},
        "step_s": {"lora": round(lora_s, 4), "full": round(full_s, 4)},
        "step_s_samples": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
        "ratio_time_full_over_lora": round(full_s / lora_s, 3),
        "memory_method": method,
        "memory_mb": {v: {k: round(x, 1) for k, x in m.items()} for v, m in memory.items()},
        "ratio_memory_full_over_lora": round(memory["full"][key] / memory["lora"][key], 3),
        "inference": infer,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
