"""Synthetic scenes of coloured rectangles whose relations are a function of what is drawn.

A scene is a few axis-aligned filled rectangles on a black background. An object's class IS its
colour (``PALETTE[label]``), and every unordered pair of objects carries exactly one relation,
decided by :func:`relate` from the two pixel boxes alone:

* ``inside``:  one box lies strictly within the other (the inner one is the subject);
* otherwise the pair is separated along its dominant axis (the larger gap, x on ties) and the
  subject is the left (or upper) one: ``near`` if that gap is at most ``near_px`` pixels, else
  ``left of`` (x) or ``above`` (y).

Apart from the one nested pair, objects never touch (gap >= 2 px), and nested objects are drawn
after their container with a 2 px margin, so every object's full box stays visible and the
relations can be read back from the pixels (the test suite does exactly that).

Clutter for a "synthetic" domain: grey distractor shapes drawn UNDER the objects, per-object
colour jitter and uniform pixel noise. While ``noise + color_jitter <= 0.25`` every pixel stays
closer to its true palette colour than to any other (palette colours are >= 0.866 apart).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PREDICATES",
    "PALETTE",
    "BACKGROUND",
    "DISTRACTOR",
    "Scene",
    "relate",
    "scene_relations",
    "generate_scene",
    "render_scene",
]

PREDICATES = ("left of", "above", "inside", "near")
LEFT_OF, ABOVE, INSIDE, NEAR = range(len(PREDICATES))

# Class colours: the corners of the RGB cube other than black (the background).
PALETTE = np.array(
    [
        [1.0, 0.0, 0.0],  # red
        [0.0, 1.0, 0.0],  # green
        [0.0, 0.0, 1.0],  # blue
        [1.0, 1.0, 0.0],  # yellow
        [1.0, 0.0, 1.0],  # magenta
        [0.0, 1.0, 1.0],  # cyan
        [1.0, 1.0, 1.0],  # white
    ],
    dtype=np.float32,
)
BACKGROUND = np.zeros(3, dtype=np.float32)
DISTRACTOR = np.full(3, 0.5, dtype=np.float32)

_MIN_GAP = 2  # pixels between objects that are not nested
_MARGIN = 2  # pixels between a nested object and its container's border
_PLACEMENT_TRIES = 100
_NESTED_PROBABILITY = 0.35


@dataclass(frozen=True)
class Scene:
    """One scene, in pixels.

    Attributes:
        labels: ``[N]`` int64 class indices (distinct within a scene).
        boxes: ``[N, 4]`` int64 ``(x0, y0, x1, y1)``, x1/y1 exclusive.
        relations: ``[T, 3]`` int64 rows ``(subject_index, object_index, predicate)``,
            ``T = N * (N - 1) / 2``.
        distractors: ``[D, 4]`` int64 grey clutter boxes (not objects).
    """

    labels: np.ndarray
    boxes: np.ndarray
    relations: np.ndarray
    distractors: np.ndarray


def _contains(outer: np.ndarray, inner: np.ndarray) -> bool:
    return bool(outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3])


def relate(a: np.ndarray, b: np.ndarray, near_px: float) -> tuple[int, int, int]:
    """The relation of an unordered pair of pixel boxes ``a`` (index 0) and ``b`` (index 1).

    Args:
        a, b: ``[4]`` ``(x0, y0, x1, y1)`` boxes that are either nested or disjoint.
        near_px: largest gap, in pixels, still called ``near``.

    Returns:
        ``(subject, object, predicate)`` with subject/object in ``{0, 1}`` (0 = ``a``).
    """
    if _contains(b, a):
        return 0, 1, INSIDE
    if _contains(a, b):
        return 1, 0, INSIDE
    gap_x = max(b[0] - a[2], a[0] - b[2])
    gap_y = max(b[1] - a[3], a[1] - b[3])
    if gap_x >= gap_y:
        subject, obj = (0, 1) if a[2] <= b[0] else (1, 0)
        return subject, obj, NEAR if gap_x <= near_px else LEFT_OF
    subject, obj = (0, 1) if a[3] <= b[1] else (1, 0)
    return subject, obj, NEAR if gap_y <= near_px else ABOVE


def scene_relations(boxes: np.ndarray, near_px: float) -> np.ndarray:
    """``[N, 4]`` pixel boxes -> ``[N*(N-1)/2, 3]`` int64 ``(subject, object, predicate)`` rows."""
    rows = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            s, o, predicate = relate(boxes[i], boxes[j], near_px)
            pair = (i, j)
            rows.append((pair[s], pair[o], predicate))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _random_box(rng: np.random.Generator, image_size: int, min_side: int, max_side: int) -> np.ndarray:
    w, h = rng.integers(min_side, max_side + 1, size=2)
    x0 = rng.integers(0, image_size - w + 1)
    y0 = rng.integers(0, image_size - h + 1)
    return np.array([x0, y0, x0 + w, y0 + h], dtype=np.int64)


def _apart(box: np.ndarray, others: list[np.ndarray]) -> bool:
    return all(
        max(o[0] - box[2], box[0] - o[2], o[1] - box[3], box[1] - o[3]) >= _MIN_GAP for o in others
    )


def _nested_box(rng: np.random.Generator, outer: np.ndarray, min_side: int) -> np.ndarray | None:
    room_w = int(outer[2] - outer[0]) - 2 * _MARGIN
    room_h = int(outer[3] - outer[1]) - 2 * _MARGIN
    # Keep the inner box clearly smaller so the container's border stays visible all round.
    if min(room_w, room_h) - 1 < min_side:
        return None
    w = rng.integers(min_side, room_w)
    h = rng.integers(min_side, room_h)
    x0 = rng.integers(outer[0] + _MARGIN, outer[2] - _MARGIN - w + 1)
    y0 = rng.integers(outer[1] + _MARGIN, outer[3] - _MARGIN - h + 1)
    return np.array([x0, y0, x0 + w, y0 + h], dtype=np.int64)


def generate_scene(
    rng: np.random.Generator,
    *,
    image_size: int,
    num_classes: int,
    min_objects: int,
    max_objects: int,
    near_px: float,
    num_distractors: int = 0,
) -> Scene:
    """Draw one scene's layout (no pixels yet): objects, their relations, clutter.

    May return fewer than ``min_objects`` objects only if the image is too small to place them.
    """
    if num_classes > len(PALETTE):
        raise ValueError(f"the demo scenes have {len(PALETTE)} colours; NUM_CLASSES={num_classes} is too many")
    num_objects = int(rng.integers(min_objects, max_objects + 1))
    num_objects = min(num_objects, num_classes)
    min_side, max_side = max(3, image_size // 10), max(6, image_size * 2 // 5)
    nested = num_objects >= 2 and rng.random() < _NESTED_PROBABILITY

    boxes: list[np.ndarray] = []
    for _ in range(_PLACEMENT_TRIES):
        if len(boxes) == num_objects - int(nested):
            break
        box = _random_box(rng, image_size, min_side, max_side)
        if _apart(box, boxes):
            boxes.append(box)
    if nested and boxes:
        inner = _nested_box(rng, boxes[int(rng.integers(len(boxes)))], min_side=max(3, min_side // 2))
        if inner is not None:
            boxes.append(inner)

    box_array = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    labels = rng.choice(num_classes, size=len(boxes), replace=False).astype(np.int64)
    distractors = np.array(
        [_random_box(rng, image_size, 2, max(3, image_size // 6)) for _ in range(num_distractors)],
        dtype=np.int64,
    ).reshape(-1, 4)
    return Scene(labels, box_array, scene_relations(box_array, near_px), distractors)


def render_scene(
    scene: Scene,
    rng: np.random.Generator,
    *,
    image_size: int,
    noise: float = 0.0,
    color_jitter: float = 0.0,
) -> np.ndarray:
    """Paint a scene: ``[3, image_size, image_size]`` float32 in ``[0, 1]``.

    Distractors go first (objects cover them), then objects from the largest to the smallest,
    so a nested object is painted over its container.
    """
    image = np.empty((image_size, image_size, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for x0, y0, x1, y1 in scene.distractors:
        image[y0:y1, x0:x1] = DISTRACTOR
    areas = (scene.boxes[:, 2] - scene.boxes[:, 0]) * (scene.boxes[:, 3] - scene.boxes[:, 1])
    for index in np.argsort(-areas, kind="stable"):
        x0, y0, x1, y1 = scene.boxes[index]
        jitter = rng.uniform(-color_jitter, color_jitter, size=3) if color_jitter else 0.0
        image[y0:y1, x0:x1] = PALETTE[scene.labels[index]] + jitter
    if noise:
        image += rng.uniform(-noise, noise, size=image.shape).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return np.ascontiguousarray(image.transpose(2, 0, 1))
