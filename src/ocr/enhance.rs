//! Page enhancement for photographed and degraded pages, run by [`super::preprocess::prepare`]
//! before the engines read: perspective correction of a sheet photographed on a darker surface
//! ([`find_page_quad`], [`warp_quad`]), lighting correction (shadow removal by dividing by an
//! estimated background, then a contrast stretch: [`flatten_lighting`]), small-angle deskew
//! ([`estimate_skew`], [`rotate`]) and 3×3 median denoising ([`median3`]).
//!
//! Promises: pure functions on [`GrayImage`], ink dark on light paper; none panics on any
//! image (empty, 1×1, blank, all black); the detectors return `None` when unsure, and then the
//! page is left as it is: a scan or a flat page must never be warped or turned by mistake.
//! Which steps run by default is decided by measurement (OCR.md, "Page enhancement").

use image::GrayImage;

use super::preprocess::{otsu_threshold, resample};

/// Bilinear sample at `(x, y)` in pixel-centre coordinates; `fill` outside the image.
fn sample(src: &GrayImage, x: f32, y: f32, fill: u8) -> u8 {
    let (w, h) = (src.width() as i64, src.height() as i64);
    if !(x > -1.0 && y > -1.0 && x < w as f32 && y < h as f32) {
        return fill;
    }
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let raw = src.as_raw();
    // Neighbours outside the image count as `fill`, so edges fade into it smoothly.
    let px = |xx: i64, yy: i64| -> f32 {
        if xx < 0 || yy < 0 || xx >= w || yy >= h {
            f32::from(fill)
        } else {
            f32::from(raw[(yy * w + xx) as usize])
        }
    };
    let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
    let bottom = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
}

/// Turns the page content `degrees` counter-clockwise (as seen on screen) about its centre,
/// bilinear, growing the canvas so no corner is cut and filling the new area white.
pub fn rotate(src: &GrayImage, degrees: f32) -> GrayImage {
    let (w, h) = (src.width() as f32, src.height() as f32);
    if src.width() == 0 || src.height() == 0 || degrees == 0.0 {
        return src.clone();
    }
    let (s, c) = degrees.to_radians().sin_cos();
    // The small slack keeps float error (cos 90° is not exactly 0) from adding a column.
    let nw = (w * c.abs() + h * s.abs() - 1e-3).ceil().max(1.0) as u32;
    let nh = (w * s.abs() + h * c.abs() - 1e-3).ceil().max(1.0) as u32;
    let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);
    let (ncx, ncy) = ((nw as f32 - 1.0) / 2.0, (nh as f32 - 1.0) / 2.0);
    let mut out = vec![255u8; nw as usize * nh as usize];
    for (y, row) in out.chunks_exact_mut(nw as usize).enumerate() {
        let dy = y as f32 - ncy;
        for (x, o) in row.iter_mut().enumerate() {
            let dx = x as f32 - ncx;
            // Inverse of the on-screen counter-clockwise turn (y points down).
            *o = sample(src, cx + c * dx - s * dy, cy + s * dx + c * dy, 255);
        }
    }
    GrayImage::from_raw(nw, nh, out).unwrap_or_else(|| src.clone())
}

/// Shrinks so the longer side is at most `max_side`; returns the image and the factor applied.
fn shrink(gray: &GrayImage, max_side: u32) -> (GrayImage, f32) {
    let long = gray.width().max(gray.height());
    if long <= max_side {
        return (gray.clone(), 1.0);
    }
    let s = max_side as f32 / long as f32;
    let w = ((gray.width() as f32 * s).round() as u32).max(1);
    let h = ((gray.height() as f32 * s).round() as u32).max(1);
    (resample(gray, w, h), s)
}

// ------------------------------------------------------------------ deskew

/// Skew measured by [`estimate_skew`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Counter-clockwise tilt of the text lines, degrees; undo with `rotate(page, -degrees)`.
    pub degrees: f32,
    /// How much sharper the row profile is at that angle than on average over the angles
    /// tried (1.0 = no angle stands out: no lines to go by).
    pub sharpness: f32,
    /// How much sharper it is than at 0°.
    pub gain: f32,
}

/// Settings of [`estimate_skew`] and [`deskew`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeskewParams {
    /// Largest tilt looked for, degrees.
    pub max_degrees: f32,
    /// Tilts under this are left alone (rotated boxes of the detector absorb them, and a
    /// rotation costs a resampling).
    pub min_degrees: f32,
    /// The best angle must make the row profile at least this much sharper than the mean over
    /// all angles; otherwise the page has no clear lines and is left alone.
    pub min_sharpness: f32,
    /// ... and at least this much sharper than the page as it is.
    pub min_gain: f32,
}

impl Default for DeskewParams {
    fn default() -> Self {
        Self {
            max_degrees: 15.0,
            min_degrees: 0.5,
            min_sharpness: 1.2,
            min_gain: 1.05,
        }
    }
}

/// Estimates the tilt of the text lines by projection profiles: ink pixels of a shrunken,
/// lighting-corrected, binarised copy are projected across each candidate angle (0.5° steps,
/// then 0.05° around the best), and the angle whose row histogram has the largest sum of
/// squares (text lines and gaps sharply separated) wins. `None` when there is too little or
/// too much ink to go by.
pub fn estimate_skew(gray: &GrayImage, params: &DeskewParams) -> Option<Skew> {
    let (small, _) = shrink(gray, 1000);
    let (w, h) = (small.width() as usize, small.height() as usize);
    if w < 16 || h < 16 {
        return None;
    }
    let flat = flatten_lighting(&small);
    let t = otsu_threshold(&flat);
    let raw = flat.as_raw();
    let ink = raw.iter().filter(|&&p| p <= t).count();
    let total = raw.len();
    // Under 0.2% ink: nothing to measure; over 35%: not dark text on paper.
    if ink * 500 < total || ink * 100 > total * 35 {
        return None;
    }
    let stride = (ink / 150_000).max(1);
    let points: Vec<(f32, f32)> = raw
        .iter()
        .enumerate()
        .filter(|(_, &p)| p <= t)
        .step_by(stride)
        .map(|(i, _)| ((i % w) as f32, (i / w) as f32))
        .collect();
    let max = params.max_degrees.abs().min(45.0);
    let reach = (w as f32) * max.to_radians().sin() + 2.0;
    let bins = (h as f32 + 2.0 * reach).ceil() as usize + 2;
    let mut hist = vec![0u32; bins];
    let mut score = |deg: f32| -> f64 {
        hist.iter_mut().for_each(|b| *b = 0);
        let (s, c) = deg.to_radians().sin_cos();
        for &(x, y) in &points {
            let b = (y * c + x * s + reach).round();
            if b >= 0.0 && (b as usize) < bins {
                hist[b as usize] += 1;
            }
        }
        hist.iter()
            .map(|&n| f64::from(n) * f64::from(n))
            .sum::<f64>()
    };
    let steps = (max / 0.5).round() as i32;
    let coarse: Vec<(f32, f64)> = (-steps..=steps)
        .map(|i| {
            let a = i as f32 * 0.5;
            (a, score(a))
        })
        .collect();
    let mean = coarse.iter().map(|(_, v)| v).sum::<f64>() / coarse.len() as f64;
    let at_zero = coarse
        .iter()
        .find(|(a, _)| *a == 0.0)
        .map_or(mean, |(_, v)| *v);
    let (mut best_a, mut best) = coarse
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0.0, mean));
    let centre = best_a;
    for i in -10..=10 {
        let a = centre + i as f32 * 0.05;
        if a.abs() > max {
            continue;
        }
        let v = score(a);
        if v > best {
            (best_a, best) = (a, v);
        }
    }
    if mean <= 0.0 || at_zero <= 0.0 {
        return None;
    }
    Some(Skew {
        degrees: best_a,
        sharpness: (best / mean) as f32,
        gain: (best / at_zero) as f32,
    })
}

/// Straightens a tilted page, or returns `None` (leave the page as it is) when the tilt is
/// small, at the edge of the range looked at, or not clearly measured.
pub fn deskew(gray: &GrayImage, params: &DeskewParams) -> Option<(GrayImage, Skew)> {
    let skew = estimate_skew(gray, params)?;
    let sure = skew.sharpness >= params.min_sharpness && skew.gain >= params.min_gain;
    // A best angle at the end of the range means the true one may lie beyond it.
    let inside = skew.degrees.abs() <= params.max_degrees - 0.5;
    if !sure || !inside || skew.degrees.abs() < params.min_degrees {
        return None;
    }
    Some((rotate(gray, -skew.degrees), skew))
}

// ------------------------------------------------------- lighting, contrast

/// The paper brightness under a page, on a coarse grid: the 80th percentile of blocks 1/64 of
/// the longer side, a 5-block maximum (so blocks full of ink take their neighbours' paper),
/// then a 5-block mean to smooth it.
pub struct Background {
    grid: Vec<f32>,
    gw: usize,
    gh: usize,
    block: usize,
}

impl Background {
    /// `None` for an empty image.
    pub fn estimate(gray: &GrayImage) -> Option<Self> {
        let (w, h) = (gray.width() as usize, gray.height() as usize);
        if w == 0 || h == 0 {
            return None;
        }
        let b = (w.max(h) / 64).max(4);
        let (gw, gh) = (w.div_ceil(b), h.div_ceil(b));
        let raw = gray.as_raw();
        let mut grid = vec![0f32; gw * gh];
        let mut block = Vec::with_capacity(b * b);
        for gy in 0..gh {
            for gx in 0..gw {
                block.clear();
                for y in gy * b..((gy + 1) * b).min(h) {
                    block.extend_from_slice(&raw[y * w + gx * b..y * w + ((gx + 1) * b).min(w)]);
                }
                let k = (block.len() * 4 / 5).min(block.len() - 1);
                let (_, v, _) = block.select_nth_unstable(k);
                grid[gy * gw + gx] = f32::from(*v);
            }
        }
        let grid = box_filter(&max_filter(&grid, gw, gh, 2), gw, gh, 2);
        Some(Self {
            grid,
            gw,
            gh,
            block: b,
        })
    }

    /// How unevenly the page is lit: the 95th minus the 5th percentile of the paper
    /// brightness, in grey levels. Measured (OCR.md, "Page enhancement"): flatbed scans of the
    /// handwriting dev set 0–11, the same pages under a simulated shadow 67–132.
    pub fn spread(&self) -> f32 {
        let mut values = self.grid.clone();
        values.sort_unstable_by(f32::total_cmp);
        let at = |q: f32| values[((values.len() - 1) as f32 * q).round() as usize];
        at(0.95) - at(0.05)
    }

    /// The estimate at full size `w × h` (the size it was made from), interpolated bilinearly
    /// between block centres.
    fn to_image(&self, w: usize, h: usize) -> Vec<u8> {
        let (grid, gw, gh, b) = (&self.grid, self.gw, self.gh, self.block);
        let mut out = vec![0u8; w * h];
        for (y, row) in out.chunks_exact_mut(w).enumerate() {
            let gyf = ((y as f32 + 0.5) / b as f32 - 0.5).clamp(0.0, (gh - 1) as f32);
            let gy0 = gyf.floor() as usize;
            let gy1 = (gy0 + 1).min(gh - 1);
            let fy = gyf - gy0 as f32;
            for (x, o) in row.iter_mut().enumerate() {
                let gxf = ((x as f32 + 0.5) / b as f32 - 0.5).clamp(0.0, (gw - 1) as f32);
                let gx0 = gxf.floor() as usize;
                let gx1 = (gx0 + 1).min(gw - 1);
                let fx = gxf - gx0 as f32;
                let top = grid[gy0 * gw + gx0] * (1.0 - fx) + grid[gy0 * gw + gx1] * fx;
                let bottom = grid[gy1 * gw + gx0] * (1.0 - fx) + grid[gy1 * gw + gx1] * fx;
                *o = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// Estimates the paper brightness under every pixel ([`Background`] at full size).
pub fn background(gray: &GrayImage) -> GrayImage {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    Background::estimate(gray)
        .and_then(|bg| GrayImage::from_raw(w as u32, h as u32, bg.to_image(w, h)))
        .unwrap_or_else(|| gray.clone())
}

/// Separable sliding maximum over a `(2r+1)²` window of a `w × h` grid.
fn max_filter(grid: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    separable(grid, w, h, r, |window, _| window.fold(f32::MIN, f32::max))
}

/// Separable mean over a `(2r+1)²` window (clipped at the edges) of a `w × h` grid.
fn box_filter(grid: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    separable(grid, w, h, r, |window, n| window.sum::<f32>() / n as f32)
}

/// Applies `combine` (given a window's values and their count) over each row's windows of
/// `2r+1` values (clipped at the edges), then over each column's windows of the result.
fn separable<T: Copy + Default>(
    grid: &[T],
    w: usize,
    h: usize,
    r: usize,
    combine: impl Fn(&mut dyn Iterator<Item = T>, usize) -> T,
) -> Vec<T> {
    let mut tmp = vec![T::default(); grid.len()];
    for y in 0..h {
        for x in 0..w {
            let (lo, hi) = (x.saturating_sub(r), (x + r).min(w - 1));
            tmp[y * w + x] = combine(
                &mut grid[y * w + lo..=y * w + hi].iter().copied(),
                hi - lo + 1,
            );
        }
    }
    let mut out = vec![T::default(); grid.len()];
    for y in 0..h {
        let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            out[y * w + x] = combine(&mut (lo..=hi).map(|yy| tmp[yy * w + x]), hi - lo + 1);
        }
    }
    out
}

/// Removes uneven lighting and stretches contrast: each pixel is divided by the [`background`]
/// under it (paper becomes white whether lit or in shadow, ink keeps its darkness relative to
/// the paper around it), then levels are stretched so the darkest 0.5% of pixels are black
/// and the median (paper) white. A page with no contrast left (blank) is not stretched.
pub fn flatten_lighting(gray: &GrayImage) -> GrayImage {
    match Background::estimate(gray) {
        Some(bg) => flatten_lighting_with(gray, &bg),
        None => gray.clone(),
    }
}

/// [`flatten_lighting`] with the page's background already estimated.
pub fn flatten_lighting_with(gray: &GrayImage, bg: &Background) -> GrayImage {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let bg = bg.to_image(w, h);
    let mut out: Vec<u8> = gray
        .as_raw()
        .iter()
        .zip(&bg)
        .map(|(&p, &b)| {
            let b = u32::from(b.max(1));
            ((u32::from(p) * 255 + b / 2) / b).min(255) as u8
        })
        .collect();
    let mut hist = [0usize; 256];
    for &p in &out {
        hist[p as usize] += 1;
    }
    let percentile = |q: f64| -> u8 {
        let target = (out.len() as f64 * q).ceil() as usize;
        let mut seen = 0;
        for (v, &n) in hist.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return v as u8;
            }
        }
        255
    };
    let (lo, hi) = (percentile(0.005), percentile(0.5));
    if hi > lo && hi - lo >= 24 {
        let (lo, span) = (u32::from(lo), u32::from(hi - lo));
        let mut lut = [0u8; 256];
        for (v, l) in lut.iter_mut().enumerate() {
            let v = (v as u32).saturating_sub(lo);
            *l = ((v * 255 + span / 2) / span).min(255) as u8;
        }
        out.iter_mut().for_each(|p| *p = lut[*p as usize]);
    }
    GrayImage::from_raw(gray.width(), gray.height(), out).unwrap_or_else(|| gray.clone())
}

// ---------------------------------------------------------------- denoising

/// 3×3 median filter (edges replicated): removes isolated specks and sensor noise while
/// keeping strokes at least 2 pixels wide.
pub fn median3(gray: &GrayImage) -> GrayImage {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    if w < 3 || h < 3 {
        return gray.clone();
    }
    let raw = gray.as_raw();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let rows = [y.saturating_sub(1), y, (y + 1).min(h - 1)];
        for x in 0..w {
            let cols = [x.saturating_sub(1), x, (x + 1).min(w - 1)];
            let mut v = [0u8; 9];
            for (i, &ry) in rows.iter().enumerate() {
                for (j, &cx) in cols.iter().enumerate() {
                    v[i * 3 + j] = raw[ry * w + cx];
                }
            }
            v.sort_unstable();
            out[y * w + x] = v[4];
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| gray.clone())
}

/// How noisy the page is: the median absolute difference, in grey levels, between a pixel and
/// the median of its 3×3 neighbourhood, over every 4th pixel of every 4th row. The median, not
/// the mean, so that the edges of small clean text (most pixels of a 72 dpi page are near one)
/// do not count as noise: on paper a clean page differs from its median nowhere. Flatbed scans
/// of the handwriting dev set: 0; with simulated sensor noise (sigma 22, 0.3% salt and
/// pepper, JPEG): 6–10 (OCR.md, "Page enhancement").
pub fn noise_level(gray: &GrayImage) -> f32 {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let raw = gray.as_raw();
    let mut histogram = [0u32; 256];
    let mut n = 0u32;
    for y in (1..h - 1).step_by(4) {
        for x in (1..w - 1).step_by(4) {
            let mut v = [0u8; 9];
            for (i, yy) in (y - 1..=y + 1).enumerate() {
                v[i * 3..i * 3 + 3].copy_from_slice(&raw[yy * w + x - 1..yy * w + x + 2]);
            }
            let centre = v[4];
            v.sort_unstable();
            histogram[usize::from(centre.abs_diff(v[4]))] += 1;
            n += 1;
        }
    }
    let mut seen = 0;
    for (level, &count) in histogram.iter().enumerate() {
        seen += count;
        if seen * 2 >= n {
            return level as f32;
        }
    }
    0.0
}

// -------------------------------------------------------------- perspective

/// A quadrilateral in page pixels: top-left, top-right, bottom-right, bottom-left.
pub type Quad = [(f32, f32); 4];

/// Finds a sheet of paper photographed on a darker surface: the largest bright region of a
/// shrunken, closed (text filled in) copy, accepted only when the whole sheet is inside the
/// frame (the region barely touches the image border), it stands out from its surroundings
/// (mean brightness ≥ 40 levels above), it fills ≥ 93% of the quadrilateral fitted to its hull,
/// and the quadrilateral has sane angles and sides. Scans, pages cropped to the paper and
/// pages darkened by a shadow (the lit part touches the border) give `None`.
pub fn find_page_quad(gray: &GrayImage) -> Option<Quad> {
    let (small, s) = shrink(gray, 512);
    let (w, h) = (small.width() as usize, small.height() as usize);
    if w < 32 || h < 32 {
        return None;
    }
    let r = (w.max(h) / 100).max(2);
    let closed = min_filter_u8(&max_filter_u8(&small, r), r);
    let t = otsu_threshold(&closed);
    let mask: Vec<bool> = closed.as_raw().iter().map(|&p| p > t).collect();
    let comp = largest_component(&mask, w, h)?;
    let total = w * h;
    if comp.area * 100 < total * 15 || comp.area * 100 > total * 97 {
        return None;
    }
    let border = 2 * (w + h) - 4;
    if comp.border_pixels * 100 > border * 3 {
        return None;
    }
    let raw = small.as_raw();
    let (mut inside, mut outside) = (0u64, 0u64);
    for (i, &p) in raw.iter().enumerate() {
        if comp.member[i] {
            inside += u64::from(p);
        } else {
            outside += u64::from(p);
        }
    }
    let mean_in = inside as f64 / comp.area as f64;
    let mean_out = outside as f64 / (total - comp.area).max(1) as f64;
    if mean_in - mean_out < 40.0 {
        return None;
    }
    let hull = convex_hull(&comp.edge_points);
    if hull.len() < 4 {
        return None;
    }
    let quad = fit_quad(&hull)?;
    let quad_area = polygon_area(&quad);
    let hull_area = polygon_area(&hull);
    // Edge points are pixel centres: the region's area counts whole pixels, so allow the
    // half-pixel rim when comparing.
    let perimeter: f64 = (0..4)
        .map(|i| dist(quad[i], quad[(i + 1) % 4]) as f64)
        .sum();
    if (comp.area as f64) < 0.93 * (quad_area + perimeter / 2.0) || hull_area > 1.04 * quad_area {
        return None;
    }
    let min_side = 0.2 * w.min(h) as f32;
    for i in 0..4 {
        let (a, b, c) = (quad[(i + 3) % 4], quad[i], quad[(i + 1) % 4]);
        if dist(b, c) < min_side {
            return None;
        }
        let (ux, uy) = (a.0 - b.0, a.1 - b.1);
        let (vx, vy) = (c.0 - b.0, c.1 - b.1);
        let cos = (ux * vx + uy * vy) / ((ux * ux + uy * uy).sqrt() * (vx * vx + vy * vy).sqrt());
        if !(-0.6..=0.6).contains(&cos) {
            return None; // an angle outside 53°-127°: not a sheet seen at a sane angle
        }
    }
    // Back to page pixels; pixel centres of the shrunken copy map to (i + 0.5) / s - 0.5.
    Some(quad.map(|(x, y)| ((x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5)))
}

/// Cuts the quadrilateral out and maps it to an upright rectangle as large as its longer
/// opposite sides (bilinear; white outside the image).
pub fn warp_quad(gray: &GrayImage, quad: &Quad) -> Option<GrayImage> {
    let [tl, tr, br, bl] = *quad;
    let width = dist(tl, tr).max(dist(bl, br)).round();
    let height = dist(tl, bl).max(dist(tr, br)).round();
    let limit = 4.0 * gray.width() as f32 * gray.height() as f32;
    if width < 8.0 || height < 8.0 || width * height > limit {
        return None;
    }
    let (ow, oh) = (width as u32, height as u32);
    // Output pixel centres (x, y) in [0, w-1] map to the quad's corner pixels.
    let (wm, hm) = ((ow - 1).max(1) as f64, (oh - 1).max(1) as f64);
    let m = homography(
        &[(0.0, 0.0), (wm, 0.0), (wm, hm), (0.0, hm)],
        &quad.map(|(x, y)| (f64::from(x), f64::from(y))),
    )?;
    let mut out = vec![255u8; ow as usize * oh as usize];
    for (y, row) in out.chunks_exact_mut(ow as usize).enumerate() {
        let yf = y as f64;
        for (x, o) in row.iter_mut().enumerate() {
            let xf = x as f64;
            let d = m[6] * xf + m[7] * yf + 1.0;
            if d.abs() < 1e-12 {
                continue;
            }
            let u = (m[0] * xf + m[1] * yf + m[2]) / d;
            let v = (m[3] * xf + m[4] * yf + m[5]) / d;
            *o = sample(gray, u as f32, v as f32, 255);
        }
    }
    GrayImage::from_raw(ow, oh, out)
}

/// The 8 coefficients `[a b c d e f g h]` of the projective map sending each `from` point to
/// the `to` point at the same index: `u = (a x + b y + c) / (g x + h y + 1)`, `v` likewise
/// with `d e f`. `None` when the points are degenerate (three on a line).
pub fn homography(from: &[(f64, f64); 4], to: &[(f64, f64); 4]) -> Option<[f64; 8]> {
    let mut a = [[0f64; 9]; 8];
    for (i, (&(x, y), &(u, v))) in from.iter().zip(to).enumerate() {
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    // Gaussian elimination with partial pivoting on the augmented 8×9 matrix.
    for col in 0..8 {
        let pivot = (col..8).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < 1e-9 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col];
        for (row, r) in a.iter_mut().enumerate() {
            if row != col {
                let f = r[col] / pivot_row[col];
                for (x, p) in r.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut h = [0f64; 8];
    for (i, v) in h.iter_mut().enumerate() {
        *v = a[i][8] / a[i][i];
    }
    h.iter().all(|v| v.is_finite()).then_some(h)
}

/// Warps a photographed sheet to an upright rectangle, or `None` when no sheet is found.
pub fn correct_perspective(gray: &GrayImage) -> Option<GrayImage> {
    let quad = find_page_quad(gray)?;
    warp_quad(gray, &quad)
}

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Shoelace area (absolute).
fn polygon_area(points: &[(f32, f32)]) -> f64 {
    signed_area(points).abs()
}

fn signed_area(points: &[(f32, f32)]) -> f64 {
    let n = points.len();
    (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            f64::from(a.0) * f64::from(b.1) - f64::from(b.0) * f64::from(a.1)
        })
        .sum::<f64>()
        / 2.0
}

fn max_filter_u8(img: &GrayImage, r: usize) -> GrayImage {
    morph(img, r, |a, b| a.max(b))
}

fn min_filter_u8(img: &GrayImage, r: usize) -> GrayImage {
    morph(img, r, |a, b| a.min(b))
}

/// Separable square-window filter with `op` (max: dilate bright, min: erode bright).
fn morph(img: &GrayImage, r: usize, op: fn(u8, u8) -> u8) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let out = separable(img.as_raw(), w, h, r, |window, _| {
        window.reduce(op).unwrap_or(0)
    });
    GrayImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| img.clone())
}

struct Component {
    member: Vec<bool>,
    area: usize,
    border_pixels: usize,
    /// Leftmost and rightmost pixel centre of each row: enough for the convex hull.
    edge_points: Vec<(f32, f32)>,
}

/// The largest 8-connected region of `mask`.
fn largest_component(mask: &[bool], w: usize, h: usize) -> Option<Component> {
    let mut label = vec![0u32; w * h];
    let mut best = (0u32, 0usize);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut area = 0;
        while let Some(i) = stack.pop() {
            area += 1;
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if mask[j] && label[j] == 0 {
                        label[j] = next;
                        stack.push(j);
                    }
                }
            }
        }
        if area > best.1 {
            best = (next, area);
        }
    }
    if best.1 == 0 {
        return None;
    }
    let member: Vec<bool> = label.iter().map(|&l| l == best.0).collect();
    let mut border_pixels = 0;
    let mut edge_points = Vec::new();
    for y in 0..h {
        let row = &member[y * w..(y + 1) * w];
        let first = row.iter().position(|&m| m);
        let last = row.iter().rposition(|&m| m);
        if let (Some(a), Some(b)) = (first, last) {
            edge_points.push((a as f32, y as f32));
            edge_points.push((b as f32, y as f32));
        }
        if y == 0 || y == h - 1 {
            border_pixels += row.iter().filter(|&&m| m).count();
        } else {
            border_pixels += usize::from(row[0]) + usize::from(row[w - 1]);
        }
    }
    Some(Component {
        member,
        area: best.1,
        border_pixels,
        edge_points,
    })
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in y-up terms.
fn convex_hull(points: &[(f32, f32)]) -> Vec<(f32, f32)> {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: (f32, f32), a: (f32, f32), b: (f32, f32)| {
        f64::from(a.0 - o.0) * f64::from(b.1 - o.1) - f64::from(a.1 - o.1) * f64::from(b.0 - o.0)
    };
    let mut hull: Vec<(f32, f32)> = Vec::with_capacity(2 * p.len());
    for &pt in &p {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], pt) <= 0.0 {
            hull.pop();
        }
        hull.push(pt);
    }
    // The upper hull, on the way back, must not pop what the lower one built.
    let lower = hull.len() + 1;
    for &pt in p.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], pt) <= 0.0 {
            hull.pop();
        }
        hull.push(pt);
    }
    hull.pop();
    hull
}

/// The largest-area quadrilateral with corners on the hull, found by starting from the hull
/// points extreme along the two diagonals and moving each corner along the hull while the
/// area grows. Returned top-left, top-right, bottom-right, bottom-left.
fn fit_quad(hull: &[(f32, f32)]) -> Option<Quad> {
    let n = hull.len();
    if n < 4 {
        return None;
    }
    let arg = |f: &dyn Fn((f32, f32)) -> f32| -> usize {
        (0..n)
            .max_by(|&a, &b| f(hull[a]).total_cmp(&f(hull[b])))
            .unwrap_or(0)
    };
    let mut idx = [
        arg(&|p| -p.0 - p.1),
        arg(&|p| p.0 - p.1),
        arg(&|p| p.0 + p.1),
        arg(&|p| -p.0 + p.1),
    ];
    let area_of = |idx: &[usize; 4]| polygon_area(&idx.map(|i| hull[i]));
    let mut best = area_of(&idx);
    for _ in 0..100 {
        let mut improved = false;
        for k in 0..4 {
            for cand in 0..n {
                if idx.contains(&cand) {
                    continue;
                }
                let mut trial = idx;
                trial[k] = cand;
                // Corners must stay in hull order, or the "quadrilateral" crosses itself.
                let mut sorted = trial;
                sorted.sort_unstable();
                let rotations = (0..4).any(|r| (0..4).all(|i| sorted[(i + r) % 4] == trial[i]));
                let reversed = (0..4).any(|r| (0..4).all(|i| sorted[(r + 4 - i) % 4] == trial[i]));
                if !(rotations || reversed) {
                    continue;
                }
                let a = area_of(&trial);
                if a > best * (1.0 + 1e-9) {
                    best = a;
                    idx = trial;
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    let mut quad = idx.map(|i| hull[i]);
    if signed_area(&quad) < 0.0 {
        quad.reverse();
    }
    // Clockwise on screen (y down) from the corner nearest the top-left.
    let first = (0..4)
        .min_by(|&a, &b| (quad[a].0 + quad[a].1).total_cmp(&(quad[b].0 + quad[b].1)))
        .unwrap_or(0);
    quad.rotate_left(first);
    (best > 0.0).then_some(quad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    /// A page of "text": rows of dark word-like blocks with gaps, like handwriting lines seen
    /// from afar. Deterministic.
    fn lines_page(w: u32, h: u32) -> GrayImage {
        let mut page = GrayImage::from_pixel(w, h, Luma([235]));
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) % 1000
        };
        let line_gap = h / 12;
        let mut y = line_gap;
        while y + line_gap / 2 < h - line_gap / 2 {
            let mut x = w / 12;
            while x < w - w / 12 {
                let word = 20 + rnd() % 60;
                for xx in x..(x + word).min(w - w / 12) {
                    // Strokes: vertical bars 3 px wide every 7 px, plus a baseline stroke.
                    for yy in y..y + line_gap / 3 {
                        if (xx % 7) < 3 || yy + 3 >= y + line_gap / 3 {
                            page.put_pixel(xx, yy, Luma([30]));
                        }
                    }
                }
                x += word + 15 + rnd() % 20;
            }
            y += line_gap;
        }
        page
    }

    fn mean(img: &GrayImage, x0: u32, y0: u32, x1: u32, y1: u32) -> f64 {
        let mut sum = 0u64;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += u64::from(img.get_pixel(x, y).0[0]);
            }
        }
        sum as f64 / (f64::from(x1 - x0) * f64::from(y1 - y0))
    }

    #[test]
    fn rotate_grows_the_canvas_and_turns_back() {
        let page = lines_page(400, 300);
        let turned = rotate(&page, 10.0);
        assert!(turned.width() > 400 && turned.height() > 300);
        let mut dot = GrayImage::from_pixel(101, 101, Luma([255]));
        dot.put_pixel(90, 50, Luma([0])); // right of the centre
        let up = rotate(&dot, 90.0);
        let (w, h) = up.dimensions();
        let darkest = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .min_by_key(|&(x, y)| up.get_pixel(x, y).0[0])
            .unwrap();
        // Counter-clockwise on screen: the dot right of the centre ends above it.
        assert!(
            darkest.1 < h / 2 - 30 && (darkest.0 as i64 - w as i64 / 2).abs() <= 2,
            "{darkest:?}"
        );
        let back = rotate(&turned, -10.0);
        let (bw, bh) = back.dimensions();
        let (ox, oy) = ((bw - 400) / 2, (bh - 300) / 2);
        let mut diff = 0u64;
        for y in 50..250 {
            for x in 50..350 {
                diff += u64::from(
                    page.get_pixel(x, y).0[0].abs_diff(back.get_pixel(x + ox, y + oy).0[0]),
                );
            }
        }
        // Two bilinear resamplings blur edges but keep the page in place.
        assert!(
            diff as f64 / 60_000.0 < 25.0,
            "mean difference {}",
            diff as f64 / 60_000.0
        );
        assert_eq!(rotate(&page, 0.0), page);
        assert_eq!(rotate(&GrayImage::new(0, 0), 5.0).dimensions(), (0, 0));
    }

    #[test]
    fn skew_is_measured_and_undone() {
        let params = DeskewParams::default();
        let page = lines_page(800, 600);
        for tilt in [4.0f32, -7.0, 2.5, 12.0] {
            let tilted = rotate(&page, tilt);
            let skew = estimate_skew(&tilted, &params).expect("lines");
            assert!((skew.degrees - tilt).abs() < 0.3, "{tilt}: {skew:?}");
            let (straight, applied) = deskew(&tilted, &params).expect("tilted");
            assert_eq!(applied.degrees, skew.degrees);
            let after = estimate_skew(&straight, &params).expect("lines");
            assert!(after.degrees.abs() < 0.3, "{tilt}: after {after:?}");
        }
        // Straight, tiny tilts, blank and lineless pages are left alone.
        assert!(deskew(&page, &params).is_none());
        assert!(deskew(&rotate(&page, 0.3), &params).is_none());
        assert!(deskew(&GrayImage::from_pixel(300, 200, Luma([255])), &params).is_none());
        assert!(deskew(&GrayImage::from_pixel(300, 200, Luma([0])), &params).is_none());
        let mut speckle = GrayImage::from_pixel(600, 400, Luma([240]));
        let mut seed = 3u32;
        for p in speckle.pixels_mut() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if (seed >> 16).is_multiple_of(50) {
                *p = Luma([20]);
            }
        }
        assert!(
            deskew(&speckle, &params).is_none(),
            "{:?}",
            estimate_skew(&speckle, &params)
        );
        assert!(estimate_skew(&GrayImage::new(1, 1), &params).is_none());
    }

    #[test]
    fn shadows_are_flattened_and_ink_stays_dark() {
        let page = lines_page(640, 480);
        // Light falling off to 35% from left to right, like a hand's shadow over the page.
        let mut shaded = page.clone();
        for (x, _, p) in shaded.enumerate_pixels_mut() {
            let light = 1.0 - 0.65 * x as f32 / 639.0;
            p.0[0] = (f32::from(p.0[0]) * light) as u8;
        }
        let before_gap = mean(&shaded, 0, 0, 40, 480) - mean(&shaded, 600, 0, 640, 480);
        assert!(before_gap > 100.0);
        let flat = flatten_lighting(&shaded);
        // Paper margins on both sides end up equally white.
        let (left, right) = (mean(&flat, 0, 0, 40, 480), mean(&flat, 600, 0, 640, 480));
        assert!(left > 240.0 && right > 240.0, "{left} {right}");
        // Ink on the dark side is still ink: as dark as on the lit side, far below paper.
        let ink = |img: &GrayImage, x0: u32, x1: u32| {
            let mut v: Vec<u8> = (40..440)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .map(|(x, y)| img.get_pixel(x, y).0[0])
                .collect();
            v.sort_unstable();
            f64::from(v[v.len() / 50])
        };
        assert!(ink(&flat, 60, 200) < 60.0 && ink(&flat, 440, 580) < 80.0);
        // A clean page keeps black ink and white paper.
        let clean = flatten_lighting(&page);
        assert!(mean(&clean, 0, 0, 40, 480) > 245.0 && ink(&clean, 60, 580) < 40.0);
        // Blank pages stay blank rather than being stretched into noise.
        let blank = GrayImage::from_pixel(200, 100, Luma([200]));
        assert!(flatten_lighting(&blank).pixels().all(|p| p.0[0] >= 250));
        assert_eq!(flatten_lighting(&GrayImage::new(0, 0)).dimensions(), (0, 0));
    }

    #[test]
    fn median_removes_specks_and_keeps_strokes() {
        let mut page = GrayImage::from_pixel(40, 40, Luma([255]));
        page.put_pixel(5, 5, Luma([0]));
        for y in 10..30 {
            for x in 20..23 {
                page.put_pixel(x, y, Luma([0]));
            }
        }
        let clean = median3(&page);
        assert_eq!(clean.get_pixel(5, 5).0[0], 255);
        assert!((12..28).all(|y| (20..23).all(|x| clean.get_pixel(x, y).0[0] == 0)));
        assert_eq!(median3(&GrayImage::new(2, 2)).dimensions(), (2, 2));
    }

    /// `page` seen at an angle: its corners land on `corners` of a `w × h` photo of a dark,
    /// slightly uneven table.
    fn photograph(page: &GrayImage, corners: Quad, w: u32, h: u32) -> GrayImage {
        let (pw, ph) = (f64::from(page.width() - 1), f64::from(page.height() - 1));
        let to_page = homography(
            &corners.map(|(x, y)| (f64::from(x), f64::from(y))),
            &[(0.0, 0.0), (pw, 0.0), (pw, ph), (0.0, ph)],
        )
        .unwrap();
        let mut out = GrayImage::new(w, h);
        for (x, y, p) in out.enumerate_pixels_mut() {
            let (xf, yf) = (f64::from(x), f64::from(y));
            let m = &to_page;
            let d = m[6] * xf + m[7] * yf + 1.0;
            let u = (m[0] * xf + m[1] * yf + m[2]) / d;
            let v = (m[3] * xf + m[4] * yf + m[5]) / d;
            let table = 60 + ((x / 9 + y / 7) % 5) as u8 * 4;
            p.0[0] = if u >= 0.0 && v >= 0.0 && u <= pw && v <= ph {
                sample(page, u as f32, v as f32, table)
            } else {
                table
            };
        }
        out
    }

    #[test]
    fn a_photographed_sheet_is_found_and_flattened() {
        let page = lines_page(600, 800);
        let corners: Quad = [
            (140.0, 90.0),
            (690.0, 130.0),
            (720.0, 860.0),
            (110.0, 900.0),
        ];
        let photo = photograph(&page, corners, 900, 1000);
        let quad = find_page_quad(&photo).expect("sheet on a table");
        for (found, truth) in quad.iter().zip(corners) {
            assert!(dist(*found, truth) < 8.0, "{quad:?} vs {corners:?}");
        }
        let flat = warp_quad(&photo, &quad).unwrap();
        let (fw, fh) = flat.dimensions();
        assert!(
            (550..=650).contains(&fw) && (720..=820).contains(&fh),
            "{fw}x{fh}"
        );
        // Text lines come out level again, and the table is gone.
        let skew = estimate_skew(&flat, &DeskewParams::default()).unwrap();
        assert!(skew.degrees.abs() < 1.0, "{skew:?}");
        assert!(mean(&flat, 0, 0, fw, 10) > 200.0);
        assert!(correct_perspective(&photo).is_some());
    }

    #[test]
    fn scans_cropped_pages_and_shadows_are_never_warped() {
        let page = lines_page(600, 800);
        assert!(find_page_quad(&page).is_none(), "a scan");
        // A scan with a dark strip where the lid did not cover the glass.
        let mut lid = page.clone();
        for y in 0..800 {
            for x in 0..60 {
                lid.put_pixel(x, y, Luma([40]));
            }
        }
        assert!(find_page_quad(&lid).is_none(), "dark strip at the edge");
        // A hard shadow over half the page: the lit part is a clean rectangle, but it is cut
        // by the frame, so it is not a sheet.
        let mut shadow = page.clone();
        for (_, y, p) in shadow.enumerate_pixels_mut() {
            if y > 450 {
                p.0[0] /= 3;
            }
        }
        assert!(find_page_quad(&shadow).is_none(), "shadow");
        // A sheet whose corner leaves the frame cannot be flattened reliably.
        let cut = photograph(
            &page,
            [(-80.0, -60.0), (560.0, 40.0), (600.0, 860.0), (60.0, 900.0)],
            700,
            1000,
        );
        assert!(find_page_quad(&cut).is_none(), "corner outside the frame");
        for img in [
            GrayImage::new(0, 0),
            GrayImage::new(1, 1),
            GrayImage::from_pixel(300, 300, Luma([0])),
        ] {
            assert!(find_page_quad(&img).is_none());
        }
    }

    #[test]
    fn hull_keeps_only_the_corners() {
        let points = [
            (0.0, 0.0),
            (10.0, 0.0),
            (10.0, 10.0),
            (0.0, 10.0),
            (5.0, 5.0),
            (5.0, 0.0),
            (2.0, 8.0),
            (10.0, 4.0),
        ];
        let hull = convex_hull(&points);
        assert_eq!(hull.len(), 4, "{hull:?}");
        for corner in [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)] {
            assert!(hull.contains(&corner), "{hull:?}");
        }
        let quad = fit_quad(&hull).unwrap();
        assert_eq!(quad, [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]);
    }

    #[test]
    fn homography_maps_corners_and_rejects_degenerate_points() {
        let from = [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0)];
        let to = [(3.0, 1.0), (20.0, 4.0), (18.0, 16.0), (1.0, 12.0)];
        let m = homography(&from, &to).unwrap();
        for ((x, y), (u, v)) in from.iter().zip(to) {
            let d = m[6] * x + m[7] * y + 1.0;
            assert!(((m[0] * x + m[1] * y + m[2]) / d - u).abs() < 1e-6);
            assert!(((m[3] * x + m[4] * y + m[5]) / d - v).abs() < 1e-6);
        }
        let line = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)];
        assert!(homography(&line, &to).is_none());
    }
}
