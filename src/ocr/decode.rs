//! Image decoding for untrusted uploads. Owns format sniffing (magic bytes,
//! never file names or Content-Type) and decoding with safety caps: the pixel
//! count and side length are checked against [`DecodeLimits`] from the header
//! alone, *before* any pixel buffer is allocated, so a decompression bomb (a
//! few hundred bytes declaring 100000x100000 pixels) is refused in
//! microseconds. Promises: only PNG, JPEG, TIFF, WebP, BMP and GIF (first
//! frame) are decoded; EXIF orientation (phone photos) is applied so the
//! result is upright as the camera saw it; every failure is one of
//! [`OcrError::UnsupportedFormat`], [`OcrError::TooManyPixels`],
//! [`OcrError::SideTooLong`] or [`OcrError::Corrupt`] — never a panic.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::OcrError;

/// Caps applied while decoding. Defaults: 40 megapixels, 20 000 px per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`. 40 MP covers an A4 page scanned at
    /// 600 dpi (35 MP) and phone photos; decoded RGBA16 that is 320 MB, so the
    /// cap is also the per-worker memory bound.
    pub max_pixels: u64,
    /// Longest accepted side. Stops degenerate strips (1 x 40 000 000) that
    /// pass the pixel cap but are not pages.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            max_side: 20_000,
        }
    }
}

/// Identifies a supported image format from its first bytes, or `None` for
/// anything else (HTML error pages, PDFs, text, truncated headers).
///
/// Cheap (looks at ≤ 26 bytes), so the fetch stage can reject non-images
/// before queueing them for OCR.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        return Some(ImageFormat::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageFormat::Jpeg);
    }
    // Classic TIFF (42) and BigTIFF (43), both byte orders.
    if bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*")
        || bytes.starts_with(b"II+\0")
        || bytes.starts_with(b"MM\0+")
    {
        return Some(ImageFormat::Tiff);
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some(ImageFormat::WebP);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some(ImageFormat::Gif);
    }
    // "BM" alone is too weak a signature (any text may start with it), so
    // also require a known DIB header size at offset 14.
    if bytes.len() >= 18 && bytes.starts_with(b"BM") {
        let dib = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
        if matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124) {
            return Some(ImageFormat::Bmp);
        }
    }
    None
}

/// Decodes an untrusted image, enforcing `limits` from the header before
/// allocating pixels, and applies EXIF orientation.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, OcrError> {
    decode_upright(bytes, limits).map(|(image, _)| image)
}

/// [`decode`], also telling whether EXIF orientation changed the image (so a
/// caller that forwards the original bytes knows they would display turned).
pub fn decode_upright(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(DynamicImage, bool), OcrError> {
    let format = sniff(bytes).ok_or(OcrError::UnsupportedFormat)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Only a memory budget here: the width/height caps are checked below so
    // the error can carry the declared size. The budget is what the decoded
    // image may need at 8 bytes/pixel (RGBA16, the widest format we enable)
    // plus slack for decoder scratch buffers.
    let mut budget = Limits::default();
    budget.max_image_width = None;
    budget.max_image_height = None;
    budget.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(budget.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_error(e, None, limits))?;

    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    // Decoders other than PNG ignore limits given to the reader (see
    // ImageReader::make_decoder), so set them on the decoder as well.
    decoder
        .set_limits(budget)
        .map_err(|e| map_error(e, Some((width, height)), limits))?;
    // A malformed EXIF block is not worth refusing the page for.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| map_error(e, Some((width, height)), limits))?;
    image.apply_orientation(orientation);
    Ok((
        image,
        orientation != image::metadata::Orientation::NoTransforms,
    ))
}

/// Checks a (declared) image size against the caps.
pub fn check_size(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), OcrError> {
    if width == 0 || height == 0 {
        return Err(OcrError::Corrupt(format!(
            "image declares an empty size {width}x{height}"
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(OcrError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(OcrError::SideTooLong {
            width,
            height,
            max_side: limits.max_side,
        });
    }
    Ok(())
}

fn map_error(err: ImageError, size: Option<(u32, u32)>, limits: &DecodeLimits) -> OcrError {
    match err {
        ImageError::Unsupported(e) => {
            // A sniffed format whose *variant* we cannot decode (e.g. a TIFF
            // compression scheme) is still an unsupported format to callers.
            tracing::debug!(error = %e, "image variant not supported");
            OcrError::UnsupportedFormat
        }
        ImageError::Limits(_) => {
            let (width, height) = size.unwrap_or((0, 0));
            OcrError::TooManyPixels {
                width,
                height,
                max: limits.max_pixels,
            }
        }
        ImageError::IoError(e) => OcrError::Corrupt(format!("truncated or unreadable: {e}")),
        other => OcrError::Corrupt(other.to_string()),
    }
}
