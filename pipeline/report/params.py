"""The report's settings (the config group `report`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.params import require


@dataclass
class ReportParams:
    """report/index.html (the `report` stage, or `ace3d report run_dir=...`).

    exemplars: looping clips per concept card (the members nearest the centroid).
    max_concepts: cards per (class, layer), in rank order.
    heatmap_videos: scoring videos per class shown with their voxel-importance maps.
    format: webp | gif (the animations). frame_ms: how long each frame shows.
    rank_by: the ranking a class's section leads with, `tcav` (the paper's), `causal` (causal
        importance) or `auto` (the one that holds under deletion: causal when its cross-fitted
        test holds, else TCAV); and the order of the cards (`auto`: causal where at least half
        the concepts tie at a TCAV score of 0 or 1, which the section then says first).
    class_pages: each class gets its own page (report/classes/) behind the index when the run
        has more classes than this; 0: always.
    concept_videos: also write each significant concept's exemplars, side by side, as an MP4
        (H.264 4:4:4) linked from its card.
    """

    exemplars: int = 3
    max_concepts: int = 12
    heatmap_videos: int = 2
    format: str = "webp"
    frame_ms: int = 125
    rank_by: str = "auto"
    class_pages: int = 8
    concept_videos: bool = False

    def check(self) -> None:
        for name in ("exemplars", "max_concepts", "heatmap_videos", "class_pages"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.format in ("webp", "gif"), "format", self.format, "must be webp or gif")
        require(
            self.frame_ms >= 10, "frame_ms", self.frame_ms, "must be >= 10 (milliseconds per frame)"
        )
        require(
            self.rank_by in ("auto", "tcav", "causal"),
            "rank_by",
            self.rank_by,
            "must be auto, tcav or causal",
        )
