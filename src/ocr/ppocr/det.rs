//! Text detection around the PP-OCRv5 DB (differentiable binarisation)
//! model: sizing and normalising the page for the network, and turning its
//! per-pixel text probability map into rotated text boxes. Owns the geometry
//! (connected components, convex hull, minimum-area rectangle, unclip).
//! Promises: pure functions, no panics on any input (empty maps, NaNs, maps
//! whose length does not match the stated size give no boxes), boxes in page
//! pixel coordinates with their long axis the one nearest horizontal.

use image::imageops::{self, FilterType};
use image::GrayImage;

/// A rotated rectangle. `w` runs along the direction `angle` (radians, in
/// `(-π/4, π/4]`, i.e. the axis nearest horizontal), `h` across it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotRect {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
    pub angle: f32,
}

impl RotRect {
    /// Corners in order top-left, top-right, bottom-right, bottom-left (for
    /// an unrotated rectangle in image coordinates, y down).
    pub fn corners(&self) -> [[f32; 2]; 4] {
        let (s, c) = self.angle.sin_cos();
        let (hw, hh) = (self.w / 2.0, self.h / 2.0);
        let at = |u: f32, v: f32| [self.cx + u * c - v * s, self.cy + u * s + v * c];
        [at(-hw, -hh), at(hw, -hh), at(hw, hh), at(-hw, hh)]
    }

    /// Axis-aligned bounds `(x0, y0, x1, y1)`.
    pub fn bounds(&self) -> (f32, f32, f32, f32) {
        let cs = self.corners();
        let mut b = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for [x, y] in cs {
            b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
        }
        b
    }

    /// The same rectangle in a coordinate system scaled by `sx`, `sy`
    /// (angles change when the scales differ, so the corners are rescaled
    /// and the rectangle refitted).
    pub fn scaled(&self, sx: f32, sy: f32) -> RotRect {
        if (sx - sy).abs() < 1e-6 {
            return RotRect {
                cx: self.cx * sx,
                cy: self.cy * sy,
                w: self.w * sx,
                h: self.h * sy,
                angle: self.angle,
            };
        }
        let pts: Vec<[f32; 2]> = self
            .corners()
            .iter()
            .map(|[x, y]| [x * sx, y * sy])
            .collect();
        min_area_rect(&pts).unwrap_or(*self)
    }
}

/// A detected text region: its rectangle (page pixels) and the mean text
/// probability inside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextBox {
    pub rect: RotRect,
    pub score: f32,
}

/// Knobs of the DB post-processing. Defaults are PaddleOCR's, except where
/// OCR.md gives a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbParams {
    /// Probability above which a pixel counts as text.
    pub thresh: f32,
    /// Minimum mean probability of a component to keep it.
    pub box_thresh: f32,
    /// Unclip: the shrunk text kernel is grown by `area * ratio / perimeter`
    /// on every side, undoing the shrink the model was trained with.
    pub unclip_ratio: f32,
    /// Components whose rectangle is thinner than this (map pixels) are noise.
    pub min_size: f32,
    /// At most this many components are considered (largest first), bounding
    /// the work on pathological maps.
    pub max_candidates: usize,
}

impl Default for DbParams {
    fn default() -> Self {
        Self {
            thresh: 0.3,
            box_thresh: 0.6,
            // PaddleOCR uses 1.5; on the handwriting dev set 1.2 read better
            // (CER 13.8% vs 14.2% before word correction): handwritten
            // boxes already carry loops that a larger margin only pads.
            unclip_ratio: 1.2,
            min_size: 3.0,
            max_candidates: 1000,
        }
    }
}

/// Network input size for a `width`×`height` page: the longer side scaled to
/// `limit` (enlarging at most 2×, since tiny images gain nothing from more),
/// both sides rounded to a multiple of 32 (the model downsamples 32×).
pub fn det_input_size(width: u32, height: u32, limit: u32) -> (u32, u32) {
    let long = width.max(height).max(1) as f32;
    let scale = (limit.max(32) as f32 / long).min(2.0);
    let r = |v: u32| (((v as f32 * scale) / 32.0).round() as u32).clamp(1, 1024) * 32;
    (r(width), r(height))
}

/// Resizes `page` to `size` and lays it out as a `1×3×H×W` tensor with the
/// ImageNet mean and deviation the detector was trained with (gray is
/// copied into all three channels).
pub fn det_tensor(page: &GrayImage, size: (u32, u32)) -> Vec<f32> {
    let resized = imageops::resize(page, size.0, size.1, FilterType::Triangle);
    let n = (size.0 * size.1) as usize;
    let mut out = vec![0f32; 3 * n];
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    for (c, chunk) in out.chunks_exact_mut(n).enumerate() {
        for (o, p) in chunk.iter_mut().zip(resized.as_raw()) {
            *o = (*p as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

/// DB post-processing: threshold `prob` (`width`×`height`, row-major),
/// label 8-connected components, fit a minimum-area rectangle to each,
/// score it by its mean probability, unclip it, and scale it by
/// `(sx, sy)` into page coordinates. Boxes come out unordered.
pub fn boxes_from_prob(
    prob: &[f32],
    width: usize,
    height: usize,
    params: &DbParams,
    sx: f32,
    sy: f32,
) -> Vec<TextBox> {
    if width == 0 || height == 0 || prob.len() != width * height {
        return Vec::new();
    }
    let mut comps = components(prob, width, height, params.thresh);
    // Largest first, so `max_candidates` drops specks rather than lines.
    comps.sort_by_key(|c| std::cmp::Reverse(c.pixels));
    comps.truncate(params.max_candidates);
    let mut out = Vec::new();
    for comp in comps {
        if comp.pixels < 4 {
            continue;
        }
        let score = (comp.prob_sum / comp.pixels as f64) as f32;
        if score.is_nan() || score < params.box_thresh {
            continue;
        }
        let Some(rect) = min_area_rect(&comp.extremes) else {
            continue;
        };
        if rect.w.min(rect.h) < params.min_size {
            continue;
        }
        let grown = unclip(&rect, params.unclip_ratio);
        if grown.w.min(grown.h) < params.min_size + 2.0 {
            continue;
        }
        out.push(TextBox {
            rect: grown.scaled(sx, sy),
            score,
        });
    }
    out
}

/// Grows a rectangle by `d = area * ratio / perimeter` on every side, the
/// offset PaddleOCR applies to a box polygon (for a rectangle, the offset
/// polygon's minimum-area rectangle is exactly `w + 2d` × `h + 2d`).
pub fn unclip(rect: &RotRect, ratio: f32) -> RotRect {
    let perimeter = 2.0 * (rect.w + rect.h);
    if perimeter.is_nan() || perimeter <= 0.0 || !ratio.is_finite() {
        return *rect;
    }
    let d = rect.w * rect.h * ratio / perimeter;
    RotRect {
        w: rect.w + 2.0 * d,
        h: rect.h + 2.0 * d,
        ..*rect
    }
}

struct Component {
    pixels: usize,
    prob_sum: f64,
    /// Leftmost and rightmost pixel centre of every row: their convex hull
    /// is the component's hull, at a fraction of the points.
    extremes: Vec<[f32; 2]>,
}

fn components(prob: &[f32], width: usize, height: usize, thresh: f32) -> Vec<Component> {
    let mut seen = vec![false; prob.len()];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    // Per-row (min x, max x) of the current component, keyed by row.
    let mut rows: Vec<(usize, usize, usize)> = Vec::new();
    for start in 0..prob.len() {
        // NaN probabilities count as background.
        if seen[start] || prob[start].is_nan() || prob[start] <= thresh {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        rows.clear();
        let mut pixels = 0usize;
        let mut prob_sum = 0f64;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            pixels += 1;
            prob_sum += prob[i] as f64;
            rows.push((y, x, x));
            let (x0, x1) = (x.saturating_sub(1), (x + 1).min(width - 1));
            let (y0, y1) = (y.saturating_sub(1), (y + 1).min(height - 1));
            for ny in y0..=y1 {
                for nx in x0..=x1 {
                    let j = ny * width + nx;
                    if !seen[j] && prob[j] > thresh {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        rows.sort_unstable();
        let mut extremes = Vec::new();
        let mut k = 0;
        while k < rows.len() {
            let y = rows[k].0;
            let (mut lo, mut hi) = (rows[k].1, rows[k].2);
            while k < rows.len() && rows[k].0 == y {
                lo = lo.min(rows[k].1);
                hi = hi.max(rows[k].2);
                k += 1;
            }
            extremes.push([lo as f32, y as f32]);
            if hi != lo {
                extremes.push([hi as f32, y as f32]);
            }
        }
        out.push(Component {
            pixels,
            prob_sum,
            extremes,
        });
    }
    out
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in a y-up
/// sense, without collinear points. Non-finite points are ignored.
pub fn convex_hull(points: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let mut p: Vec<[f32; 2]> = points
        .iter()
        .copied()
        .filter(|[x, y]| x.is_finite() && y.is_finite())
        .collect();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: [f32; 2], a: [f32; 2], b: [f32; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[f32; 2]> = Vec::with_capacity(2 * p.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f32; 2]>> = if pass == 0 {
            Box::new(p.iter())
        } else {
            Box::new(p.iter().rev())
        };
        for &q in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0
            {
                hull.pop();
            }
            hull.push(q);
        }
        hull.pop();
    }
    hull
}

/// Minimum-area enclosing rectangle of `points` (rotating calipers over the
/// hull edges), oriented so `w` lies along the axis nearest horizontal.
/// `None` for no finite point. One point or collinear points give a
/// degenerate (zero-width or zero-height) rectangle.
pub fn min_area_rect(points: &[[f32; 2]]) -> Option<RotRect> {
    let hull = convex_hull(points);
    match hull.len() {
        0 => return None,
        1 => {
            return Some(RotRect {
                cx: hull[0][0],
                cy: hull[0][1],
                w: 0.0,
                h: 0.0,
                angle: 0.0,
            })
        }
        _ => {}
    }
    let mut best: Option<(f32, RotRect)> = None;
    for i in 0..hull.len() {
        let a = hull[i];
        let b = hull[(i + 1) % hull.len()];
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = (dx * dx + dy * dy).sqrt();
        if len.is_nan() || len <= 0.0 {
            continue;
        }
        let (ux, uy) = (dx / len, dy / len);
        let (mut u0, mut u1, mut v0, mut v1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let u = p[0] * ux + p[1] * uy;
            let v = -p[0] * uy + p[1] * ux;
            u0 = u0.min(u);
            u1 = u1.max(u);
            v0 = v0.min(v);
            v1 = v1.max(v);
        }
        let area = (u1 - u0) * (v1 - v0);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (um, vm) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
            let rect = RotRect {
                cx: um * ux - vm * uy,
                cy: um * uy + vm * ux,
                w: u1 - u0,
                h: v1 - v0,
                angle: uy.atan2(ux),
            };
            best = Some((area, rect));
        }
    }
    best.map(|(_, r)| canonical(r))
}

/// Rotates the rectangle's frame by multiples of 90° until its angle is in
/// `(-π/4, π/4]`, swapping `w` and `h` on odd turns.
fn canonical(mut r: RotRect) -> RotRect {
    use std::f32::consts::{FRAC_PI_2, FRAC_PI_4};
    let mut guard = 0;
    while r.angle > FRAC_PI_4 && guard < 8 {
        r.angle -= FRAC_PI_2;
        std::mem::swap(&mut r.w, &mut r.h);
        guard += 1;
    }
    while r.angle <= -FRAC_PI_4 && guard < 16 {
        r.angle += FRAC_PI_2;
        std::mem::swap(&mut r.w, &mut r.h);
        guard += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with_rects(w: usize, h: usize, rects: &[(usize, usize, usize, usize)]) -> Vec<f32> {
        let mut m = vec![0.02f32; w * h];
        for &(x0, y0, x1, y1) in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    m[y * w + x] = 0.9;
                }
            }
        }
        m
    }

    #[test]
    fn input_size_is_multiple_of_32_and_bounded() {
        assert_eq!(det_input_size(1980, 1244, 960), (960, 608));
        let (w, h) = det_input_size(10, 5000, 960);
        assert_eq!((w % 32, h % 32), (0, 0));
        assert!(w >= 32 && h <= 992);
        assert_eq!(det_input_size(0, 0, 0), (32, 32));
        // Small images are enlarged at most 2×.
        assert_eq!(det_input_size(100, 50, 960), (192, 96));
    }

    #[test]
    fn two_rectangles_give_two_unclipped_boxes() {
        let m = map_with_rects(100, 60, &[(10, 10, 60, 20), (20, 40, 90, 48)]);
        let params = DbParams {
            unclip_ratio: 1.5,
            ..DbParams::default()
        };
        let mut boxes = boxes_from_prob(&m, 100, 60, &params, 1.0, 1.0);
        boxes.sort_by(|a, b| a.rect.cy.total_cmp(&b.rect.cy));
        assert_eq!(boxes.len(), 2);
        let r = boxes[0].rect;
        // Kernel pixel centres span 49×9; unclip d = 49*9*1.5/(2*58) ≈ 5.70.
        assert!(
            (r.cx - 34.5).abs() < 0.01 && (r.cy - 14.5).abs() < 0.01,
            "{r:?}"
        );
        assert!(
            (r.w - (49.0 + 11.4)).abs() < 0.1 && (r.h - (9.0 + 11.4)).abs() < 0.1,
            "{r:?}"
        );
        assert!(r.angle.abs() < 1e-4);
        assert!((boxes[0].score - 0.9).abs() < 1e-4);
        assert!((boxes[1].rect.cx - 54.5).abs() < 0.01);
    }

    #[test]
    fn boxes_are_scaled_to_page_coordinates() {
        let m = map_with_rects(100, 60, &[(10, 10, 60, 20)]);
        let b = boxes_from_prob(&m, 100, 60, &DbParams::default(), 2.0, 3.0);
        assert_eq!(b.len(), 1);
        assert!((b[0].rect.cx - 69.0).abs() < 0.01 && (b[0].rect.cy - 43.5).abs() < 0.01);
    }

    #[test]
    fn low_scores_specks_and_bad_maps_are_dropped() {
        let mut m = map_with_rects(50, 50, &[(5, 5, 40, 15)]);
        for v in m.iter_mut().filter(|v| **v > 0.5) {
            *v = 0.45; // above thresh, below box_thresh
        }
        m[45 * 50 + 45] = 0.99; // a one-pixel speck
        assert!(boxes_from_prob(&m, 50, 50, &DbParams::default(), 1.0, 1.0).is_empty());
        assert!(boxes_from_prob(&m, 49, 50, &DbParams::default(), 1.0, 1.0).is_empty());
        assert!(boxes_from_prob(&[], 0, 0, &DbParams::default(), 1.0, 1.0).is_empty());
        let nan = vec![f32::NAN; 100];
        assert!(boxes_from_prob(&nan, 10, 10, &DbParams::default(), 1.0, 1.0).is_empty());
    }

    #[test]
    fn min_area_rect_of_a_rotated_rectangle() {
        let truth = RotRect {
            cx: 50.0,
            cy: 40.0,
            w: 60.0,
            h: 10.0,
            angle: 0.2,
        };
        let mut pts = truth.corners().to_vec();
        pts.push([50.0, 40.0]);
        let r = min_area_rect(&pts).unwrap();
        assert!(
            (r.cx - 50.0).abs() < 1e-3 && (r.cy - 40.0).abs() < 1e-3,
            "{r:?}"
        );
        assert!(
            (r.w - 60.0).abs() < 1e-3 && (r.h - 10.0).abs() < 1e-3,
            "{r:?}"
        );
        assert!((r.angle - 0.2).abs() < 1e-4, "{r:?}");
        // A tall box keeps its long side vertical: w is the near-horizontal axis.
        let tall = min_area_rect(&[[0.0, 0.0], [10.0, 0.0], [10.0, 50.0], [0.0, 50.0]]).unwrap();
        assert!((tall.w - 10.0).abs() < 1e-4 && (tall.h - 50.0).abs() < 1e-4);
        assert!(min_area_rect(&[]).is_none());
        assert!(min_area_rect(&[[f32::NAN, 1.0]]).is_none());
    }

    #[test]
    fn unclip_grows_by_area_over_perimeter() {
        let r = RotRect {
            cx: 0.0,
            cy: 0.0,
            w: 100.0,
            h: 20.0,
            angle: 0.0,
        };
        let g = unclip(&r, 1.5);
        let d = 100.0 * 20.0 * 1.5 / 240.0;
        assert!((g.w - (100.0 + 2.0 * d)).abs() < 1e-4 && (g.h - (20.0 + 2.0 * d)).abs() < 1e-4);
        let zero = RotRect {
            w: 0.0,
            h: 0.0,
            ..r
        };
        assert_eq!(unclip(&zero, 1.5), zero);
    }

    #[test]
    fn skewed_line_gets_a_rotated_box() {
        let (w, h) = (200usize, 100usize);
        let mut m = vec![0.0f32; w * h];
        for x in 20..180 {
            let yc = 30.0 + (x as f32 - 20.0) * 0.15;
            for y in 0..h {
                if (y as f32 - yc).abs() <= 4.0 {
                    m[y * w + x] = 0.95;
                }
            }
        }
        let b = boxes_from_prob(&m, w, h, &DbParams::default(), 1.0, 1.0);
        assert_eq!(b.len(), 1);
        assert!(
            (b[0].rect.angle - 0.15f32.atan()).abs() < 0.02,
            "{:?}",
            b[0]
        );
    }
}
