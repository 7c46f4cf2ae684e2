//! A typed page's own text. A script typed in a word processor and saved as PDF carries its
//! words as glyphs with Unicode meanings: read from there they are exact, where OCR of the
//! rendered page would guess at them, and reading them costs a fraction of rendering.
//!
//! Only a page that is plainly typed is read this way; any other goes to OCR as before, so
//! what is graded is what an examiner looking at the page would read, and text a viewer does
//! not show cannot reach the grader unseen:
//! - some visible text, nearly all of it with a known Unicode meaning (fonts without one
//!   would give garbage);
//! - no text hidden from the eye: drawn invisible (a scanner's own OCR layer, which is ours
//!   to do), white or faint, under 2 pt, off the page or outside its clip, in a
//!   see-through or masked group, covered by a later picture, shape or other text, or over
//!   an earlier picture or a shape of a colour too close to its own;
//! - images over at most a fifth of the page (a scan is an image of the whole page);
//! - little drawn by hand: few paths, and few points on curved or slanting ones
//!   (handwriting with a stylus is hundreds of strokes of many points each; a typed page's
//!   underlines, rules and boxes are straight and upright);
//! - no annotations drawn over the page (ink, stamps, notes), other than links;
//! - horizontal, unrotated lines, as answer scripts are.

use hayro::hayro_interpret::font::{Glyph, GlyphRun};
use hayro::hayro_interpret::hayro_cmap::{BfString, WritingMode};
use hayro::hayro_interpret::hayro_syntax::object::dict::keys::{ANNOTS, F, SUBTYPE};
use hayro::hayro_interpret::hayro_syntax::object::{Array, Dict, Name};
use hayro::hayro_interpret::hayro_syntax::page::Page;
use hayro::hayro_interpret::util::TransformExt;
use hayro::hayro_interpret::{
    interpret_page, BlendMode, ClipPath, Context, Device, DrawMode, DrawProps, Image,
    ImageDrawProps, InterpreterCache, InterpreterSettings, Paint, SoftMask,
};
use hayro::kurbo::{Affine, BezPath, PathEl, Point, Rect, Shape};

/// The engine named for pages read this way.
pub const ENGINE: &str = "pdf-text";

/// More drawn paths than this and the page may hold drawn handwriting.
const MAX_PATHS: usize = 200;

/// More points than this on curved or slanting paths and the page may hold drawn
/// handwriting (a handwritten word is dozens).
const MAX_FREEFORM_POINTS: usize = 150;

/// Images may cover at most this share of the page.
const MAX_IMAGE_SHARE: f64 = 0.2;

/// At most this share of the glyphs may lack a Unicode meaning, or be set sideways.
const MAX_UNREADABLE_SHARE: f64 = 0.05;

/// Text smaller than this, in points, is not meant to be read.
const MIN_TEXT_PT: f64 = 2.0;

/// More glyphs than this are not one page of an answer script (a dense page has about
/// 4,000); checking what covers what would cost too much.
const MAX_GLYPHS: usize = 10_000;

/// A glyph is covered when this share of its box lies under something drawn later.
const COVERED_SHARE: f64 = 0.25;

/// The text of `page` when it is plainly typed (see the module's documentation), else `None`.
pub fn typed_text(page: &Page<'_>) -> Option<String> {
    if has_drawn_annotations(page) {
        return None;
    }
    let (width, height) = page.render_dimensions();
    let bounds = Rect::new(0.0, 0.0, f64::from(width), f64::from(height));
    let cache = InterpreterCache::new();
    // The page in points with its origin at the top left, rotation applied, as it is shown.
    let transform = page.initial_transform(true).to_kurbo();
    let mut context = Context::new(
        transform,
        bounds,
        &cache,
        page.xref(),
        InterpreterSettings::default(),
    );
    let mut layer = TextLayer::new(bounds);
    interpret_page(page, &mut context, &mut layer);
    layer.typed_text()
}

/// Whether annotations other than links are drawn over the page: ink written with a stylus
/// in a PDF reader is one, and its strokes would not be in the page's text.
fn has_drawn_annotations(page: &Page<'_>) -> bool {
    let Some(annotations) = page.raw().get::<Array<'_>>(ANNOTS) else {
        return false;
    };
    // Annotation flags (PDF 32000-1, 12.5.3): not shown on screen.
    const HIDDEN: u32 = 1 << 1;
    const NO_VIEW: u32 = 1 << 5;
    annotations.iter::<Dict<'_>>().any(|annotation| {
        let hidden = annotation.get::<u32>(F).unwrap_or(0) & (HIDDEN | NO_VIEW) != 0;
        let link = annotation
            .get::<Name<'_>>(SUBTYPE)
            .is_some_and(|subtype| &*subtype == b"Link");
        !hidden && !link
    })
}

/// Whether `path` is drawn freehand: it curves, or runs at a slant.
fn is_freeform(path: &BezPath) -> bool {
    let mut at = Point::ORIGIN;
    path.elements().iter().any(|element| match *element {
        PathEl::MoveTo(p) => {
            at = p;
            false
        }
        PathEl::LineTo(p) => {
            let (dx, dy) = ((p.x - at.x).abs(), (p.y - at.y).abs());
            at = p;
            dx.min(dy) > 0.05 * dx.max(dy)
        }
        PathEl::QuadTo(..) | PathEl::CurveTo(..) => true,
        PathEl::ClosePath => false,
    })
}

/// One glyph where it stands on the page, in points from the top left.
#[derive(Debug, Clone)]
struct PlacedGlyph {
    /// Where it is drawn: from an ascender's height above the baseline to a descender's
    /// depth below, and from its origin to where the next glyph would start were there no
    /// space.
    area: Rect,
    text: String,
    baseline: f64,
    /// The em: the font's size as drawn.
    size: f64,
}

impl PlacedGlyph {
    /// A space covers nothing and is covered by nothing that matters.
    fn shows_ink(&self) -> bool {
        !self.text.trim().is_empty()
    }
}

/// A device that draws nothing and keeps the glyphs, and counts what else the page draws.
#[derive(Debug)]
struct TextLayer {
    bounds: Rect,
    glyphs: Vec<PlacedGlyph>,
    /// Glyphs with no Unicode meaning, set sideways or vertically.
    unreadable: usize,
    /// Glyphs a reader of the page would not see.
    hidden: usize,
    paths: usize,
    /// Points on paths drawn freehand ([`is_freeform`]).
    freeform_points: usize,
    /// What filled shapes and pictures were drawn where, for text drawn over them later.
    backdrops: Vec<(Rect, Ink)>,
    image_area: f64,
    /// The clip in force, as the intersection of the clips pushed (in page space).
    clips: Vec<Rect>,
    /// For each transparency group open, whether what it draws can be seen.
    groups: Vec<bool>,
}

impl TextLayer {
    fn new(bounds: Rect) -> Self {
        Self {
            bounds,
            glyphs: Vec::new(),
            unreadable: 0,
            hidden: 0,
            paths: 0,
            freeform_points: 0,
            backdrops: Vec::new(),
            image_area: 0.0,
            clips: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn clip(&self) -> Rect {
        self.clips.last().copied().unwrap_or(self.bounds)
    }

    fn push_clip(&mut self, area: Rect) {
        self.clips.push(self.clip().intersect(area));
    }

    /// Whether the page is past what a typed page holds, so nothing more need be checked.
    fn beyond_typed(&self) -> bool {
        self.hidden > 0
            || self.paths > MAX_PATHS
            || self.freeform_points > MAX_FREEFORM_POINTS
            || self.glyphs.len() > MAX_GLYPHS
    }

    /// Something drawn over `area`: the glyphs it covers are hidden.
    fn cover(&mut self, area: Rect) {
        if self.beyond_typed() {
            return;
        }
        if self
            .glyphs
            .iter()
            .any(|g| g.shows_ink() && covers(area, g.area))
        {
            self.hidden += 1;
        }
    }

    fn typed_text(self) -> Option<String> {
        let readable = self.glyphs.iter().filter(|g| g.shows_ink()).count();
        let all = self.glyphs.len() + self.unreadable;
        let page_area = self.bounds.area();
        let typed = readable > 0
            && !self.beyond_typed()
            && (self.unreadable as f64) <= MAX_UNREADABLE_SHARE * all as f64
            && self.image_area <= MAX_IMAGE_SHARE * page_area;
        typed.then(|| lines_of(self.glyphs))
    }

    fn place(&mut self, glyph: &Glyph<'_>, at: Affine, ink: Ink) {
        if self.beyond_typed() {
            return;
        }
        // Glyph space has 1000 units to the em; its x axis runs along the baseline.
        let [a, b, c, d, _, _] = at.as_coeffs();
        let origin = at * Point::ORIGIN;
        let size = c.hypot(d) * 1000.0;
        let along = a.hypot(b);
        let sideways = a <= 0.0 || b.abs() > 0.1 * a;
        if ink == Ink::Blank
            || size < MIN_TEXT_PT
            || !self.clip().inflate(1.0, 1.0).contains(origin)
            || self.groups.contains(&false)
        {
            self.hidden += 1;
            return;
        }
        let text = glyph.as_unicode().map(|u| match u {
            BfString::Char(c) => c.to_string(),
            BfString::String(s) => s,
        });
        let Some(text) =
            text.filter(|t| !t.is_empty() && !t.chars().any(|c| c.is_control() || c == '\u{FFFD}'))
        else {
            self.unreadable += 1;
            return;
        };
        if sideways {
            self.unreadable += 1;
            return;
        }
        let advance = match glyph {
            Glyph::Outline(outline) => outline.advance_width(),
            Glyph::Type3(type3) => type3.advance_width(),
        }
        .filter(|w| w.is_finite() && *w > 0.0)
        .map_or(size * 0.5, |w| f64::from(w) * along);
        let area = Rect::new(
            origin.x,
            origin.y - 0.75 * size,
            origin.x + advance,
            origin.y + 0.2 * size,
        );
        // Text over other text: neither can be read on the page. The same glyph drawn again
        // in the same place (fill, then stroke; fake bold) is not.
        let drawn_again =
            |g: &PlacedGlyph| g.text == text && (g.area.x0 - origin.x).abs() < 0.1 * size;
        let shows_ink = !text.trim().is_empty();
        let over_text = || {
            self.glyphs
                .iter()
                .any(|g| g.shows_ink() && covers(area, g.area) && !drawn_again(g))
        };
        // Black on black: a shape or picture drawn before it that the text does not stand
        // out from.
        let lost_in_backdrop = || {
            self.backdrops
                .iter()
                .any(|(under, backdrop)| covers(*under, area) && !ink.stands_out_on(*backdrop))
        };
        if shows_ink && (over_text() || lost_in_backdrop()) {
            self.hidden += 1;
            return;
        }
        self.glyphs.push(PlacedGlyph {
            area,
            text,
            baseline: origin.y,
            size,
        });
    }
}

/// Whether `over` hides a good part of `under`.
fn covers(over: Rect, under: Rect) -> bool {
    let shared = over.intersect(under);
    shared.width() > 0.0 && shared.height() > 0.0 && shared.area() >= COVERED_SHARE * under.area()
}

/// What a paint puts on the page, as far as telling text from its background goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ink {
    /// Nothing that shows on a white page: white, near white, or mostly transparent.
    Blank,
    Colour([u8; 3]),
    /// A pattern or a picture: how it contrasts with what is over it is not worked out.
    Unknown,
}

impl Ink {
    fn of(paint: &Paint<'_>) -> Ink {
        match paint {
            Paint::Color(color) => {
                let [r, g, b, alpha] = color.to_rgba().to_rgba8();
                if alpha < 128 || r.min(g).min(b) >= 230 {
                    Ink::Blank
                } else {
                    Ink::Colour([r, g, b])
                }
            }
            Paint::Pattern(_) => Ink::Unknown,
        }
    }

    /// Whether text in this ink can be read over `backdrop`.
    fn stands_out_on(self, backdrop: Ink) -> bool {
        match (self, backdrop) {
            (Ink::Colour(text), Ink::Colour(under)) => {
                let apart = |(a, b): (&u8, &u8)| a.abs_diff(*b);
                text.iter().zip(&under).map(apart).max().unwrap_or(0) >= 96
            }
            _ => false,
        }
    }
}

impl<'a> Device<'a> for TextLayer {
    fn draw_path(&mut self, path: &BezPath, props: DrawProps<'a>, mode: &DrawMode) {
        self.paths += 1;
        if self.freeform_points <= MAX_FREEFORM_POINTS && is_freeform(path) {
            self.freeform_points += path.elements().len();
        }
        let mut area = props.transform.transform_rect_bbox(path.bounding_box());
        if let DrawMode::Stroke(stroke) | DrawMode::FillAndStroke(_, stroke) = mode {
            let [a, b, ..] = props.transform.as_coeffs();
            let half = f64::from(stroke.line_width) * a.hypot(b) / 2.0;
            area = area.inflate(half, half);
        }
        if !matches!(mode, DrawMode::Invisible) {
            self.cover(area);
        }
        let ink = Ink::of(&props.paint);
        if matches!(mode, DrawMode::Fill(_) | DrawMode::FillAndStroke(..))
            && ink != Ink::Blank
            && !self.beyond_typed()
        {
            self.backdrops.push((area, ink));
        }
    }

    fn push_clip_path(&mut self, clip: &ClipPath) {
        self.push_clip(clip.path.bounding_box());
    }

    fn push_clip_rect(&mut self, rect: &Rect) {
        self.push_clip(*rect);
    }

    fn push_transparency_group(&mut self, opacity: f32, mask: Option<SoftMask<'a>>, _: BlendMode) {
        // A mask may hide any part of what the group draws; which part is not worked out.
        self.groups.push(opacity >= 0.5 && mask.is_none());
    }

    fn draw_glyph_run(&mut self, run: &GlyphRun<'_, 'a>, props: DrawProps<'a>, mode: &DrawMode) {
        let ink = match mode {
            DrawMode::Invisible => Ink::Blank,
            _ => Ink::of(&props.paint),
        };
        if run.writing_mode() == WritingMode::Vertical {
            self.unreadable += run.glyphs().len();
            return;
        }
        for glyph in run.glyphs() {
            self.place(glyph, props.transform * glyph.transform(), ink);
        }
    }

    fn draw_image(&mut self, image: Image<'a, '_>, props: ImageDrawProps<'a>) {
        let (width, height) = (f64::from(image.width()), f64::from(image.height()));
        self.image_area += props.transform.determinant().abs() * width * height;
        let area = props
            .transform
            .transform_rect_bbox(Rect::new(0.0, 0.0, width, height));
        self.cover(area);
        if !self.beyond_typed() {
            self.backdrops.push((area, Ink::Unknown));
        }
    }

    fn pop_clip(&mut self) {
        self.clips.pop();
    }

    fn pop_transparency_group(&mut self) {
        self.groups.pop();
    }
}

/// The glyphs as lines of text, top to bottom and left to right: a line is the glyphs whose
/// baselines are within half an em of its first, and a gap of more than 0.15 em between two
/// glyphs is a space (word processors often move to the next word instead of drawing one).
fn lines_of(mut glyphs: Vec<PlacedGlyph>) -> String {
    glyphs.sort_by(|a, b| {
        a.baseline
            .total_cmp(&b.baseline)
            .then(a.area.x0.total_cmp(&b.area.x0))
    });
    let mut lines: Vec<Vec<PlacedGlyph>> = Vec::new();
    for glyph in glyphs {
        match lines.last_mut() {
            Some(line) if (glyph.baseline - line[0].baseline).abs() <= 0.5 * line[0].size => {
                line.push(glyph);
            }
            _ => lines.push(vec![glyph]),
        }
    }
    let mut text = String::new();
    let mut previous_baseline: Option<(f64, f64)> = None;
    for mut line in lines {
        line.sort_by(|a, b| a.area.x0.total_cmp(&b.area.x0));
        let first = &line[0];
        if let Some((baseline, size)) = previous_baseline {
            text.push('\n');
            // A gap of more than two lines is a paragraph break.
            if first.baseline - baseline > 2.4 * size.max(first.size) {
                text.push('\n');
            }
        }
        previous_baseline = Some((first.baseline, first.size));
        let mut line_text = String::new();
        let mut last: Option<&PlacedGlyph> = None;
        for glyph in &line {
            if let Some(last) = last {
                // Fill-and-stroke text and fake bold draw the same glyph twice.
                if glyph.text == last.text
                    && (glyph.area.x0 - last.area.x0).abs() < 0.1 * glyph.size
                {
                    continue;
                }
                let spaced = line_text.ends_with(char::is_whitespace)
                    || glyph.text.starts_with(char::is_whitespace);
                if !spaced && glyph.area.x0 - last.area.x1 > 0.15 * glyph.size.min(last.size) {
                    line_text.push(' ');
                }
            }
            line_text.push_str(&glyph.text);
            last = Some(glyph);
        }
        text.push_str(line_text.trim_end());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glyph(text: &str, x: f64, baseline: f64) -> PlacedGlyph {
        PlacedGlyph {
            area: Rect::new(x, baseline - 9.0, x + 6.0, baseline + 2.4),
            text: text.into(),
            baseline,
            size: 12.0,
        }
    }

    #[test]
    fn glyphs_make_lines_in_reading_order_with_spaces_at_gaps() {
        let glyphs = vec![
            // The second line first, as a content stream may draw it.
            glyph("b", 78.0, 100.0),
            glyph("a", 72.0, 100.0),
            // A superscript: a little above its line's baseline.
            glyph("2", 84.0, 96.0),
            glyph("1", 72.0, 86.0),
            glyph(".", 78.0, 86.0),
            // A word further along: more than 0.15 em after the last glyph's end.
            glyph("x", 90.0, 86.0),
            // Drawn twice (fill, then stroke).
            glyph("x", 90.0, 86.0),
            // Far below: a new paragraph.
            glyph("z", 72.0, 160.0),
        ];
        assert_eq!(lines_of(glyphs), "1. x\nab2\n\nz");
    }

    #[test]
    fn a_drawn_space_is_not_doubled() {
        let glyphs = vec![
            glyph("a", 72.0, 100.0),
            glyph(" ", 78.0, 100.0),
            glyph("b", 90.0, 100.0),
        ];
        assert_eq!(lines_of(glyphs), "a b");
    }
}
