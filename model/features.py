"""Feature containers passed between the encoders, the heads and the stores."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class TextFeatures:
    sentence: Tensor  # [Nt, D] EOT feature
    words: Tensor  # [Nt, Nw, D] every token's feature (SOT and EOT included)
    word_mask: Tensor  # [Nt, Nw] bool, False on padding

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def __getitem__(self, index: slice) -> TextFeatures:
        return TextFeatures(self.sentence[index], self.words[index], self.word_mask[index])


@dataclass(frozen=True)
class VideoFeatures:
    frames: Tensor  # [Nv, F, D] frame features V (after the temporal transformer, if any)
    frame_mask: Tensor  # [Nv, F] bool, False on padding

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index: slice) -> VideoFeatures:
        return VideoFeatures(self.frames[index], self.frame_mask[index])
