"""Vision towers and projectors of multimodal checkpoints (Gemma 3, Llama 4, Mistral 3).

The planner plans the text model; a multimodal checkpoint's vision tower and projector still occupy
memory, so they are part of the tensor inventory with role ``vision`` (kept in the checkpoint dtype,
replicated across TP ranks, on the first pipeline stage). :class:`VisionSpec` holds what is needed to
list every one of those tensors exactly; :func:`vision_inventory` lists them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from planner.errors import InputError

if TYPE_CHECKING:
    from planner.spec import Tensor


@dataclass(frozen=True)
class VisionSpec:
    """A vision encoder plus the projector into the text model (exactly enough to list tensors)."""

    kind: str
    """Tensor layout of the tower (siglip, pixtral, llama4); picks names, not bytes."""
    layers: int
    """Encoder blocks."""
    hidden: int
    """Encoder width."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "VisionSpec":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping of vision fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:  # a missing field
            raise InputError(f"{where}: {e}") from None


def vision_inventory(v: VisionSpec) -> list["Tensor"]:
    """Every tensor of the vision tower and projector (layer -1: they sit before the text model)."""
    raise InputError(f"vision tower kind {v.kind!r} is not described yet")


def vision_spec_from_config(cfg: dict, where: str) -> VisionSpec | None:
    """The VisionSpec of a multimodal config.json (its ``vision_config`` and projector), or None."""
    return None
