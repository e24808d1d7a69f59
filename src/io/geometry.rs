//! Polygon geometry of nuclei (docs/contract.md §4): WKB and WKT parsing, ring
//! cleaning, and the four shape features.

use anyhow::{bail, Context, Result};
use geo::{Area, BoundingRect, Centroid, ConvexHull, Coord, LineString, Polygon};

/// One polygon of a geometry: its exterior ring (as stored, possibly
/// closed) and how many holes it had (holes are ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Exterior ring vertices.
    pub exterior: Vec<[f64; 2]>,
    /// Number of interior rings dropped.
    pub holes: usize,
}

/// Absolute shoelace area of a ring (open or closed), for choosing the
/// largest part of a multipolygon.
pub fn ring_area(ring: &[[f64; 2]]) -> f64 {
    if ring.len() < 3 {
        return 0.0;
    }
    let o = ring[0];
    let mut s = 0.0;
    for w in ring.windows(2) {
        s += (w[0][0] - o[0]) * (w[1][1] - o[1]) - (w[1][0] - o[0]) * (w[0][1] - o[1]);
    }
    let (a, b) = (ring[ring.len() - 1], ring[0]);
    s += (a[0] - o[0]) * (b[1] - o[1]) - (b[0] - o[0]) * (a[1] - o[1]);
    (s * 0.5).abs()
}

// ---------------------------------------------------------------- WKB ----

struct WkbReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl WkbReader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .with_context(|| {
                format!(
                    "WKB truncated: needs {n} bytes at offset {}, has {}",
                    self.pos,
                    self.data.len().saturating_sub(self.pos)
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self, little: bool) -> Result<u32> {
        let b: [u8; 4] = self.take(4)?.try_into()?;
        Ok(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn f64(&mut self, little: bool) -> Result<f64> {
        let b: [u8; 8] = self.take(8)?.try_into()?;
        Ok(if little {
            f64::from_le_bytes(b)
        } else {
            f64::from_be_bytes(b)
        })
    }

    /// A count of items of `item_bytes` each that must fit in what is left.
    fn count(&mut self, little: bool, item_bytes: usize) -> Result<usize> {
        let n = self.u32(little)? as usize;
        let left = self.data.len() - self.pos;
        if n.saturating_mul(item_bytes) > left {
            bail!("WKB corrupt: a count of {n} does not fit in the {left} bytes left");
        }
        Ok(n)
    }

    fn geometry(&mut self, parts: &mut Vec<Part>, depth: usize) -> Result<()> {
        if depth > 8 {
            bail!("WKB nests geometry collections too deeply");
        }
        let little = match self.u8()? {
            0 => false,
            1 => true,
            b => bail!("WKB corrupt: byte order marker {b} (expected 0 or 1)"),
        };
        let raw = self.u32(little)?;
        // EWKB (PostGIS) flags in the high bits, ISO dimensions as thousands.
        let mut has_z = raw & 0x8000_0000 != 0;
        let mut has_m = raw & 0x4000_0000 != 0;
        if raw & 0x2000_0000 != 0 {
            self.u32(little)?; // SRID
        }
        let code = raw & 0x0FFF_FFFF;
        match code / 1000 {
            0 => {}
            1 => has_z = true,
            2 => has_m = true,
            3 => {
                has_z = true;
                has_m = true;
            }
            _ => bail!("WKB geometry type {raw} is not known"),
        }
        let dims = 2 + has_z as usize + has_m as usize;
        match code % 1000 {
            3 => {
                let rings = self.count(little, 4)?;
                let mut exterior = Vec::new();
                for r in 0..rings {
                    let n = self.count(little, dims * 8)?;
                    let mut ring = Vec::with_capacity(if r == 0 { n } else { 0 });
                    for _ in 0..n {
                        let x = self.f64(little)?;
                        let y = self.f64(little)?;
                        for _ in 2..dims {
                            self.f64(little)?;
                        }
                        if r == 0 {
                            ring.push([x, y]);
                        }
                    }
                    if r == 0 {
                        exterior = ring;
                    }
                }
                if rings > 0 {
                    parts.push(Part {
                        exterior,
                        holes: rings - 1,
                    });
                }
            }
            6 | 7 => {
                let n = self.count(little, 5)?;
                for _ in 0..n {
                    self.geometry(parts, depth + 1)?;
                }
            }
            1 => bail!("WKB holds a point, not a polygon"),
            2 | 5 => bail!("WKB holds a line string, not a polygon"),
            4 => bail!("WKB holds points, not a polygon"),
            t => bail!("WKB geometry type {t} is not a polygon"),
        }
        Ok(())
    }
}

/// Parses WKB (ISO or PostGIS EWKB, either byte order) of a Polygon,
/// MultiPolygon, or a collection of polygons, into its polygon parts.
/// Z and M values are ignored. An empty geometry gives no part.
pub fn parse_wkb(bytes: &[u8]) -> Result<Vec<Part>> {
    let mut r = WkbReader {
        data: bytes,
        pos: 0,
    };
    let mut parts = Vec::new();
    r.geometry(&mut parts, 0)?;
    Ok(parts)
}

/// Decodes hex text (WKB written as hex in CSV files).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("\\x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

// ---------------------------------------------------------------- WKT ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Num(f64),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1
            }
            b')' => {
                out.push(Tok::Close);
                i += 1
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push(Tok::Word(s[start..i].to_ascii_uppercase()));
            }
            c if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.') => {
                let start = i;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || matches!(b[i], b'.' | b'e' | b'E')
                        || (matches!(b[i], b'-' | b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let v: f64 = s[start..i]
                    .parse()
                    .with_context(|| format!("WKT: `{}` is not a number", &s[start..i]))?;
                out.push(Tok::Num(v));
            }
            _ => bail!("WKT: unexpected character `{}`", c as char),
        }
    }
    Ok(out)
}

struct WktParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl WktParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: Tok) -> Result<()> {
        match self.next() {
            Some(ref got) if *got == t => Ok(()),
            got => bail!("WKT: expected {t:?}, found {got:?}"),
        }
    }

    /// `(x y [z [m]], ...)`
    fn ring(&mut self) -> Result<Vec<[f64; 2]>> {
        self.expect(Tok::Open)?;
        let mut ring = Vec::new();
        loop {
            let mut nums = Vec::with_capacity(4);
            while let Some(Tok::Num(v)) = self.peek() {
                nums.push(*v);
                self.pos += 1;
            }
            if nums.len() < 2 || nums.len() > 4 {
                bail!("WKT: a point needs 2 to 4 numbers, found {}", nums.len());
            }
            ring.push([nums[0], nums[1]]);
            match self.next() {
                Some(Tok::Comma) => continue,
                Some(Tok::Close) => return Ok(ring),
                t => bail!("WKT: expected `,` or `)` in a ring, found {t:?}"),
            }
        }
    }

    /// `(ring, ring, ...)` or EMPTY.
    fn polygon_body(&mut self, parts: &mut Vec<Part>) -> Result<()> {
        if self.empty() {
            return Ok(());
        }
        self.expect(Tok::Open)?;
        let mut rings = Vec::new();
        loop {
            rings.push(self.ring()?);
            match self.next() {
                Some(Tok::Comma) => continue,
                Some(Tok::Close) => break,
                t => bail!("WKT: expected `,` or `)` between rings, found {t:?}"),
            }
        }
        let holes = rings.len() - 1;
        parts.push(Part {
            exterior: rings.swap_remove(0),
            holes,
        });
        Ok(())
    }

    fn empty(&mut self) -> bool {
        if self.peek() == Some(&Tok::Word("EMPTY".into())) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn geometry(&mut self, parts: &mut Vec<Part>, depth: usize) -> Result<()> {
        if depth > 8 {
            bail!("WKT nests geometry collections too deeply");
        }
        let kind = match self.next() {
            Some(Tok::Word(w)) => w,
            t => bail!("WKT: expected a geometry type, found {t:?}"),
        };
        // Dimension tags: Z, M, ZM.
        if let Some(Tok::Word(w)) = self.peek() {
            if matches!(w.as_str(), "Z" | "M" | "ZM") {
                self.pos += 1;
            }
        }
        match kind.as_str() {
            "POLYGON" => self.polygon_body(parts),
            "MULTIPOLYGON" => {
                if self.empty() {
                    return Ok(());
                }
                self.expect(Tok::Open)?;
                loop {
                    self.polygon_body(parts)?;
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::Close) => return Ok(()),
                        t => bail!("WKT: expected `,` or `)` between polygons, found {t:?}"),
                    }
                }
            }
            "GEOMETRYCOLLECTION" => {
                if self.empty() {
                    return Ok(());
                }
                self.expect(Tok::Open)?;
                loop {
                    self.geometry(parts, depth + 1)?;
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::Close) => return Ok(()),
                        t => bail!("WKT: expected `,` or `)` in a collection, found {t:?}"),
                    }
                }
            }
            other => bail!("WKT holds a {other}, not a polygon"),
        }
    }
}

/// Parses WKT (optionally EWKT with `SRID=…;`) of a POLYGON, MULTIPOLYGON
/// or GEOMETRYCOLLECTION of polygons into its polygon parts.
pub fn parse_wkt(text: &str) -> Result<Vec<Part>> {
    let text = text.trim();
    let text = match text.split_once(';') {
        Some((srid, rest)) if srid.trim().to_ascii_uppercase().starts_with("SRID=") => rest,
        _ => text,
    };
    let mut p = WktParser {
        toks: tokenize(text)?,
        pos: 0,
    };
    let mut parts = Vec::new();
    p.geometry(&mut parts, 0)?;
    if p.pos != p.toks.len() {
        bail!("WKT: unexpected text after the geometry");
    }
    Ok(parts)
}

// ----------------------------------------------------------- features ----

/// Cleans a ring: drops repeated consecutive vertices (and the closing
/// vertex), checks there are at least 3 distinct finite vertices, and
/// returns the closed polygon with its area. `Err` holds the reason for
/// skipping the nucleus.
pub fn clean_polygon(ring: &[[f64; 2]]) -> std::result::Result<(Polygon<f64>, f64), String> {
    clean_ring(ring.to_vec())
}

/// [`clean_polygon`] taking the ring by value: the polygon keeps the ring's
/// buffer (`[f64; 2]` and `Coord` have one layout, so the conversion is done
/// in place), trimmed to its length, so a whole slide's nuclei are not held
/// twice while they are read.
pub fn clean_ring(ring: Vec<[f64; 2]>) -> std::result::Result<(Polygon<f64>, f64), String> {
    if ring.iter().any(|p| !(p[0].is_finite() && p[1].is_finite())) {
        return Err("a vertex is not a finite number".into());
    }
    let mut v: Vec<Coord<f64>> = ring
        .into_iter()
        .map(|p| Coord { x: p[0], y: p[1] })
        .collect();
    v.dedup();
    while v.len() > 1 && v.first() == v.last() {
        v.pop();
    }
    let mut distinct = v.clone();
    distinct.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.y.total_cmp(&b.y)));
    distinct.dedup();
    if distinct.len() < 3 {
        return Err(format!(
            "fewer than 3 distinct vertices ({})",
            distinct.len()
        ));
    }
    drop(distinct);
    // Closed here rather than by `Polygon::new`, so that the closing vertex
    // does not double the buffer.
    v.reserve_exact(1);
    v.push(v[0]);
    v.shrink_to_fit();
    let poly = Polygon::new(LineString::new(v), vec![]);
    let area = local(&poly).unsigned_area();
    if !(area.is_finite() && area > 0.0) {
        return Err("zero area".into());
    }
    Ok((poly, area))
}

/// The polygon moved so that its first vertex is at the origin (features
/// are translation-invariant; this keeps precision at large coordinates).
fn local(poly: &Polygon<f64>) -> Polygon<f64> {
    let o = poly
        .exterior()
        .0
        .first()
        .copied()
        .unwrap_or(Coord { x: 0.0, y: 0.0 });
    Polygon::new(
        poly.exterior()
            .0
            .iter()
            .map(|c| *c - o)
            .collect::<Vec<_>>()
            .into(),
        vec![],
    )
}

/// Area-weighted centroid of a polygon.
pub fn centroid(poly: &Polygon<f64>) -> [f64; 2] {
    let o = poly
        .exterior()
        .0
        .first()
        .copied()
        .unwrap_or(Coord { x: 0.0, y: 0.0 });
    match local(poly).centroid() {
        Some(c) => [c.x() + o.x, c.y() + o.y],
        None => [o.x, o.y],
    }
}

/// `[area, convexity, elongation, circularity]` of a polygon (docs/contract.md §4):
/// area = unsigned shoelace; convexity = convex hull area / area;
/// elongation = minimum rotated rectangle area / axis-aligned bounding box
/// area; circularity = area / r², r = radius of the minimum enclosing
/// circle. Degenerate (zero-area) polygons give zeros.
pub fn shape_features(poly: &Polygon<f64>) -> [f64; 4] {
    let p = local(poly);
    let area = p.unsigned_area();
    if !(area.is_finite() && area > 0.0) {
        return [0.0; 4];
    }
    let hull = p.convex_hull();
    let convexity = hull.unsigned_area() / area;
    let hull_pts: Vec<Coord<f64>> = {
        let mut h = hull.exterior().0.clone();
        if h.len() > 1 && h.first() == h.last() {
            h.pop();
        }
        h
    };
    let elongation = match p.bounding_rect() {
        Some(r) if r.width() * r.height() > 0.0 => {
            min_rotated_rect_area(&hull_pts) / (r.width() * r.height())
        }
        _ => 0.0,
    };
    let (_, r) = min_enclosing_circle(&hull_pts);
    let circularity = if r > 0.0 { area / (r * r) } else { 0.0 };
    [area, convexity, elongation, circularity]
}

/// Area of the minimum-area enclosing rectangle of a convex polygon (its
/// vertices in order, not closed). One side of that rectangle lies on a
/// hull edge (Freeman & Shapira), so each edge direction is tried with the
/// hull projected on it and its normal. geo's `MinimumRotatedRect` does the
/// same by rotating the hull through degrees; projecting avoids the
/// rotation's rounding, so axis-aligned shapes give exact areas.
pub fn min_rotated_rect_area(hull: &[Coord<f64>]) -> f64 {
    let n = hull.len();
    if n < 3 {
        return 0.0;
    }
    let mut best = f64::INFINITY;
    for i in 0..n {
        let a = hull[i];
        let b = hull[(i + 1) % n];
        let (dx, dy) = (b.x - a.x, b.y - a.y);
        let len = (dx * dx + dy * dy).sqrt();
        if len == 0.0 {
            continue;
        }
        let (ux, uy) = (dx / len, dy / len);
        let (mut lo_u, mut hi_u, mut lo_v, mut hi_v) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for p in hull {
            let (px, py) = (p.x - a.x, p.y - a.y);
            let u = px * ux + py * uy;
            let v = -px * uy + py * ux;
            lo_u = lo_u.min(u);
            hi_u = hi_u.max(u);
            lo_v = lo_v.min(v);
            hi_v = hi_v.max(v);
        }
        best = best.min((hi_u - lo_u) * (hi_v - lo_v));
    }
    if best.is_finite() {
        best
    } else {
        0.0
    }
}

fn circle2(a: Coord<f64>, b: Coord<f64>) -> (Coord<f64>, f64) {
    let c = Coord {
        x: (a.x + b.x) * 0.5,
        y: (a.y + b.y) * 0.5,
    };
    (c, dist(c, a).max(dist(c, b)))
}

fn circle3(a: Coord<f64>, b: Coord<f64>, c: Coord<f64>) -> (Coord<f64>, f64) {
    let (bx, by) = (b.x - a.x, b.y - a.y);
    let (cx, cy) = (c.x - a.x, c.y - a.y);
    let d = 2.0 * (bx * cy - by * cx);
    if d.abs() <= f64::EPSILON * (bx.abs() + by.abs()) * (cx.abs() + cy.abs()) {
        // Collinear: the circle on the two farthest points.
        let mut best = circle2(a, b);
        for cand in [circle2(a, c), circle2(b, c)] {
            if cand.1 > best.1 {
                best = cand;
            }
        }
        return best;
    }
    let b2 = bx * bx + by * by;
    let c2 = cx * cx + cy * cy;
    let ux = (cy * b2 - by * c2) / d;
    let uy = (bx * c2 - cx * b2) / d;
    let center = Coord {
        x: a.x + ux,
        y: a.y + uy,
    };
    let r = dist(center, a).max(dist(center, b)).max(dist(center, c));
    (center, r)
}

fn dist(a: Coord<f64>, b: Coord<f64>) -> f64 {
    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
}

/// Smallest circle containing all points: `(center, radius)`.
///
/// geo 0.31 has no minimum enclosing circle, so this is Welzl's algorithm
/// in its iterative move-to-front form (expected linear time on points in
/// random order). The points are shuffled with a fixed seed, so results
/// are deterministic. Pass the convex hull's vertices: the circle of a
/// polygon is the circle of its hull.
pub fn min_enclosing_circle(points: &[Coord<f64>]) -> (Coord<f64>, f64) {
    let Some(&first) = points.first() else {
        return (Coord { x: 0.0, y: 0.0 }, 0.0);
    };
    let mut p: Vec<Coord<f64>> = points.to_vec();
    // Fixed-seed Fisher–Yates shuffle (xorshift64*).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ p.len() as u64;
    for i in (1..p.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let j = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    let scale = p
        .iter()
        .map(|c| (c.x - first.x).abs().max((c.y - first.y).abs()))
        .fold(0.0, f64::max);
    let eps = 1e-12 * scale.max(1e-300);
    let inside = |c: &(Coord<f64>, f64), q: Coord<f64>| dist(c.0, q) <= c.1 + eps;
    let mut circle = (p[0], 0.0);
    for i in 1..p.len() {
        if inside(&circle, p[i]) {
            continue;
        }
        circle = (p[i], 0.0);
        for j in 0..i {
            if inside(&circle, p[j]) {
                continue;
            }
            circle = circle2(p[i], p[j]);
            for k in 0..j {
                if !inside(&circle, p[k]) {
                    circle = circle3(p[i], p[j], p[k]);
                }
            }
        }
    }
    circle
}
