"""A classical detector of pixelated (mosaic) areas: flat blocks whose edges lie on a regular grid.

How it works (deterministic, numpy only):

1. Luma differences between horizontal and vertical neighbours, clipped to 32 so one strong natural edge
   cannot outweigh a grid.
2. The frame is covered by overlapping square tiles (32, 64 and 128 px, stride a quarter tile). In each
   tile the column profile of horizontal differences is folded modulo every candidate block width
   b in 4..40 (at least three grid lines must fit in the tile). A tile is mosaic-like along x when, for
   some b, one residue (the grid line position) carries the energy: its mean difference is at least
   `min_edge` grey levels, at least `ratio` times the mean of all other residues, at least `ratio` times
   the second strongest residue (this rejects multiples of the true block size), and at least
   three quarters of the grid lines in the tile carry an edge. The largest such b wins (divisors of the
   true size pass too). The same is done along y with the row profile; both must pass (x and y may have
   different block sizes: Lada's `rect_avg` mosaic uses rectangular blocks).
3. Passing tiles are merged into connected areas; each area's box is snapped to its grid and refined by
   growing/shrinking one block row/column at a time while the strip looks like mosaic (flat inside,
   edges on its grid lines).

What it can do (measured while writing it): find pixelation with blocks of 4-40 px, square or rectangular
(`square_mid`, `square_avg`, `rect_avg` of `assets.mosaic`), on any grid offset, on clean frames and after
H.264 encoding (4:4:4 and 4:2:0, CRF 18-28): boxes with IoU 0.88-1.0 against the truth for blocks of
5-20 px over a photo (astronaut), a face (carphone) and random texture. No detection on scikit-image's
astronaut, coffee, chelsea, rocket, camera, brick and grass, on random noise, smooth gradients, or on 40
frames of each sample video (carphone, bikes, bigbuckbunny, astronaut_zoom, plates_pan). About 20 ms for
a 320x240 frame and 130 ms for 1280x720 on one CPU core.

Limits (by construction):
- Areas smaller than about three blocks plus a tile (32 px for b <= 10, 64 px for b <= 21, 128 px for
  larger blocks) in either direction are missed.
- Mosaic over content whose block averages barely differ (neighbouring blocks within ~`min_edge` grey
  levels: large `avg` blocks over fine noise, a flat cheek) has too few grid edges and is missed there;
  the box may then cover only part of the region (20-px average blocks over pure noise: not found).
- Feathered mosaic edges (a blend of mosaic and original) are not flat: the box grows or shrinks by up to
  about a block there.
- Heavy compression (blur, ringing, deblocking across block edges, chroma subsampling) and rescaling of
  the video after pixelation (block edges no longer on whole pixels) weaken the flat/edge contrast; blocks
  smaller than ~6 px rarely survive a resize.
- Man-made periodic patterns aligned on both axes (tiled walls, checkerboards, window grids, pixel-art,
  screen recordings of UIs) look exactly like a mosaic and are reported.
- Blurred (not pixelated) censoring is not detected.
For anything it gets wrong, give the boxes in a `<clip>.coco.json` sidecar instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from assets.detect import Detection

CLIP = 32.0  # differences are clipped here so a single strong natural edge cannot outweigh a grid


@dataclass(frozen=True)
class Grid:
    bx: int
    ox: int  # x of one vertical grid line (block boundary) modulo bx
    by: int
    oy: int


@dataclass(frozen=True)
class MosaicBox:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    grid: Grid
    score: float  # fraction of the box's blocks that look like mosaic blocks


def _luma(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame.astype(np.float32)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)


class GridMosaicDetector:
    """`detector(frame_rgb, index) -> [Detection("mosaic", box, score)]`, the interface of `assets.detect`."""

    kind = "mosaic"

    def __init__(self, min_block: int = 4, max_block: int = 40, min_edge: float = 3.0, ratio: float = 4.0,
                 tiles: tuple[int, ...] = (32, 64, 128), min_side: int = 16):
        self.min_block, self.max_block = min_block, max_block
        self.min_edge, self.ratio = min_edge, ratio
        self.tiles = tiles
        self.min_side = min_side

    def __call__(self, frame: np.ndarray, index: int = 0) -> list[Detection]:
        return [Detection(self.kind, tuple(float(v) for v in m.box), m.score) for m in self.find(frame)]

    # -- step 2: per tile, the grid along one axis ----------------------------------------------------------
    def _axis_grid(self, profile: np.ndarray, starts: np.ndarray, tile: int):
        """profile: (n_rows_tiles, n_positions) summed |diff| per boundary position over the tile's rows,
        already divided by the tile's height (mean per boundary). Returns per tile (b, offset) or (0, 0)."""
        n_r = profile.shape[0]
        n_c = len(starts)
        positions = tile - 1  # boundaries between the tile's columns: absolute position start + j + 1
        idx = starts[:, None] + np.arange(positions)[None, :]
        hx = profile[:, idx]  # (n_r, n_c, positions)
        best_b = np.zeros((n_r, n_c), dtype=np.int32)
        best_o = np.zeros((n_r, n_c), dtype=np.int32)
        for b in range(self.min_block, min(self.max_block, positions // 3) + 1):
            lines = positions // b
            folded = hx[..., : lines * b].reshape(n_r, n_c, lines, b)
            res = folded.mean(axis=2)  # (n_r, n_c, b): mean edge strength per residue
            order = np.sort(res, axis=-1)
            top, second = order[..., -1], order[..., -2]
            top_arg = res.argmax(axis=-1)
            others = (res.sum(axis=-1) - top) / (b - 1)
            line_vals = np.take_along_axis(folded, top_arg[..., None, None], axis=-1)[..., 0]  # (n_r, n_c, lines)
            strong_lines = (line_vals >= self.min_edge).sum(axis=-1)
            ok = (
                (top >= self.min_edge)
                & (top >= self.ratio * np.maximum(others, 0.25))
                & (top >= self.ratio * np.maximum(second, 0.25))
                & (strong_lines >= np.maximum(3, np.ceil(0.75 * lines)))
            )
            best_b = np.where(ok, b, best_b)  # larger b overwrite smaller: the largest passing b wins
            offset = (starts[None, :] + 1 + top_arg) % b
            best_o = np.where(ok, offset, best_o)
        return best_b, best_o

    def tile_votes(self, gray: np.ndarray):
        """Boolean map of pixels covered by mosaic-like tiles, and the grids voted for."""
        h, w = gray.shape
        dx = np.minimum(np.abs(np.diff(gray, axis=1)), CLIP)  # (h, w-1); column j = boundary at x = j + 1
        dy = np.minimum(np.abs(np.diff(gray, axis=0)), CLIP)  # (h-1, w)
        cx = np.vstack([np.zeros((1, w - 1), np.float32), np.cumsum(dx, axis=0, dtype=np.float32)])
        cy = np.hstack([np.zeros((h - 1, 1), np.float32), np.cumsum(dy, axis=1, dtype=np.float32)])
        covered = np.zeros((h, w), dtype=bool)
        votes: list[tuple[Grid, tuple[int, int, int, int]]] = []
        for tile in self.tiles:
            if tile > min(h, w):
                continue
            stride = max(4, tile // 4)
            rs = np.unique(np.append(np.arange(0, h - tile + 1, stride), h - tile))
            cs = np.unique(np.append(np.arange(0, w - tile + 1, stride), w - tile))
            # x: mean over the tile's rows of |dx| at each boundary position
            prof_x = (cx[rs + tile] - cx[rs]) / tile  # (n_r, w-1)
            bx, ox = self._axis_grid(prof_x, cs, tile)
            # y: the same on the transposed problem (mean over the tile's columns of |dy|)
            prof_y = ((cy[:, cs + tile] - cy[:, cs]) / tile).T  # (n_c, h-1)
            by, oy = self._axis_grid(prof_y, rs, tile)  # (n_c, n_r)
            by, oy = by.T, oy.T
            hit = (bx > 0) & (by > 0)
            for i, j in zip(*np.nonzero(hit)):
                r, c = int(rs[i]), int(cs[j])
                covered[r : r + tile, c : c + tile] = True
                votes.append((Grid(int(bx[i, j]), int(ox[i, j]), int(by[i, j]), int(oy[i, j])), (c, r, c + tile, r + tile)))
        return covered, votes, dx, dy

    # -- step 3: boxes ------------------------------------------------------------------------------------
    def _strip_is_mosaic(self, dx, dy, x0, y0, x1, y1, g: Grid) -> bool:
        """Flat inside, edges on the grid lines that cross the strip."""
        h, w = dy.shape[0] + 1, dx.shape[1] + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return False
        # boundaries strictly inside the strip
        xs = np.arange(x0 + 1, x1)  # vertical boundaries at x (dx column x-1)
        ys = np.arange(y0 + 1, y1)
        on_x = (xs - g.ox) % g.bx == 0
        on_y = (ys - g.oy) % g.by == 0
        px = dx[y0:y1, xs - 1]  # (rows, len(xs))
        py = dy[ys - 1, x0:x1]  # (len(ys), cols)
        off = np.concatenate([px[:, ~on_x].ravel(), py[~on_y, :].ravel()])
        on = np.concatenate([px[:, on_x].ravel(), py[on_y, :].ravel()])
        if off.size == 0 or on.size == 0:
            return False
        return float(off.mean()) * self.ratio <= max(float(on.mean()), 1e-6) and float(on.mean()) >= self.min_edge * 0.5

    def _refine(self, dx, dy, box, g: Grid) -> tuple[int, int, int, int]:
        h, w = dy.shape[0] + 1, dx.shape[1] + 1
        x0, y0, x1, y1 = box

        def snap_down(v, b, o):
            return v - ((v - o) % b)

        def snap_up(v, b, o):
            return v + ((o - v) % b)

        x0, x1 = max(0, snap_down(x0, g.bx, g.ox)), min(w, snap_up(x1, g.bx, g.ox))
        y0, y1 = max(0, snap_down(y0, g.by, g.oy)), min(h, snap_up(y1, g.by, g.oy))
        # shrink while the outermost block strip is not mosaic (a tile may reach a little past the area)
        for _ in range(4):
            changed = False
            if x1 - x0 > 2 * g.bx and not self._strip_is_mosaic(dx, dy, x0, y0, x0 + g.bx, y1, g):
                x0, changed = snap_up(x0 + 1, g.bx, g.ox), True
            if x1 - x0 > 2 * g.bx and not self._strip_is_mosaic(dx, dy, x1 - g.bx, y0, x1, y1, g):
                x1, changed = snap_down(x1 - 1, g.bx, g.ox), True
            if y1 - y0 > 2 * g.by and not self._strip_is_mosaic(dx, dy, x0, y0, x1, y0 + g.by, g):
                y0, changed = snap_up(y0 + 1, g.by, g.oy), True
            if y1 - y0 > 2 * g.by and not self._strip_is_mosaic(dx, dy, x0, y1 - g.by, x1, y1, g):
                y1, changed = snap_down(y1 - 1, g.by, g.oy), True
            if not changed:
                break
        # grow while the next block strip outside is mosaic (tiles stop short of the area's edge)
        for _ in range(64):
            changed = False
            if x0 > 0 and self._strip_is_mosaic(dx, dy, x0 - g.bx, y0, x0 + 1, y1, g):
                x0, changed = max(0, x0 - g.bx), True
            if x1 < w and self._strip_is_mosaic(dx, dy, x1 - 1, y0, x1 + g.bx, y1, g):
                x1, changed = min(w, x1 + g.bx), True
            if y0 > 0 and self._strip_is_mosaic(dx, dy, x0, y0 - g.by, x1, y0 + 1, g):
                y0, changed = max(0, y0 - g.by), True
            if y1 < h and self._strip_is_mosaic(dx, dy, x0, y1 - 1, x1, y1 + g.by, g):
                y1, changed = min(h, y1 + g.by), True
            if not changed:
                break
        return int(x0), int(y0), int(x1), int(y1)

    def _block_score(self, dx, dy, box, g: Grid) -> float:
        """Fraction of the box's blocks that are flat inside (mean |diff| off the grid under min_edge / 2)."""
        x0, y0, x1, y1 = box
        flat = total = 0
        for by0 in range(y0, y1, g.by):
            for bx0 in range(x0, x1, g.bx):
                bx1, by1 = min(x1, bx0 + g.bx), min(y1, by0 + g.by)
                inner_x = dx[by0:by1, bx0 : bx1 - 1]
                inner_y = dy[by0 : by1 - 1, bx0:bx1]
                vals = np.concatenate([inner_x.ravel(), inner_y.ravel()])
                if vals.size == 0:
                    continue
                total += 1
                flat += float(vals.mean()) < self.min_edge * 0.5
        return flat / total if total else 0.0

    def find(self, frame: np.ndarray) -> list[MosaicBox]:
        gray = _luma(frame)
        covered, votes, dx, dy = self.tile_votes(gray)
        if not votes:
            return []
        n, labels = cv2.connectedComponents(covered.astype(np.uint8), connectivity=8)
        found: list[MosaicBox] = []
        for label in range(1, n):
            ys, xs = np.nonzero(labels == label)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            # the grid most tiles of this area voted for (ties: the larger block)
            counts: dict[Grid, int] = {}
            for grid, (c0, r0, c1, r1) in votes:
                if labels[(r0 + r1) // 2, (c0 + c1) // 2] == label:
                    counts[grid] = counts.get(grid, 0) + 1
            if not counts:
                continue
            grid = max(counts, key=lambda g: (counts[g], g.bx * g.by))
            box = self._refine(dx, dy, box, grid)
            if box[2] - box[0] < self.min_side or box[3] - box[1] < self.min_side:
                continue
            found.append(MosaicBox(box, grid, round(self._block_score(dx, dy, box, grid), 3)))
        return _merge(found)


def _merge(boxes: list[MosaicBox]) -> list[MosaicBox]:
    """Boxes that overlap after refinement describe one area: keep the larger."""
    from assets.tracks import iou

    kept: list[MosaicBox] = []
    for m in sorted(boxes, key=lambda m: -(m.box[2] - m.box[0]) * (m.box[3] - m.box[1])):
        if all(iou(m.box, k.box) < 0.3 and not _inside(m.box, k.box) for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: (m.box[1], m.box[0]))


def _inside(a, b) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


def detect_mosaic(frame: np.ndarray, **kwargs) -> list[MosaicBox]:
    """Pixelated areas of one RGB (or gray) uint8 frame."""
    return GridMosaicDetector(**kwargs).find(frame)
