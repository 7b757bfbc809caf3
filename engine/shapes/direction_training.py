"""Does a far longer motion training make the base T2V follow the named direction? (#9's open bar, #15's travel.)

Resumes the committed motion adapter and trains it `--steps` more at the Motion Adapter budget's learning rate
(1e-3, `docs/motion-adapter-budget.json`), with the judge's motion check (every direction, 8 videos each) every
`--eval-every` steps. The committed world is not changed: the run's adapter is written under `--workdir` and its
checks to `--report`, whichever way they come out.

`--domain-rank r` trains a domain adapter beside it: a rank-r LoRA on the T2I's cross-attention keys and values
(`DOMAIN_TARGETS`, the one way text enters the per-frame features), so that the features can carry the direction
word the stills never showed; it is written to `--workdir`/domain-adapter as diffusers LoRA weights. `--t-min t`
trains only the timesteps from t on, where the word can matter at all (`engine.shapes.direction_leak`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig

from engine import adapters
from engine.shapes import save
from engine.shapes.paths import ROOT
from engine.shapes.train_motion import motion_check, train_motion

DOMAIN_TARGETS = rf"{adapters.SPATIAL_BLOCKS}\.attn2\.(?:to_k|to_v)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--per-direction", type=int, default=8)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, default=Path("docs/direction-training.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="videos per step")
    parser.add_argument("--t-min", type=int, default=0, help="train timesteps [t_min, 1000) only")
    parser.add_argument("--domain-rank", type=int, default=0, help="0: motion modules only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts, judge = save.load_base(ROOT), save.load_judge(ROOT)
    from diffusers import UNetMotionModel

    before = motion_check(parts, UNetMotionModel.from_unet2d(parts["unet"], parts["motion_adapter"]).eval(), judge,
                         per_direction=args.per_direction) | {"step": 0}
    print(f"[direction] committed adapter: {before}", flush=True)
    report = {"settings": vars(args) | {"workdir": str(args.workdir), "report": str(args.report)},
              "committed": before}

    domain = None if not args.domain_rank else LoraConfig(
        r=args.domain_rank, lora_alpha=args.domain_rank, target_modules=DOMAIN_TARGETS)

    def write(checks: list) -> None:
        args.report.write_text(json.dumps(report | {"checks": checks}, indent=1, default=float) + "\n")

    adapter, metrics = train_motion(parts, steps=args.steps, batch=args.batch, lr=args.lr, judge=judge,
                                    eval_every=args.eval_every, start=parts.pop("motion_adapter"),
                                    check_kwargs={"per_direction": args.per_direction}, on_check=write, domain=domain,
                                    t_min=args.t_min)
    save.save_motion_adapter(adapter, args.workdir)
    if domain is not None:
        save.save_domain_adapter(metrics["domain_lora"], args.workdir)
    report |= {"seconds": metrics["seconds"], "loss_curve": metrics["loss_curve"]}
    write(metrics["motion_checks"])


if __name__ == "__main__":
    main()
