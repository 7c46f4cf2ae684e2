//! Reading order for detected text boxes: split the page into columns at
//! empty vertical gutters, group each column's boxes into lines by vertical
//! overlap (following each box's own slant, so slightly skewed lines stay
//! together), order lines top to bottom and boxes left to right, and merge
//! neighbouring boxes of one line into one box for recognition. Promises:
//! pure functions; every input index appears exactly once in the output;
//! no panics (non-finite boxes are ordered last, each on its own line).

use super::det::{min_area_rect, RotRect};

/// Box indices of one text line, left to right.
pub type Line = Vec<usize>;

/// Orders `rects` into lines: columns left to right, within a column lines
/// top to bottom, within a line boxes left to right.
pub fn reading_order(rects: &[RotRect]) -> Vec<Line> {
    let (good, bad): (Vec<usize>, Vec<usize>) = (0..rects.len()).partition(|&i| {
        let r = &rects[i];
        [r.cx, r.cy, r.w, r.h, r.angle]
            .iter()
            .all(|v| v.is_finite())
    });
    let mut out = Vec::new();
    for column in split_columns(rects, good) {
        out.extend(group_lines(rects, column));
    }
    out.extend(bad.into_iter().map(|i| vec![i]));
    out
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Splits boxes into columns at the widest vertical gutter that no box
/// crosses, recursively. A gutter must be at least twice the median box
/// height wide and have, on each side, boxes from at least two different
/// heights (two lines), so a ragged right margin or one stray word never
/// makes a column.
fn split_columns(rects: &[RotRect], idx: Vec<usize>) -> Vec<Vec<usize>> {
    if idx.len() < 4 {
        return vec![idx];
    }
    let min_gap = 2.0 * median(idx.iter().map(|&i| rects[i].h).collect());
    let mut spans: Vec<(f32, f32)> = idx
        .iter()
        .map(|&i| {
            let (x0, _, x1, _) = rects[i].bounds();
            (x0, x1)
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(f32, f32)> = None; // (gap width, split x)
    let mut reach = spans[0].1;
    for s in &spans[1..] {
        if s.0 > reach {
            let gap = s.0 - reach;
            if gap >= min_gap && best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, (s.0 + reach) / 2.0));
            }
        }
        reach = reach.max(s.1);
    }
    let Some((_, split)) = best else {
        return vec![idx];
    };
    let (left, right): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| rects[i].cx < split);
    if distinct_rows(rects, &left) < 2 || distinct_rows(rects, &right) < 2 {
        return vec![idx];
    }
    let mut out = split_columns(rects, left);
    out.extend(split_columns(rects, right));
    out
}

/// How many boxes of `idx` do not vertically overlap an earlier one: a
/// lower bound on the number of lines they form.
fn distinct_rows(rects: &[RotRect], idx: &[usize]) -> usize {
    let mut rows: Vec<(f32, f32)> = Vec::new();
    for &i in idx {
        let (_, y0, _, y1) = rects[i].bounds();
        if !rows.iter().any(|&(a, b)| y0 < b && a < y1) {
            rows.push((y0, y1));
        }
    }
    rows.len()
}

/// Vertical overlap of box `b` with the line through box `a`, extended along
/// `a`'s own slant to `b`'s centre, as a fraction of the smaller height.
fn line_overlap(a: &RotRect, b: &RotRect) -> f32 {
    let ya = a.cy + (b.cx - a.cx) * a.angle.tan();
    let (a0, a1) = (ya - a.h / 2.0, ya + a.h / 2.0);
    let (b0, b1) = (b.cy - b.h / 2.0, b.cy + b.h / 2.0);
    let inter = a1.min(b1) - a0.max(b0);
    let denom = a.h.min(b.h);
    if denom > 0.0 {
        inter / denom
    } else {
        0.0
    }
}

/// Groups boxes into lines. Boxes are taken top to bottom; each joins the
/// line whose nearest box (horizontally) overlaps it most, if that overlap
/// is at least half the smaller height, else starts a new line.
fn group_lines(rects: &[RotRect], mut idx: Vec<usize>) -> Vec<Line> {
    idx.sort_by(|&a, &b| rects[a].cy.total_cmp(&rects[b].cy));
    let mut lines: Vec<Line> = Vec::new();
    for i in idx {
        let b = &rects[i];
        let mut best: Option<(f32, usize)> = None;
        for (li, line) in lines.iter().enumerate() {
            let nearest = line.iter().copied().min_by(|&p, &q| {
                (rects[p].cx - b.cx)
                    .abs()
                    .total_cmp(&(rects[q].cx - b.cx).abs())
            });
            if let Some(n) = nearest {
                let ov = line_overlap(&rects[n], b);
                if ov >= 0.5 && best.is_none_or(|(o, _)| ov > o) {
                    best = Some((ov, li));
                }
            }
        }
        match best {
            Some((_, li)) => lines[li].push(i),
            None => lines.push(vec![i]),
        }
    }
    for line in &mut lines {
        line.sort_by(|&a, &b| rects[a].cx.total_cmp(&rects[b].cx));
    }
    // Top to bottom by the line's height at its left end, so a slanted line
    // is placed by where it starts, as a reader would.
    lines.sort_by(|a, b| {
        let ya = a.first().map_or(0.0, |&i| rects[i].cy);
        let yb = b.first().map_or(0.0, |&i| rects[i].cy);
        ya.total_cmp(&yb)
    });
    lines
}

/// Merges runs of boxes of one line (indices in reading order) whose
/// horizontal gap is below `max_gap` times the taller box's height into one
/// rectangle: a whole line read at once gives the recogniser context across
/// words. Returns the merged rectangles, left to right.
pub fn merge_line(rects: &[RotRect], line: &[usize], max_gap: f32) -> Vec<RotRect> {
    let mut out: Vec<RotRect> = Vec::new();
    let mut prev_x1 = f32::MIN;
    for &i in line {
        let Some(r) = rects.get(i) else { continue };
        let (x0, _, x1, _) = r.bounds();
        if let Some(last) = out.last_mut() {
            let gap = x0 - prev_x1;
            if gap < max_gap * last.h.max(r.h) {
                let mut pts = last.corners().to_vec();
                pts.extend(r.corners());
                if let Some(m) = min_area_rect(&pts) {
                    *last = m;
                    prev_x1 = prev_x1.max(x1);
                    continue;
                }
            }
        }
        out.push(*r);
        prev_x1 = x1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cx: f32, cy: f32, w: f32, h: f32) -> RotRect {
        RotRect {
            cx,
            cy,
            w,
            h,
            angle: 0.0,
        }
    }

    fn all_once(lines: &[Line], n: usize) -> bool {
        let mut v: Vec<usize> = lines.iter().flatten().copied().collect();
        v.sort();
        v == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn lines_top_to_bottom_boxes_left_to_right() {
        // Two lines of three words, given shuffled; words jitter vertically.
        let rects = vec![
            r(300.0, 102.0, 80.0, 30.0),
            r(100.0, 50.0, 80.0, 30.0),
            r(100.0, 100.0, 80.0, 30.0),
            r(200.0, 47.0, 80.0, 28.0),
            r(300.0, 53.0, 80.0, 34.0),
            r(200.0, 98.0, 80.0, 30.0),
        ];
        let lines = reading_order(&rects);
        assert_eq!(lines, vec![vec![1, 3, 4], vec![2, 5, 0]]);
    }

    #[test]
    fn slightly_skewed_lines_stay_together() {
        // Lines rising 0.1 px per px to the right (about 6°): the last word
        // of line 1 sits 60 px higher than its first, more than a line height.
        let angle = 0.1f32.atan();
        let mut rects = Vec::new();
        for line in 0..2 {
            for k in 0..7 {
                let x = 60.0 + k as f32 * 100.0;
                rects.push(RotRect {
                    cx: x,
                    cy: 300.0 + line as f32 * 80.0 - 0.1 * (x - 60.0),
                    w: 80.0,
                    h: 30.0,
                    angle: -angle,
                });
            }
        }
        let lines = reading_order(&rects);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], (0..7).collect::<Vec<_>>());
        assert_eq!(lines[1], (7..14).collect::<Vec<_>>());
    }

    #[test]
    fn two_columns_are_read_one_after_the_other() {
        let mut rects = Vec::new();
        for row in 0..3 {
            let y = 50.0 + row as f32 * 40.0;
            rects.push(r(100.0, y, 150.0, 25.0)); // left column
            rects.push(r(400.0, y + 3.0, 150.0, 25.0)); // right column, same rows
        }
        let lines = reading_order(&rects);
        assert_eq!(
            lines,
            vec![vec![0], vec![2], vec![4], vec![1], vec![3], vec![5]]
        );
    }

    #[test]
    fn a_ragged_gap_on_one_line_is_not_a_column() {
        // Line 1 has a wide gap between words; line 2 spans the page.
        let rects = vec![
            r(100.0, 50.0, 150.0, 25.0),
            r(450.0, 50.0, 100.0, 25.0),
            r(250.0, 90.0, 450.0, 25.0),
            r(250.0, 130.0, 450.0, 25.0),
        ];
        let lines = reading_order(&rects);
        assert_eq!(lines, vec![vec![0, 1], vec![2], vec![3]]);
    }

    #[test]
    fn degenerate_input_keeps_every_index() {
        let rects = vec![
            r(f32::NAN, 1.0, 1.0, 1.0),
            r(10.0, 10.0, 0.0, 0.0),
            r(10.0, 10.0, 0.0, 0.0),
            r(1.0, f32::INFINITY, 1.0, 1.0),
        ];
        let lines = reading_order(&rects);
        assert!(all_once(&lines, 4), "{lines:?}");
        assert!(reading_order(&[]).is_empty());
    }

    #[test]
    fn merge_joins_close_boxes_only() {
        let rects = vec![
            r(50.0, 50.0, 80.0, 30.0),
            r(140.0, 50.0, 80.0, 30.0), // gap 10: merged
            r(400.0, 50.0, 80.0, 30.0), // gap 180 (6 heights): separate
        ];
        let m = merge_line(&rects, &[0, 1, 2], 1.5);
        assert_eq!(m.len(), 2);
        assert!(
            (m[0].w - 170.0).abs() < 1e-3 && (m[0].cx - 95.0).abs() < 1e-3,
            "{:?}",
            m[0]
        );
        assert_eq!(m[1], rects[2]);
        assert!(merge_line(&rects, &[7], 1.5).is_empty());
    }
}
