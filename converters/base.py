"""The converter protocol every target format implements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..runtime.manifest import TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..devices import DeviceProfile
    from ..sdk.calibration import SampleSet
    from ..sdk.models import SourceModel

# Calibration past this many samples costs time and rarely moves int8 ranges.
MAX_CALIBRATION_SAMPLES = 512


class Converter(Protocol):
    """Exports a source model to one format and quantizes the result."""

    format: str

    def export(self, source: SourceModel, path: Path) -> None:
        """Write the fp32 artifact for ``source`` to ``path``.

        Raises:
            ConversionError: The exporter failed or cannot take this kind of source.
        """
        ...

    def quantize(
        self,
        fp32: Path,
        out: Path,
        *,
        precision: str,
        source: SourceModel,
        calib: SampleSet | None,
        profile: DeviceProfile,
    ) -> dict[str, object]:
        """Write ``fp32`` at ``precision`` to ``out``; return the recipe used (for the report)."""
        ...

    def io_specs(self, path: Path, source: SourceModel) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs of the artifact, named as the source names them."""
        ...
