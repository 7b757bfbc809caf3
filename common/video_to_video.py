"""Video-to-video's step arithmetic, shared by the API's limits and the engine (torch-free): an init video is
noised to `strength` and denoised over the last ``int(steps x strength)`` steps of the schedule (diffusers'
`get_timesteps`).

DDIM's and Euler's "linspace" spacing (what the engine samples with, `engine.models.SCHEDULERS`, for two steps or
more) ends at t=0, so a run that keeps one step keeps the t=0 step alone: the init video noised to nothing and
returned as it came. DPM++ ends above 0, and a single step is spaced "trailing" (t=999).
"""

from __future__ import annotations

ENDS_AT_ZERO = ("ddim", "euler")  # schedulers whose multi-step schedule's last timestep is 0


def init_steps(steps: int, strength: float) -> int:
    """How many denoising steps a video-to-video run takes."""
    return min(int(steps * strength), steps)


def init_problem(steps: int, strength: float, scheduler: str) -> str | None:
    """Why this video-to-video run would not change its init video (None when it does)."""
    kept = init_steps(steps, strength)
    if kept < 1:
        return f"init.strength={strength} x steps={steps} runs no denoising step (video-to-video denoises " \
               "int(steps x strength) steps)"
    if kept == 1 and steps > 1 and scheduler in ENDS_AT_ZERO:
        return f"init.strength={strength} x steps={steps} runs only the t=0 step of the {scheduler} schedule, " \
               "which returns the init video unchanged: raise steps or strength"
    return None
