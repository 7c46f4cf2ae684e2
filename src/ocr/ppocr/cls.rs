//! The optional text-line angle classifier (PP-OCRv5 `cls`, 0° vs 180°):
//! its input layout and its decision rule. The model call itself lives in
//! the engine. Promises: pure functions, no panics on any input.

use image::imageops::{self, FilterType};
use image::GrayImage;

/// Input height and width of the classifier.
pub const CLS_HEIGHT: u32 = 80;
pub const CLS_WIDTH: u32 = 160;

/// Writes `crop` into a `3×80×160` slice: scaled to height 80 keeping its
/// aspect ratio (at most 160 wide), normalised to `[-1, 1]`, the rest of
/// each row left as the caller filled it (0, as PaddleOCR pads).
pub fn write_cls_input(crop: &GrayImage, dst: &mut [f32]) {
    let plane = (CLS_HEIGHT * CLS_WIDTH) as usize;
    if dst.len() < 3 * plane || crop.width() == 0 || crop.height() == 0 {
        return;
    }
    let ratio = crop.width() as f32 / crop.height() as f32;
    let w = ((CLS_HEIGHT as f32 * ratio).ceil() as u32).clamp(1, CLS_WIDTH);
    let resized = imageops::resize(crop, w, CLS_HEIGHT, FilterType::Triangle);
    for (y, row) in resized.as_raw().chunks_exact(w as usize).enumerate() {
        for (x, p) in row.iter().enumerate() {
            let v = *p as f32 / 127.5 - 1.0;
            for c in 0..3 {
                dst[c * plane + y * CLS_WIDTH as usize + x] = v;
            }
        }
    }
}

/// True when the classifier's two outputs `[p(0°), p(180°)]` say the line
/// is upside down with at least `min_prob`. PaddleOCR's default threshold is
/// 0.9: a wrong turn ruins a line, a missed one only leaves it as it was.
pub fn is_upside_down(probs: &[f32], min_prob: f32) -> bool {
    match probs {
        [p0, p180, ..] => p180 > p0 && *p180 >= min_prob,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn decision() {
        assert!(is_upside_down(&[0.05, 0.95], 0.9));
        assert!(!is_upside_down(&[0.15, 0.85], 0.9));
        assert!(!is_upside_down(&[0.95, 0.05], 0.9));
        assert!(!is_upside_down(&[0.5], 0.9));
        assert!(!is_upside_down(&[f32::NAN, f32::NAN], 0.9));
    }

    #[test]
    fn input_keeps_aspect_and_pads() {
        let mut buf = vec![0.0f32; 3 * 80 * 160];
        write_cls_input(&GrayImage::from_pixel(40, 40, Luma([255])), &mut buf);
        assert_eq!(buf[79], 1.0);
        assert_eq!(buf[80], 0.0);
        write_cls_input(&GrayImage::new(0, 0), &mut buf);
        write_cls_input(&GrayImage::from_pixel(40, 40, Luma([0])), &mut [0.0; 3]);
    }
}
