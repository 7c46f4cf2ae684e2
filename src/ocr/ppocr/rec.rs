//! Text recognition around the PP-OCRv5 CRNN/CTC model: cutting a text box
//! out of the page (rotated, bilinear), narrowing it to the band of the
//! line's main body, height-normalising it into the network's `3×48×W`
//! input, and greedy CTC decoding of the network's per-frame class
//! probabilities into text with confidences. Promises: pure functions, no
//! panics on any input (degenerate boxes give tiny white crops, short or
//! malformed probability tensors decode to empty text).

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};

use super::det::RotRect;

/// Height of the recogniser's input.
pub const REC_HEIGHT: u32 = 48;

/// Cuts `rect` out of `page` upright, at the page's resolution (bilinear
/// sampling; outside the page the nearest edge pixel is repeated). Sizes
/// are clamped to `1..=8192` so a wild box cannot allocate without bound.
pub fn crop_rotated(page: &GrayImage, rect: &RotRect) -> GrayImage {
    let w = finite_or(rect.w, 1.0).round().clamp(1.0, 8192.0) as u32;
    let h = finite_or(rect.h, 1.0).round().clamp(1.0, 8192.0) as u32;
    let mut out = GrayImage::from_pixel(w, h, Luma([255]));
    if page.width() == 0 || page.height() == 0 {
        return out;
    }
    let (s, c) = finite_or(rect.angle, 0.0).sin_cos();
    let (cx, cy) = (finite_or(rect.cx, 0.0), finite_or(rect.cy, 0.0));
    for v in 0..h {
        let dv = v as f32 + 0.5 - h as f32 / 2.0;
        for u in 0..w {
            let du = u as f32 + 0.5 - w as f32 / 2.0;
            let x = cx + du * c - dv * s - 0.5;
            let y = cy + du * s + dv * c - 0.5;
            out.put_pixel(u, v, Luma([bilinear(page, x, y)]));
        }
    }
    out
}

fn finite_or(v: f32, d: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        d
    }
}

fn bilinear(img: &GrayImage, x: f32, y: f32) -> u8 {
    let (wm, hm) = ((img.width() - 1) as f32, (img.height() - 1) as f32);
    let x = x.clamp(0.0, wm);
    let y = y.clamp(0.0, hm);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as u32, y0 as u32);
    let (x1, y1) = (
        (x0 + 1).min(img.width() - 1),
        (y0 + 1).min(img.height() - 1),
    );
    let p = |x: u32, y: u32| img.get_pixel(x, y).0[0] as f32;
    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
    let bot = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
    (top * (1.0 - fy) + bot * fy).round().clamp(0.0, 255.0) as u8
}

/// Otsu's threshold of a grayscale image (0 for an empty one).
pub fn otsu(img: &GrayImage) -> u8 {
    let mut hist = [0u64; 256];
    for p in img.as_raw() {
        hist[*p as usize] += 1;
    }
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n as f64)
        .sum();
    let (mut wb, mut sb, mut best, mut best_t) = (0f64, 0f64, -1f64, 0u8);
    for (t, &n) in hist.iter().enumerate() {
        wb += n as f64;
        if wb == 0.0 {
            continue;
        }
        let wf = total as f64 - wb;
        if wf == 0.0 {
            break;
        }
        sb += t as f64 * n as f64;
        let (mb, mf) = (sb / wb, (sum - sb) / wf);
        let between = wb * wf * (mb - mf) * (mb - mf);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Rows `top..bottom` of a line crop to recognise. Handwritten lines carry
/// tall ascender and descender loops, so the detector's box can be 4-6×
/// the height of the letters' main body; scaling that whole box to 48 px
/// leaves the body a few pixels tall and recognition collapses (one dev
/// page went from CER 83% to 15%). The body is found from the row profile
/// of dark pixels (rows holding at least `frac` of the densest row's ink)
/// and the band kept is `factor` times its height, centred on it. `None`
/// when the crop has no ink or the band would be the whole crop anyway.
pub fn body_band(crop: &GrayImage, factor: f32, frac: f32) -> Option<(u32, u32)> {
    if factor.is_nan() || factor <= 0.0 || crop.height() < 4 || crop.width() == 0 {
        return None;
    }
    let t = otsu(crop);
    let w = crop.width() as usize;
    let profile: Vec<usize> = crop
        .as_raw()
        .chunks_exact(w)
        .map(|row| row.iter().filter(|&&p| p <= t).count())
        .collect();
    let max = *profile.iter().max()?;
    if max == 0 {
        return None;
    }
    let cut = (max as f32 * frac).max(1.0);
    let first = profile.iter().position(|&n| n as f32 >= cut)?;
    let last = profile.iter().rposition(|&n| n as f32 >= cut)?;
    let body = ((last + 1 - first) as f32).max(4.0);
    let mid = (first + last + 1) as f32 / 2.0;
    let top = (mid - body * factor / 2.0).max(0.0) as u32;
    let bottom = ((mid + body * factor / 2.0).ceil() as u32).min(crop.height());
    if bottom <= top + 1 || (top == 0 && bottom == crop.height()) {
        return None;
    }
    Some((top, bottom))
}

/// Width the crop gets when scaled to [`REC_HEIGHT`], at least 8 and at
/// most `max_width`.
pub fn rec_width(crop: &GrayImage, max_width: u32) -> u32 {
    let h = crop.height().max(1) as f32;
    ((crop.width() as f32 * REC_HEIGHT as f32 / h).round() as u32).clamp(8, max_width.max(8))
}

/// Scales `crop` to `REC_HEIGHT × width` and writes it into `dst`, a
/// `3×48×stride` channel-major slice (the rest of each row, up to `stride`,
/// is padding the caller filled). Pixels are normalised to `[-1, 1]` as the
/// model was trained.
pub fn write_rec_input(crop: &GrayImage, width: u32, stride: usize, dst: &mut [f32]) {
    let width = width.max(1);
    let resized = imageops::resize(crop, width, REC_HEIGHT, FilterType::Triangle);
    let plane = REC_HEIGHT as usize * stride;
    if dst.len() < 3 * plane || (width as usize) > stride {
        return;
    }
    for (y, row) in resized.as_raw().chunks_exact(width as usize).enumerate() {
        for (x, p) in row.iter().enumerate() {
            let v = *p as f32 / 127.5 - 1.0;
            for c in 0..3 {
                dst[c * plane + y * stride + x] = v;
            }
        }
    }
}

/// One character emitted by the CTC decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtcChar {
    /// Class index (never the blank).
    pub class: usize,
    /// First and last frame of the run of frames that emitted it.
    pub first: usize,
    pub last: usize,
    /// Highest probability within the run.
    pub prob: f32,
}

/// Greedy CTC decoding result for one line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CtcDecoded {
    pub text: String,
    /// Mean probability of the emitted characters; 0 when none was emitted.
    pub confidence: f32,
    pub chars: Vec<CtcChar>,
}

/// The character table: class 0 is the CTC blank, every other class maps
/// to one string (the dictionary's last entry is a space).
#[derive(Debug, Clone)]
pub struct Charset {
    symbols: Vec<String>,
}

impl Charset {
    /// Builds the table from the lines of `ppocr_keys_v5.txt`, which already
    /// holds the blank as its first line.
    pub fn from_keys(text: &str) -> Self {
        let mut symbols: Vec<String> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect();
        // A trailing newline leaves one empty string that is not a class.
        if symbols.last().is_some_and(|s| s.is_empty()) {
            symbols.pop();
        }
        if let Some(first) = symbols.first_mut() {
            first.clear();
        }
        Self { symbols }
    }

    /// Number of classes, blank included.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The string of a class ("" for the blank or an unknown class).
    pub fn symbol(&self, class: usize) -> &str {
        self.symbols.get(class).map_or("", String::as_str)
    }

    /// The class of a one-character string, if any (linear scan: only used
    /// for the few letters of lexicon candidates, through a cache).
    pub fn class_of(&self, ch: char) -> Option<usize> {
        let mut buf = [0u8; 4];
        let s = ch.encode_utf8(&mut buf);
        self.symbols
            .iter()
            .skip(1)
            .position(|x| x == s)
            .map(|i| i + 1)
    }
}

/// Greedy CTC decoding of `probs` (`frames × classes`, row-major, already
/// softmax-normalised as the PP-OCRv5 model outputs them): per frame the
/// most likely class; runs of the same class collapse to one; blanks
/// separate repeats and are dropped. Leading and trailing spaces are
/// trimmed and inner runs of spaces collapse to one.
pub fn ctc_greedy(probs: &[f32], frames: usize, classes: usize, charset: &Charset) -> CtcDecoded {
    let mut chars: Vec<CtcChar> = Vec::new();
    if classes == 0 || probs.len() < frames.saturating_mul(classes) {
        return CtcDecoded::default();
    }
    let mut prev = 0usize;
    for (t, row) in probs.chunks_exact(classes).take(frames).enumerate() {
        let (mut best, mut p) = (0usize, f32::MIN);
        for (k, &v) in row.iter().enumerate() {
            if v > p {
                best = k;
                p = v;
            }
        }
        if best != 0 {
            if best == prev {
                if let Some(last) = chars.last_mut() {
                    last.last = t;
                    last.prob = last.prob.max(p);
                }
            } else {
                chars.push(CtcChar {
                    class: best,
                    first: t,
                    last: t,
                    prob: p,
                });
            }
        }
        prev = best;
    }
    // Drop spaces at the ends and doubled spaces inside.
    let is_space = |c: &CtcChar| charset.symbol(c.class).trim().is_empty();
    let mut kept: Vec<CtcChar> = Vec::with_capacity(chars.len());
    for c in chars {
        if is_space(&c) && kept.last().is_none_or(is_space) {
            continue;
        }
        kept.push(c);
    }
    while kept.last().is_some_and(is_space) {
        kept.pop();
    }
    let text: String = kept
        .iter()
        .map(|c| {
            let s = charset.symbol(c.class);
            if s.trim().is_empty() {
                " "
            } else {
                s
            }
        })
        .collect();
    let confidence = if kept.is_empty() {
        0.0
    } else {
        kept.iter().map(|c| c.prob).sum::<f32>() / kept.len() as f32
    };
    CtcDecoded {
        text,
        confidence: if confidence.is_finite() {
            confidence.clamp(0.0, 1.0)
        } else {
            0.0
        },
        chars: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charset() -> Charset {
        Charset::from_keys("blank\na\nb\nc\n \n")
    }

    /// One frame per entry: (class, prob); the rest of the mass goes to blank
    /// (or to class 1 when the frame is a blank).
    fn frames(seq: &[(usize, f32)], classes: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for &(k, p) in seq {
            let mut row = vec![0.0; classes];
            row[k] = p;
            let other = if k == 0 { 1 } else { 0 };
            row[other] += 1.0 - p;
            out.extend(row);
        }
        out
    }

    #[test]
    fn keys_file_blank_and_space() {
        let cs = charset();
        assert_eq!(cs.len(), 5);
        assert_eq!(cs.symbol(0), "");
        assert_eq!(cs.symbol(4), " ");
        assert_eq!(cs.symbol(99), "");
        assert_eq!(cs.class_of('c'), Some(3));
        assert_eq!(cs.class_of('z'), None);
    }

    #[test]
    fn collapses_repeats_and_drops_blanks() {
        let cs = charset();
        // a a _ a b b _ _ c  -> "aabc"
        let seq = [
            (1, 0.9),
            (1, 0.8),
            (0, 0.9),
            (1, 0.7),
            (2, 0.6),
            (2, 0.95),
            (0, 0.9),
            (0, 0.9),
            (3, 0.6),
        ];
        let d = ctc_greedy(&frames(&seq, 5), seq.len(), 5, &cs);
        assert_eq!(d.text, "aabc");
        assert_eq!(d.chars.len(), 4);
        assert_eq!((d.chars[0].first, d.chars[0].last), (0, 1));
        assert_eq!((d.chars[2].first, d.chars[2].last), (4, 5));
        assert!((d.chars[2].prob - 0.95).abs() < 1e-6);
        assert!((d.confidence - (0.9 + 0.7 + 0.95 + 0.6) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn space_class_is_trimmed_and_collapsed() {
        let cs = charset();
        // _ ' ' a ' ' _ ' ' b ' '  -> "a b"
        let seq = [
            (0, 0.9),
            (4, 0.9),
            (1, 0.9),
            (4, 0.9),
            (0, 0.9),
            (4, 0.9),
            (2, 0.9),
            (4, 0.9),
        ];
        let d = ctc_greedy(&frames(&seq, 5), seq.len(), 5, &cs);
        assert_eq!(d.text, "a b");
        assert_eq!(d.chars.len(), 3);
    }

    #[test]
    fn empty_and_malformed_inputs() {
        let cs = charset();
        assert_eq!(ctc_greedy(&[], 0, 5, &cs), CtcDecoded::default());
        assert_eq!(ctc_greedy(&[0.5; 7], 2, 5, &cs), CtcDecoded::default());
        assert_eq!(ctc_greedy(&[0.5; 10], 2, 0, &cs), CtcDecoded::default());
        let blanks = frames(&[(0, 0.99), (0, 0.99)], 5);
        let d = ctc_greedy(&blanks, 2, 5, &cs);
        assert_eq!((d.text.as_str(), d.confidence), ("", 0.0));
        // Classes beyond the charset decode to nothing rather than panicking.
        let d = ctc_greedy(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], 1, 7, &cs);
        assert_eq!(d.text, "");
    }

    #[test]
    fn crop_of_axis_aligned_rect_copies_pixels() {
        let page = GrayImage::from_fn(40, 30, |x, y| Luma([(x * 5 + y) as u8]));
        let r = RotRect {
            cx: 20.0,
            cy: 15.0,
            w: 10.0,
            h: 6.0,
            angle: 0.0,
        };
        let c = crop_rotated(&page, &r);
        assert_eq!(c.dimensions(), (10, 6));
        assert_eq!(c.get_pixel(0, 0).0[0], page.get_pixel(15, 12).0[0]);
        assert_eq!(c.get_pixel(9, 5).0[0], page.get_pixel(24, 17).0[0]);
        let wild = RotRect {
            cx: f32::NAN,
            cy: 1e9,
            w: f32::INFINITY,
            h: -3.0,
            angle: f32::NAN,
        };
        let c = crop_rotated(&page, &wild);
        assert!(c.width() >= 1 && c.height() >= 1);
        let _ = crop_rotated(&GrayImage::new(0, 0), &r);
    }

    #[test]
    fn body_band_finds_the_main_body() {
        // A 100-row crop: body ink in rows 40..60, a thin ascender stroke
        // from row 5 and a descender to row 95.
        let img = GrayImage::from_fn(200, 100, |x, y| {
            let body = (40..60).contains(&y) && x % 3 != 0;
            let stroke = x == 50 && (5..95).contains(&y);
            Luma([if body || stroke { 0 } else { 255 }])
        });
        let (t, b) = body_band(&img, 3.0, 0.35).unwrap();
        assert_eq!((t, b), (20, 80));
        assert!(body_band(&GrayImage::from_pixel(50, 20, Luma([255])), 3.0, 0.35).is_none());
        assert!(body_band(&GrayImage::new(0, 0), 3.0, 0.35).is_none());
    }

    #[test]
    fn rec_input_layout() {
        let crop = GrayImage::from_pixel(96, 24, Luma([255]));
        let w = rec_width(&crop, 2000);
        assert_eq!(w, 192);
        let stride = 200;
        let mut buf = vec![-1.0f32; 3 * 48 * stride];
        write_rec_input(&crop, w, stride, &mut buf);
        assert_eq!(buf[0], 1.0);
        assert_eq!(buf[191], 1.0);
        assert_eq!(buf[192], -1.0);
        assert_eq!(buf[2 * 48 * stride + 47 * stride + 191], 1.0);
        assert_eq!(rec_width(&GrayImage::new(0, 0), 10), 8);
    }
}
