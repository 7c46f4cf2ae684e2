//! The image path of an upload: content sniffing in the fetch stage, then decoding with
//! decompression-bomb limits in the OCR stage.
//!
//! Checks, for any bytes: no panic and no allocation beyond the limits' budget (libFuzzer's
//! RSS limit catches that); the fetch stage and the decoder agree on what is an image (so
//! nothing the fetcher admits is then refused as "not an image" by OCR, and nothing OCR could
//! read is refused by the fetcher); a decoded image respects the pixel and side caps.
#![no_main]

use examiner::fetch::sniff_image_type;
use examiner::ocr::{decode, sniff, DecodeLimits, OcrError};
use libfuzzer_sys::fuzz_target;

/// Small caps so the fuzzer reaches the limit checks with small inputs.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
    max_side: 4096,
};

fn mime(format: image::ImageFormat) -> &'static str {
    format.to_mime_type()
}

fuzz_target!(|data: &[u8]| {
    let fetched_as = sniff_image_type(data);
    let decodes_as = sniff(data).map(mime);
    assert_eq!(
        fetched_as,
        decodes_as,
        "fetch and OCR disagree on the type of {:02x?}",
        &data[..data.len().min(32)]
    );
    match decode(data, &LIMITS) {
        Ok(image) => {
            assert!(decodes_as.is_some());
            let (w, h) = (image.width(), image.height());
            assert!(w > 0 && h > 0);
            assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels, "{w}x{h}");
            assert!(w <= LIMITS.max_side && h <= LIMITS.max_side, "{w}x{h}");
        }
        Err(OcrError::UnsupportedFormat) => {}
        Err(OcrError::TooManyPixels { .. } | OcrError::SideTooLong { .. }) => {
            assert!(decodes_as.is_some());
        }
        Err(OcrError::Corrupt(_)) => assert!(decodes_as.is_some()),
        Err(other) => panic!("decoding cannot fail with {other:?}"),
    }
});
