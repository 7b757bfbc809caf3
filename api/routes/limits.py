"""``GET /limits``: what this deployment serves and the largest jobs it accepts (`common.presets`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from api.deps import OwnerDep, SettingsDep
from api.inputs import control_types
from common.schemas import LimitsView

router = APIRouter(tags=["limits"])


@router.get("/limits", response_model=LimitsView, summary="The served preset: defaults, frame positions, cost limits")
def limits(_owner: OwnerDep, settings: SettingsDep) -> LimitsView:
    preset = settings.preset()
    facts = asdict(preset)
    sizes = facts.pop("train_sizes")
    return LimitsView(preset=settings.model_preset, **facts,
                      train_sizes=None if sizes is None else [dict(zip(("height", "width", "num_frames"), s))
                                                              for s in sizes],
                      controlnets=sorted(settings.controlnets()), control_types=control_types(settings),
                      motion_loras=settings.motion_loras())
