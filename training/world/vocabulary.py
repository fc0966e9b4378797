"""The world's vocabulary: colours, shapes, textures, sizes, motions, and the
rule that holds some colour-shape-motion combinations out of training.

Held-out rule (recorded in every manifest, see `SPLIT_RULE`): a combination
(colour, shape, motion) is held out when

    (colour_index + 2 * shape_index + 3 * motion_index) % 5 == 0

with the indices of COLOURS, SHAPES and MOTIONS below. That holds out about a
fifth of the triples while every colour-shape, colour-motion and shape-motion
*pair* still occurs in training, so a held-out video tests recombination of
known attributes, not unknown words. In "train" and "val" videos every motion
phase of every object is a training triple; in "heldout" videos every object's
first-phase triple is held out (its later phases may be anything).
"""
from __future__ import annotations

from dataclasses import dataclass

# name -> RGB. Hues far apart, so a colour name is never a matter of taste.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (150, 60, 200),
    "white": (248, 248, 248),
    "black": (20, 20, 20),
}

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross")
PLURALS = {"disc": "discs", "square": "squares", "triangle": "triangles", "star": "stars", "ring": "rings", "cross": "crosses"}

TEXTURES = ("flat", "striped", "dotted")

# object radius as a fraction of min(height, width)
SIZES: dict[str, float] = {"small": 0.065, "medium": 0.09, "large": 0.125}

# Each motion's verb phrase is used verbatim in answers ("the red disc moves left").
MOTIONS = (
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "moves to the upper left",
    "moves to the upper right",
    "moves to the lower left",
    "moves to the lower right",
    "bounces",
    "stays still",
    "speeds up",
)

# unit direction (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "moves left": (-1.0, 0.0),
    "moves right": (1.0, 0.0),
    "moves up": (0.0, -1.0),
    "moves down": (0.0, 1.0),
    "moves to the upper left": (-0.7071, -0.7071),
    "moves to the upper right": (0.7071, -0.7071),
    "moves to the lower left": (-0.7071, 0.7071),
    "moves to the lower right": (0.7071, 0.7071),
}

# "What does it do after that?" for an object that keeps doing the same thing
CONTINUING: dict[str, str] = {
    **{m: "keeps " + m.replace("moves", "moving") for m in DIRECTIONS},
    "bounces": "keeps bouncing",
    "stays still": "stays still",
    "speeds up": "keeps speeding up",
}

SPLITS = ("train", "val", "heldout")
SPLIT_RULE = "held out iff (colour_index + 2*shape_index + 3*motion_index) % 5 == 0, indices into COLOURS, SHAPES, MOTIONS"


def is_heldout(colour: str, shape: str, motion: str) -> bool:
    """True when the (colour, shape, motion) triple is never shown in training."""
    c = list(COLOURS).index(colour)
    s = SHAPES.index(shape)
    m = MOTIONS.index(motion)
    return (c + 2 * s + 3 * m) % 5 == 0


def combos(heldout: bool) -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple on one side of the split."""
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if is_heldout(c, s, m) == heldout]


@dataclass(frozen=True)
class Appearance:
    colour: str
    shape: str
    texture: str
    size: str

    @property
    def name(self) -> str:
        """The full noun phrase: 'the red striped disc' (flat texture is not said)."""
        texture = "" if self.texture == "flat" else self.texture + " "
        return f"the {self.colour} {texture}{self.shape}"

    @property
    def short_name(self) -> str:
        return f"the {self.colour} {self.shape}"
