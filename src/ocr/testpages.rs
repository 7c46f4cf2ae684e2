//! Synthetic answer pages for tests and the benchmark: renders known,
//! exam-answer-like text onto white A4 pages with ab_glyph/imageproc so OCR
//! output can be scored against the exact reference. Compiled only for tests
//! (`#[cfg(test)]` in mod.rs) and included by `benches/ocr.rs` via `#[path]`,
//! so it may use dev-dependencies.

#![allow(dead_code)] // each includer uses a different subset

use ab_glyph::{FontVec, PxScale};
use image::{GrayImage, Luma};

/// DejaVu Sans, installed with the fonts-dejavu-core Debian package.
pub const FONT_SANS: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// DejaVu Serif, same package.
pub const FONT_SERIF: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf";

/// A4 in inches.
pub const A4_IN: (f32, f32) = (8.27, 11.69);

pub fn load_font(path: &str) -> FontVec {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("test font {path}: {e}"));
    FontVec::try_from_vec(bytes).unwrap_or_else(|e| panic!("test font {path}: {e}"))
}

/// Paragraphs in the style of accounting / economics exam answers: question
/// labels, numbers, percentages, brackets and ordinary punctuation. Quotes and
/// dashes are left out on purpose: OCR legitimately emits typographic variants
/// of them, which would measure normalisation rather than recognition.
pub const PARAGRAPHS: &[&str] = &[
    "Q1 (a) The going concern concept assumes that the business will continue to operate for the foreseeable future, at least twelve months from the reporting date. Assets are therefore valued at cost less depreciation rather than at their break-up value.",
    "(b) Under the accruals concept, revenue and expenses are recognised when they are earned or incurred, not when cash is received or paid. For example, rent of 12,000 paid on 1 October for one year gives an expense of 3,000 for the year ending 31 December.",
    "Q2 Depreciation on the straight line basis: cost 48,000 less residual value 6,000 gives 42,000 over 7 years, so the annual charge is 6,000. Using the reducing balance method at 25% the first year charge is 12,000 and the second year charge is 9,000.",
    "Q3 (i) Gross profit = Sales - Cost of sales = 250,000 - 162,500 = 87,500. The gross margin is 87,500 / 250,000 x 100 = 35%. (ii) The mark up on cost is 87,500 / 162,500 x 100 = 53.8% to one decimal place.",
    "Q4 A bank reconciliation explains the difference between the cash book balance and the bank statement balance. Items such as unpresented cheques (4,250), outstanding lodgements (1,980) and bank charges (35) must be adjusted before the two balances agree.",
    "Q5 (a) Price elasticity of demand measures the responsiveness of quantity demanded to a change in price. If price rises from 20 to 22 and quantity falls from 500 to 425 units, PED = -15% / 10% = -1.5, so demand is price elastic.",
    "(b) When demand is elastic, a fall in price increases total revenue; when demand is inelastic, a rise in price increases total revenue. Firms selling necessities with few substitutes, such as fuel or medicines, often face inelastic demand.",
    "Q6 The current ratio is current assets divided by current liabilities: 84,000 / 56,000 = 1.5 : 1. The quick ratio excludes inventory of 30,000, giving 54,000 / 56,000 = 0.96 : 1, which suggests the company may struggle to pay its short term debts.",
    "Q7 Internal controls include segregation of duties, authorisation limits, physical controls over assets and regular reconciliations. They reduce the risk of fraud and error; however, collusion between two members of staff can still defeat segregation of duties.",
    "Q8 (a) Fixed costs do not change with the level of output in the short run, for example rent of 9,600 per year. (b) Variable costs change in direct proportion to output, such as raw materials at 4.50 per unit. Break-even point = 9,600 / (12.50 - 4.50) = 1,200 units.",
    "Q9 The prudence concept requires that income and assets are not overstated and expenses and liabilities are not understated. An allowance for doubtful debts of 2% on receivables of 35,000, that is 700, is an application of prudence.",
    "Q10 Inflation of 6.2% reduces the real value of savings and fixed incomes. The central bank may raise the interest rate from 4.0% to 4.75% to reduce borrowing and aggregate demand, although higher rates can also slow economic growth and increase unemployment.",
];

/// Text for page `index` (any number; pages cycle through [`PARAGRAPHS`]
/// with a different starting point so consecutive pages differ).
pub fn page_text(index: usize, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|k| PARAGRAPHS[(index * 5 + k) % PARAGRAPHS.len()])
        .collect::<Vec<_>>()
        .join("\n")
}

/// How to lay out a page.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub dpi: f32,
    /// Font size in points.
    pub points: f32,
    /// Page size in inches.
    pub page_in: (f32, f32),
    pub margin_in: f32,
    /// Line pitch as a multiple of the font size.
    pub leading: f32,
}

impl Layout {
    /// An A4 page at `dpi`, 11 pt text, 1 inch margins.
    pub fn a4(dpi: f32) -> Self {
        Self {
            dpi,
            points: 11.0,
            page_in: A4_IN,
            margin_in: 1.0,
            leading: 1.35,
        }
    }
}

/// Renders `text` (paragraphs separated by `\n`) word-wrapped onto a white
/// page. Returns the image and the reference: the words that fit, in order.
pub fn render(text: &str, font: &FontVec, layout: Layout) -> (GrayImage, String) {
    let px = layout.points / 72.0 * layout.dpi;
    let scale = PxScale::from(px);
    let width = (layout.page_in.0 * layout.dpi).round() as u32;
    let height = (layout.page_in.1 * layout.dpi).round() as u32;
    let margin = (layout.margin_in * layout.dpi).round() as i32;
    let max_line = width as i32 - 2 * margin;
    let pitch = (px * layout.leading).round() as i32;
    let mut page = GrayImage::from_pixel(width, height, Luma([255]));
    let mut reference: Vec<String> = Vec::new();
    let mut y = margin;
    'paragraphs: for para in text.split('\n') {
        let mut line = String::new();
        let words: Vec<&str> = para.split_whitespace().collect();
        let mut i = 0;
        while i <= words.len() {
            let flush = if i == words.len() {
                !line.is_empty()
            } else {
                let candidate = if line.is_empty() {
                    words[i].to_string()
                } else {
                    format!("{line} {}", words[i])
                };
                let (w, _) = imageproc::drawing::text_size(scale, font, &candidate);
                if (w as i32) <= max_line || line.is_empty() {
                    line = candidate;
                    i += 1;
                    continue;
                }
                true
            };
            if flush {
                if y + pitch > height as i32 - margin {
                    break 'paragraphs;
                }
                imageproc::drawing::draw_text_mut(
                    &mut page,
                    Luma([0]),
                    margin,
                    y,
                    scale,
                    font,
                    &line,
                );
                reference.push(std::mem::take(&mut line));
                y += pitch;
            }
            if i == words.len() {
                break;
            }
        }
        y += pitch / 2; // paragraph gap
    }
    (page, reference.join("\n"))
}

/// Encodes a grayscale page as PNG bytes.
pub fn png(page: &GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    page.write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding of an in-memory image");
    out.into_inner()
}

/// Encodes a grayscale page as JPEG bytes at `quality`.
pub fn jpeg(page: &GrayImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(page)
        .expect("JPEG encoding of an in-memory image");
    out
}

/// `jpeg` with an EXIF block saying how to turn it for display (EXIF orientation
/// 1..=8; 6 is "rotate 90° clockwise"), as phone cameras write it.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at 8
    app1.extend_from_slice(&[0, 1]); // one entry
    app1.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]); // Orientation
    app1.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
    let mut tagged = jpeg[..2].to_vec(); // SOI
    tagged.extend_from_slice(&[0xFF, 0xE1]);
    tagged.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    tagged.extend_from_slice(&app1);
    tagged.extend_from_slice(&jpeg[2..]);
    tagged
}

/// A PDF as a scanner writes one: each page is one JPEG (`DCTDecode`, grayscale)
/// drawn over the whole page, whose size in points is the image's at `dpi`.
/// Written by hand (catalog, page tree, one page, image and content stream per
/// page, cross-reference table) so tests need no PDF library of their own.
pub fn scanned_pdf(pages: &[(GrayImage, f32)]) -> Vec<u8> {
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", 3 + 3 * i))
        .collect();
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    ];
    for (i, (image, dpi)) in pages.iter().enumerate() {
        let (w, h) = (
            image.width() as f32 * 72.0 / dpi,
            image.height() as f32 * 72.0 / dpi,
        );
        let (image_ref, content_ref) = (4 + 3 * i, 5 + 3 * i);
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w:.2} {h:.2}] \
                 /Resources << /XObject << /Im0 {image_ref} 0 R >> >> /Contents {content_ref} 0 R >>"
            )
            .into_bytes(),
        );
        objects.push(image_object(image));
        objects.push(content_stream(&format!(
            "q {w:.2} 0 0 {h:.2} 0 0 cm /Im0 Do Q"
        )));
    }
    pdf_of(&objects)
}

/// A one-page PDF (US Letter) whose page is drawn by `content`, a content stream.
pub fn drawn_pdf(content: &str) -> Vec<u8> {
    pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        content_stream(content),
    ])
}

/// A one-page PDF (US Letter) as a word processor writes one: `content` draws with
/// Helvetica (WinAnsi) as `/F1`, and `image` (if any) is `/Im0`, a grayscale JPEG.
pub fn typed_pdf(content: &str, image: Option<&GrayImage>) -> Vec<u8> {
    annotated_pdf(content, image, "")
}

/// [`typed_pdf`] with `annotations`, the entries of the page's `/Annots` array.
pub fn annotated_pdf(content: &str, image: Option<&GrayImage>, annotations: &str) -> Vec<u8> {
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> /XObject << /Im0 6 0 R >> >> \
             /Annots [{annotations}] >>"
        )
        .into_bytes(),
        content_stream(content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ];
    let blank = GrayImage::new(1, 1);
    objects.push(image_object(image.unwrap_or(&blank)));
    pdf_of(&objects)
}

/// A content stream showing `lines` in 12 pt Helvetica from the top left of a Letter page,
/// one line every 16 pt.
pub fn typed_lines(lines: &[&str]) -> String {
    let shown: Vec<String> = lines
        .iter()
        .map(|line| {
            let escaped = line
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            format!("({escaped}) Tj T*")
        })
        .collect();
    format!("BT /F1 12 Tf 16 TL 72 720 Td {} ET", shown.join(" "))
}

/// `image` as a grayscale JPEG image object.
fn image_object(image: &GrayImage) -> Vec<u8> {
    let data = jpeg(image, 90);
    let mut stream = format!(
        "<< /Type /XObject /Subtype /Image /Width {} /Height {} /ColorSpace /DeviceGray \
         /BitsPerComponent 8 /Filter /DCTDecode /Length {} >>\nstream\n",
        image.width(),
        image.height(),
        data.len()
    )
    .into_bytes();
    stream.extend_from_slice(&data);
    stream.extend_from_slice(b"\nendstream");
    stream
}

fn content_stream(content: &str) -> Vec<u8> {
    format!(
        "<< /Length {} >>\nstream\n{content}\nendstream",
        content.len()
    )
    .into_bytes()
}

/// The objects numbered from 1 in order (the first the catalog), with their cross-reference
/// table and trailer.
fn pdf_of(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::new();
    for body in objects {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", offsets.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1).as_bytes(),
    );
    for offset in &offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            offsets.len() + 1
        )
        .as_bytes(),
    );
    out
}
