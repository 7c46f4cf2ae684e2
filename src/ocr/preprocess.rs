//! Page preprocessing before OCR: grayscale, rescaling so text reaches the
//! size Tesseract reads best, and quarter-turn rotation. Owns only steps that
//! were measured to help; the numbers below come from the ignored test
//! `preprocess_measurements` (tests.rs), on 11 pt DejaVu Sans exam pages
//! rendered at each resolution, Tesseract 5.3 `eng` (fast model):
//!
//! | dpi | raw CER | raw s | scale | prepared CER | prepared s |
//! |----:|--------:|------:|------:|-------------:|-----------:|
//! |  60 | 16.08 % |  0.55 | 3.20  |      1.19 %  |       1.23 |
//! |  75 |  1.22 % |  0.63 | 2.67  |      0.03 %  |       1.27 |
//! | 100 |  0.14 % |  0.74 | 2.29  |      0.07 %  |       1.34 |
//! | 200 |  0.07 % |  1.22 | 1.00  |      0.07 %  |       1.26 |
//! | 300 |  0.10 % |  1.47 | 0.67  |      0.03 %  |       1.29 |
//! | 600 |  0.41 % |  2.17 | 0.33  |      0.03 %  |       1.53 |
//!
//! Kept: grayscale (Tesseract binarises gray itself); rescale to a median
//! glyph height of 16 px (measured on the page, so it works for crops and
//! photos whose dpi is unknown); the orientation fix in the pool (pages read
//! upside down or at 270° score CER 86 % and confidence 0.41 instead of 0.94).
//! Not kept: telling Tesseract the resolution changed no CER at any dpi (it
//! estimates one from x-heights), so the equivalent ppi is passed only to
//! avoid its warning; upscaling pages already at ≥ 130 dpi (no gain, +20 %
//! time); OSD on a half-size page (wrong answers at confidence 3.4).
//!
//! Page enhancement for photographed or degraded pages (perspective,
//! lighting, deskew, denoising: [`super::enhance`]) runs first, each step
//! behind a setting ([`EnhanceSteps`], `ocr.preprocess.*`); which steps are on
//! by default was decided on the handwriting dev set and degraded copies of
//! it (OCR.md, "Page enhancement").
//!
//! Promises: [`prepare`] never fails and never grows a page beyond
//! [`PreprocessOptions::max_output_pixels`].

use image::imageops;
use image::{DynamicImage, GrayImage};

use super::enhance;

/// Tuning for [`prepare`] and the pool's orientation step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PreprocessOptions {
    /// Rescale pages whose text is far from [`Self::target_glyph_height`].
    pub rescale: bool,
    /// Median glyph height, in pixels, to scale text to. 16 px is 11 pt text
    /// at 200 dpi: Tesseract reads it as accurately as 300 dpi (CER 0.07% vs
    /// 0.10%) in 72% of the time.
    pub target_glyph_height: f32,
    /// Enlarge pages whose glyphs are shorter than this. Below ~9 px (11 pt
    /// under ~110 dpi) Tesseract degrades: CER at 100/75/60 dpi fell from
    /// 0.14/1.22/16.1% to 0.07/0.03/1.2% when enlarged to 16 px; at 130 dpi
    /// (10 px) enlarging gained nothing and cost 20% more time.
    pub min_glyph_height: f32,
    /// Shrink pages whose glyphs are taller than this. Shrinking to 16 px
    /// took a 600 dpi page from CER 0.41% in 2.2 s to 0.03% in 1.5 s, and a
    /// 300 dpi page from 0.10% in 1.5 s to 0.03% in 1.3 s.
    pub max_glyph_height: f32,
    /// Largest enlargement factor.
    pub max_upscale: f32,
    /// Never produce a page with more pixels than this.
    pub max_output_pixels: u64,
    /// Undo 180°/270° page rotation (90° Tesseract's layout analysis already
    /// handles). Costs nothing on pages read with good confidence.
    pub fix_orientation: bool,
    /// Pages read with a mean confidence below this get an orientation check
    /// (Tesseract OSD, ~0.3 s on an A4 page, then a second read if turned).
    /// Measured: upright and 90° pages 0.94, pages upside down or turned
    /// 270°: 0.41–0.42. So upright pages never pay for OSD.
    pub orientation_check_below: f32,
    /// Minimum OSD confidence to act on. Measured: 10.6–17.5 on rotated and
    /// upright 200 dpi pages. The turned page must also read with a higher
    /// confidence than the original, or the original is kept.
    pub min_orientation_confidence: f32,
    /// Page enhancement steps for photographed or degraded pages (see
    /// [`super::enhance`]), run in this order before rescaling.
    pub enhance: EnhanceSteps,
}

/// Which [`super::enhance`] steps [`prepare`] runs. Each one leaves a page alone when it finds
/// nothing to correct. Defaults: only what the measurements in OCR.md ("Page enhancement")
/// showed to help, or to cost nothing on clean pages and help on degraded ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnhanceSteps {
    /// Find a sheet photographed on a darker surface and warp it to a rectangle.
    pub perspective: bool,
    /// Divide out uneven lighting (shadows) and stretch the contrast; `auto`: on pages whose
    /// paper brightness varies by at least [`LIGHTING_SPREAD_MIN`] grey levels.
    pub lighting: StepMode,
    /// Straighten pages tilted by 0.5°–15°.
    pub deskew: bool,
    /// 3×3 median filter; `auto`: on pages whose [`enhance::noise_level`] is at least
    /// [`NOISE_LEVEL_MIN`].
    pub denoise: StepMode,
}

/// Whether an enhancement step runs: never, always, or on the pages that measure as needing it.
/// Written `"off"`, `"on"` or `"auto"` (`true` and `false` are taken too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    Off,
    On,
    Auto,
}

impl StepMode {
    fn name(self) -> &'static str {
        match self {
            StepMode::Off => "off",
            StepMode::On => "on",
            StepMode::Auto => "auto",
        }
    }
}

impl serde::Serialize for StepMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for StepMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StepMode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"off\", \"on\" or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<StepMode, E> {
                Ok(if on { StepMode::On } else { StepMode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StepMode, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "off" | "false" | "no" | "0" => Ok(StepMode::Off),
                    "on" | "true" | "yes" | "1" => Ok(StepMode::On),
                    "auto" => Ok(StepMode::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `lighting = "auto"` flattens pages whose paper brightness spreads over at least this many
/// grey levels ([`enhance::Background::spread`]): between flatbed scans (0–11) and shadowed
/// pages (67–132), measured in OCR.md.
pub const LIGHTING_SPREAD_MIN: f32 = 32.0;

/// `denoise = "auto"` filters pages at least this noisy ([`enhance::noise_level`], measured on
/// the page as uploaded): between flatbed scans (0) and pages with sensor noise (6–10;
/// simulated phone photos 14), measured in OCR.md.
pub const NOISE_LEVEL_MIN: f32 = 3.0;

/// Measured on the handwriting dev set and degraded copies (OCR.md, "Page enhancement"),
/// PP-OCR: deskew took tilted pages from CER 10.6% to 9.4%; perspective correction took
/// simulated phone photos from 15.3% to 13.2% (but cost evenly lit slanted sheets 0.7 points of
/// CER while saving 1.6 of WER); both gave identical figures on the 40 flat pages. Lighting
/// and denoising each cost clean scans 0.5–0.7 points when always on; on `auto` they leave
/// clean, tilted and slanted pages untouched (identical figures) and take shadowed pages from
/// 12.1% to 10.3% and noisy ones from 11.7% to 10.5%.
impl Default for EnhanceSteps {
    fn default() -> Self {
        Self {
            perspective: true,
            lighting: StepMode::Auto,
            deskew: true,
            denoise: StepMode::Auto,
        }
    }
}

impl EnhanceSteps {
    /// A short stable name of the enabled steps ("none", "lighting+deskew",
    /// "perspective+lighting:auto"), for cache keys and reports.
    pub fn key(&self) -> String {
        let flag = |on: bool, name: &str| on.then(|| name.to_owned());
        let step = |step: StepMode, name: &str| match step {
            StepMode::Off => None,
            StepMode::On => Some(name.to_owned()),
            StepMode::Auto => Some(format!("{name}:auto")),
        };
        let on: Vec<String> = [
            flag(self.perspective, "perspective"),
            step(self.lighting, "lighting"),
            flag(self.deskew, "deskew"),
            step(self.denoise, "denoise"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join("+")
        }
    }
}

/// What [`prepare`]'s enhancement steps changed on a page.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Enhanced {
    /// A photographed sheet was found and warped to a rectangle.
    pub warped: bool,
    /// Lighting was flattened.
    pub lighting: bool,
    /// The measured [`enhance::Background::spread`], when the lighting step looked.
    pub lighting_spread: Option<f32>,
    /// The measured [`enhance::noise_level`], when the denoising step looked.
    pub noise_level: Option<f32>,
    /// The page was turned back by this many degrees (counter-clockwise tilt undone).
    pub deskewed_degrees: Option<f32>,
    pub denoised: bool,
}

/// Runs the enabled [`EnhanceSteps`] on a page. Perspective comes first (a warped sheet is
/// also upright and cropped to the paper, so the later steps see only paper), lighting before
/// deskew (its binarisation needs even lighting), denoising last (measured better than first).
pub fn enhance_page(mut page: GrayImage, steps: &EnhanceSteps) -> (GrayImage, Enhanced) {
    let mut done = Enhanced::default();
    // Noise is measured on the page as it came: the warp and the turn resample it, which
    // smooths noise (and would hide it from the measure) without removing it.
    if steps.denoise != StepMode::Off {
        done.noise_level = Some(enhance::noise_level(&page));
    }
    if steps.perspective {
        if let Some(flat) = enhance::correct_perspective(&page) {
            page = flat;
            done.warped = true;
        }
    }
    if steps.lighting != StepMode::Off {
        if let Some(bg) = enhance::Background::estimate(&page) {
            let spread = bg.spread();
            done.lighting_spread = Some(spread);
            if steps.lighting == StepMode::On || spread >= LIGHTING_SPREAD_MIN {
                page = enhance::flatten_lighting_with(&page, &bg);
                done.lighting = true;
            }
        }
    }
    if steps.deskew {
        if let Some((straight, skew)) = enhance::deskew(&page, &enhance::DeskewParams::default()) {
            page = straight;
            done.deskewed_degrees = Some(skew.degrees);
        }
    }
    if let Some(noise) = done.noise_level {
        if steps.denoise == StepMode::On || noise >= NOISE_LEVEL_MIN {
            page = enhance::median3(&page);
            done.denoised = true;
        }
    }
    (page, done)
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        Self {
            rescale: true,
            target_glyph_height: 16.0,
            min_glyph_height: 9.0,
            max_glyph_height: 21.0,
            max_upscale: 4.0,
            max_output_pixels: 40_000_000,
            fix_orientation: true,
            orientation_check_below: 0.6,
            min_orientation_confidence: 2.0,
            enhance: EnhanceSteps::default(),
        }
    }
}

/// Median glyph height (see [`median_glyph_height`]) of 11 pt DejaVu Sans
/// exam text rendered at 300 dpi: measured 6, 7, 12, 15, 24, 32, 48 px at
/// 75, 100, 150, 200, 300, 400, 600 dpi. Used to report an equivalent
/// resolution to the engine.
pub const GLYPH_HEIGHT_AT_300_DPI: f32 = 24.0;

/// A page ready for the engine.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub image: GrayImage,
    /// Equivalent resolution to tell the engine, if text size was measured.
    pub ppi: Option<u32>,
    /// Applied scale factor (1.0 = untouched).
    pub scale: f32,
    /// Measured median glyph height before scaling, in pixels.
    pub glyph_height: Option<f32>,
    /// What the enhancement steps changed.
    pub enhanced: Enhanced,
}

/// Converts to 8-bit grayscale, runs the enabled enhancement steps, and
/// rescales text that is too small or too large towards
/// `opts.target_glyph_height`.
pub fn prepare(image: DynamicImage, opts: &PreprocessOptions) -> Prepared {
    let (gray, enhanced) = enhance_page(image.into_luma8(), &opts.enhance);
    // Deskewing grows the canvas (up to 1.5 times the pixels at 15°): keep the promise.
    let pixels = u64::from(gray.width()) * u64::from(gray.height());
    let gray = if pixels > opts.max_output_pixels {
        let s = (opts.max_output_pixels as f64 / pixels as f64).sqrt();
        let w = ((f64::from(gray.width()) * s).floor() as u32).max(1);
        let h = ((f64::from(gray.height()) * s).floor() as u32).max(1);
        resample(&gray, w, h)
    } else {
        gray
    };
    let glyph_height = median_glyph_height(&gray);
    let Some(measured) = glyph_height else {
        return Prepared {
            image: gray,
            ppi: None,
            scale: 1.0,
            glyph_height,
            enhanced,
        };
    };
    let mut scale = 1.0_f32;
    if opts.rescale && (measured < opts.min_glyph_height || measured > opts.max_glyph_height) {
        scale = (opts.target_glyph_height / measured).min(opts.max_upscale);
        let pixels = f64::from(gray.width()) * f64::from(gray.height());
        let cap = (opts.max_output_pixels as f64 / pixels).sqrt() as f32;
        scale = scale.min(cap);
    }
    let image = if (scale - 1.0).abs() > 0.01 {
        resize(&gray, scale)
    } else {
        scale = 1.0;
        gray
    };
    // Tesseract's accuracy did not change with or without the resolution
    // (it estimates one from x-heights), but telling it avoids a warning.
    let ppi = (300.0 * measured * scale / GLYPH_HEIGHT_AT_300_DPI).round() as u32;
    Prepared {
        image,
        ppi: Some(ppi),
        scale,
        glyph_height,
        enhanced,
    }
}

fn resize(gray: &GrayImage, scale: f32) -> GrayImage {
    let w = ((gray.width() as f32 * scale).round() as u32).max(1);
    let h = ((gray.height() as f32 * scale).round() as u32).max(1);
    resample(gray, w, h)
}

/// Resizes with Catmull-Rom when enlarging and an area-weighted triangle
/// filter when shrinking, in fixed point. `image::imageops::resize` gives the same
/// OCR accuracy but took 0.7–1.0 s per A4 page here (f32 RGBA intermediate);
/// this takes a few tens of milliseconds.
pub fn resample(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (width.max(1) as usize, height.max(1) as usize);
    let xs = contributions(sw, dw);
    let ys = contributions(sh, dh);
    let raw = src.as_raw();

    // Horizontal pass: sh rows of dw pixels.
    let mut mid = vec![0u8; dw * sh];
    for y in 0..sh {
        let row = &raw[y * sw..(y + 1) * sw];
        let out = &mut mid[y * dw..(y + 1) * dw];
        for (o, c) in out.iter_mut().zip(&xs) {
            *o = c.apply(|i| row[i]);
        }
    }
    // Vertical pass: dh rows, column taps read whole rows of `mid`.
    let mut dst = vec![0u8; dw * dh];
    let mut acc = vec![0i32; dw];
    for (y, c) in ys.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0);
        for (k, &wgt) in c.weights.iter().enumerate() {
            let row = &mid[(c.start + k) * dw..(c.start + k + 1) * dw];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += wgt * i32::from(p);
            }
        }
        for (d, &a) in dst[y * dw..(y + 1) * dw].iter_mut().zip(&acc) {
            *d = ((a + (1 << 13)) >> 14).clamp(0, 255) as u8;
        }
    }
    GrayImage::from_raw(width.max(1), height.max(1), dst)
        .unwrap_or_else(|| GrayImage::new(width.max(1), height.max(1)))
}

/// Source taps (first index + Q14 weights summing to 1<<14) for one output pixel.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

impl Taps {
    fn apply(&self, px: impl Fn(usize) -> u8) -> u8 {
        let sum: i32 = self
            .weights
            .iter()
            .enumerate()
            .map(|(k, &w)| w * i32::from(px(self.start + k)))
            .sum();
        ((sum + (1 << 13)) >> 14).clamp(0, 255) as u8
    }
}

fn contributions(src: usize, dst: usize) -> Vec<Taps> {
    let ratio = src as f64 / dst as f64;
    // Enlarging: Catmull-Rom cubic (sharper strokes than bilinear: CER 1.15%
    // vs 1.37% at 60 dpi). Shrinking: triangle widened to the ratio, so every
    // source pixel contributes (area-weighted, no aliasing of thin strokes).
    let (support, kernel): (f64, fn(f64) -> f64) = if ratio < 1.0 {
        (2.0, catmull_rom)
    } else {
        (ratio, |t| (1.0 - t).max(0.0))
    };
    let scale = ratio.max(1.0);
    (0..dst)
        .map(|i| {
            let center = (i as f64 + 0.5) * ratio - 0.5;
            let lo = ((center - support).floor() as i64 + 1).max(0) as usize;
            let hi = ((center + support).ceil() as i64 - 1)
                .min(src as i64 - 1)
                .max(lo as i64) as usize;
            let raw: Vec<f64> = (lo..=hi)
                .map(|j| kernel((j as f64 - center).abs() / scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let total = if total.abs() < f64::EPSILON {
                1.0
            } else {
                total
            };
            let mut weights: Vec<i32> = raw
                .iter()
                .map(|w| (w / total * f64::from(1 << 14)).round() as i32)
                .collect();
            // Put the rounding error on the largest tap so weights sum exactly.
            let err = (1 << 14) - weights.iter().sum::<i32>();
            if let Some(m) = (0..weights.len()).max_by(|&a, &b| raw[a].total_cmp(&raw[b])) {
                weights[m] += err;
            }
            Taps { start: lo, weights }
        })
        .collect()
}

/// Catmull-Rom cubic (Keys, a = -0.5) at distance `t >= 0`.
fn catmull_rom(t: f64) -> f64 {
    if t < 1.0 {
        1.5 * t * t * t - 2.5 * t * t + 1.0
    } else if t < 2.0 {
        -0.5 * t * t * t + 2.5 * t * t - 4.0 * t + 2.0
    } else {
        0.0
    }
}

/// Turns a page `degrees` (0, 90, 180, 270) counter-clockwise, undoing a
/// clockwise rotation of that size. Other values leave the page unchanged.
pub fn rotate_upright(page: GrayImage, degrees: u16) -> GrayImage {
    match degrees {
        90 => imageops::rotate270(&page),
        180 => imageops::rotate180(&page),
        270 => imageops::rotate90(&page),
        _ => page,
    }
}

/// Otsu's threshold of an 8-bit image: pixels `<=` it are "ink".
pub fn otsu_threshold(gray: &GrayImage) -> u8 {
    let mut hist = [0u64; 256];
    for &p in gray.as_raw() {
        hist[p as usize] += 1;
    }
    let total: u64 = hist.iter().sum();
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w_b, mut sum_b, mut best, mut best_t) = (0u64, 0f64, -1f64, 127u8);
    for (t, &c) in hist.iter().enumerate() {
        w_b += c;
        if w_b == 0 {
            continue;
        }
        let w_f = total - w_b;
        if w_f == 0 {
            break;
        }
        sum_b += t as f64 * c as f64;
        let m_b = sum_b / w_b as f64;
        let m_f = (sum_all - sum_b) / w_f as f64;
        let between = w_b as f64 * w_f as f64 * (m_b - m_f) * (m_b - m_f);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Estimates text size as the median height (pixels) of ink connected
/// components that look like glyphs, or `None` when there are too few of
/// them to trust (blank page, photo without text, one big blob).
///
/// Large pages are first shrunk by min-pooling (keeps thin dark strokes) so
/// the cost stays ~10 ms; the result is in original pixels.
pub fn median_glyph_height(gray: &GrayImage) -> Option<f32> {
    const WORK_PIXELS: u64 = 6_000_000;
    let pixels = u64::from(gray.width()) * u64::from(gray.height());
    let k = if pixels > WORK_PIXELS {
        ((pixels as f64 / WORK_PIXELS as f64).sqrt().ceil()) as u32
    } else {
        1
    };
    let small;
    let img = if k > 1 {
        small = min_pool(gray, k);
        &small
    } else {
        gray
    };
    let threshold = otsu_threshold(img);
    let ink_is_dark = {
        let dark = img.as_raw().iter().filter(|&&p| p <= threshold).count();
        // Text covers well under half of a page: the minority class is ink.
        dark * 2 <= img.as_raw().len()
    };
    let heights = component_heights(img, threshold, ink_is_dark)?;
    let mut glyphs: Vec<u32> = heights
        .into_iter()
        .filter(|&(w, h)| h >= 3 && h <= img.height() / 8 && w <= img.width() / 8 && w <= 4 * h)
        .map(|(_, h)| h)
        .collect();
    if glyphs.len() < 20 {
        return None;
    }
    let mid = glyphs.len() / 2;
    let (_, median, _) = glyphs.select_nth_unstable(mid);
    Some(*median as f32 * k as f32)
}

/// Shrinks by an integer factor keeping the darkest pixel of each block.
fn min_pool(gray: &GrayImage, k: u32) -> GrayImage {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let k = k as usize;
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut out = vec![255u8; ow * oh];
    for (y, row) in gray.as_raw().chunks_exact(w).enumerate() {
        let orow = &mut out[(y / k) * ow..(y / k + 1) * ow];
        for (o, block) in orow.iter_mut().zip(row.chunks(k)) {
            let m = block.iter().copied().min().unwrap_or(255);
            *o = (*o).min(m);
        }
    }
    GrayImage::from_raw(ow as u32, oh as u32, out).unwrap_or_else(|| GrayImage::new(1, 1))
}

/// Bounding-box (width, height) of every 8-connected ink component, found
/// with a run-length union-find in one pass. `None` if the image is so noisy
/// (too many runs) that the estimate would be meaningless and slow.
fn component_heights(img: &GrayImage, threshold: u8, ink_is_dark: bool) -> Option<Vec<(u32, u32)>> {
    const MAX_RUNS: usize = 4_000_000;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let is_ink = |p: u8| (p <= threshold) == ink_is_dark;

    // Per run: union-find parent and bounding box [x0, x1, y0, y1].
    let mut parent: Vec<u32> = Vec::new();
    let mut bbox: Vec<[u32; 4]> = Vec::new();
    let mut prev: Vec<(u32, u32, u32)> = Vec::new(); // (x0, x1 exclusive, run id)
    let mut cur: Vec<(u32, u32, u32)> = Vec::new();

    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            let gp = parent[parent[i as usize] as usize];
            parent[i as usize] = gp;
            i = gp;
        }
        i
    }

    for y in 0..h {
        let row = &raw[y * w..(y + 1) * w];
        cur.clear();
        let mut x = 0;
        while x < w {
            if !is_ink(row[x]) {
                x += 1;
                continue;
            }
            let x0 = x;
            while x < w && is_ink(row[x]) {
                x += 1;
            }
            let id = parent.len() as u32;
            if parent.len() >= MAX_RUNS {
                return None;
            }
            parent.push(id);
            bbox.push([x0 as u32, x as u32, y as u32, y as u32]);
            cur.push((x0 as u32, x as u32, id));
        }
        // Merge with overlapping runs of the previous row (8-connectivity:
        // touching diagonally counts, hence the +1 slack).
        let mut j = 0;
        for &(x0, x1, id) in &cur {
            while j < prev.len() && prev[j].1 < x0 {
                j += 1;
            }
            let mut k = j;
            while k < prev.len() && prev[k].0 <= x1 {
                let a = find(&mut parent, id);
                let b = find(&mut parent, prev[k].2);
                if a != b {
                    parent[a.max(b) as usize] = a.min(b);
                }
                k += 1;
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }

    // Fold run boxes into their roots.
    for i in 0..parent.len() {
        let r = find(&mut parent, i as u32) as usize;
        if r != i {
            let b = bbox[i];
            let rb = &mut bbox[r];
            rb[0] = rb[0].min(b[0]);
            rb[1] = rb[1].max(b[1]);
            rb[2] = rb[2].min(b[2]);
            rb[3] = rb[3].max(b[3]);
        }
    }
    Some(
        (0..parent.len())
            .filter(|&i| parent[i] == i as u32)
            .map(|i| {
                let b = bbox[i];
                (b[1] - b[0], b[3] - b[2] + 1)
            })
            .collect(),
    )
}
