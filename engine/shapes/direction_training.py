"""Does a far longer motion training make the base T2V follow the named direction? (#9's open bar, #15's travel.)

Resumes the committed motion adapter and trains it `--steps` more at the Motion Adapter budget's learning rate
(1e-3, `docs/motion-adapter-budget.json`), with the judge's motion check (every direction, 8 videos each) every
`--eval-every` steps. The committed world is not changed: the run's adapter is written under `--workdir` and its
checks to `--report`, whichever way they come out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine.shapes import save
from engine.shapes.paths import ROOT
from engine.shapes.train_motion import motion_check, train_motion


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--per-direction", type=int, default=8)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, default=Path("docs/direction-training.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts, judge = save.load_base(ROOT), save.load_judge(ROOT)
    from diffusers import UNetMotionModel

    before = motion_check(parts, UNetMotionModel.from_unet2d(parts["unet"], parts["motion_adapter"]).eval(), judge,
                         per_direction=args.per_direction) | {"step": 0}
    print(f"[direction] committed adapter: {before}", flush=True)
    report = {"settings": vars(args) | {"workdir": str(args.workdir), "report": str(args.report)},
              "committed": before}

    def write(checks: list) -> None:
        args.report.write_text(json.dumps(report | {"checks": checks}, indent=1, default=float) + "\n")

    adapter, metrics = train_motion(parts, steps=args.steps, lr=args.lr, judge=judge, eval_every=args.eval_every,
                                    start=parts.pop("motion_adapter"), check_kwargs={"per_direction": args.per_direction},
                                    on_check=write)
    save.save_motion_adapter(adapter, args.workdir)
    report |= {"seconds": metrics["seconds"], "loss_curve": metrics["loss_curve"]}
    write(metrics["motion_checks"])


if __name__ == "__main__":
    main()
