"""SourceMirrors: where the COCO archives and the model files can also be fetched from, saved once by name.

    SourceMirrors(dataset_mirrors=["https://mirror.example/coco"],
                  model_mirrors={"retinanet_coco": ["https://mirror.example/models/retinanet.onnx"]}).save("lab")

then `detect(..., sources_block="lab")`. The mirrors are tried, in order, before the official URLs; the
md5s stay the official ones, so a mirror serving other bytes fails verification and the next is tried.
Archives other than COCO's official ones (a cut-down set, a test set) take their own md5s here.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.blocks.core import Block
from pydantic import Field

from odbench.dataset import OFFICIAL_COCO_VAL2017, ArchiveSource


class SourceMirrors(Block):
    """Mirror URLs of the COCO archives and of each model, tried in order before the official URLs."""

    _block_type_name = "Source Mirrors"
    _block_type_slug = "source-mirrors"
    _description = "Mirrors of the COCO val2017 archives and of the model files, tried before the official URLs."

    dataset_mirrors: list[str] = Field(
        default_factory=list,
        description="Folder URLs each holding val2017.zip and annotations_trainval2017.zip, tried in order.")
    model_mirrors: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model name (as in model_name; retinanet and retinanet_coco are one model) -> URLs of its file.")
    images_md5: str | None = Field(
        default=None, description="md5 of the images archive the mirrors serve, when it is not COCO's official one.")
    annotations_md5: str | None = Field(
        default=None, description="md5 of the annotations archive the mirrors serve, when not COCO's official one.")

    def archives(self, mirrors: Sequence[str] | None = None) -> ArchiveSource:
        """The archives from `mirrors` (default: this block's), then, for COCO's official archives, from the
        COCO server. With md5s of other archives set, only the mirrors serve them: the official server's
        members would pass their CRC checks yet be other data."""
        bases = list(self.dataset_mirrors if mirrors is None else mirrors)
        if not (self.images_md5 or self.annotations_md5):
            return OFFICIAL_COCO_VAL2017.with_mirrors(bases)
        if not (self.images_md5 and self.annotations_md5 and bases):
            raise ValueError(f"SourceMirrors {self._block_document_name or ''}: images_md5 and annotations_md5 "
                             "describe archives other than COCO's; set both, and the dataset_mirrors that serve them")
        mirrored = OFFICIAL_COCO_VAL2017.with_mirrors(bases)  # the official file names at each mirror
        return ArchiveSource(mirrored.images_urls[:len(bases)], self.images_md5,
                             mirrored.annotations_urls[:len(bases)], self.annotations_md5)

    def for_model(self, spec_name: str) -> list[str]:
        """The mirrors of one model (by its registry name)."""
        from odbench.models import get_spec

        return [url for name, urls in self.model_mirrors.items() if get_spec(name).name == spec_name for url in urls]
