//! Cell polygons the way Segger draws them (segger_dev
//! `prediction/boundary.py`), with a fallback where the transcripts give none.
//!
//! The rule: the Delaunay triangulation of a cell's distinct transcript
//! positions; d_max is the largest nearest-neighbour distance among them.
//! Part 1 removes, until nothing changes, every triangle on the boundary
//! whose boundary edge is longer than 2·d_max; part 2 then removes, until
//! nothing changes, every boundary triangle whose boundary edge is longer
//! than 1.5·d_max with an obtuse opposite angle, or whose opposite angle is
//! above 168.75° (180 − 180/16). Both removals are monotone (a removable
//! triangle stays removable), so the order of removal does not change the
//! result. The boundary of what is left is traced into simple rings (split
//! at vertices where the region touches itself); the largest
//! counter-clockwise ring is the polygon (holes are filled, as Segger has
//! no hole step).
//!
//! Where that gives no valid polygon (fewer than 3 distinct positions,
//! collinear positions, every triangle removed), a cell takes its nucleus
//! polygon and anything else (a fragment, or an invalid nucleus polygon)
//! the bounding box of its transcripts grown by [`BOX_PAD`] µm on each side.

use geo::{Area, Coord, LineString, Polygon, Validation};
use rayon::prelude::*;
use spade::{DelaunayTriangulation, Point2, Triangulation};

/// Half the side added around a fallback bounding box, µm: a cell whose
/// transcripts sit at one point gets a 1 µm square.
pub const BOX_PAD: f64 = 0.5;

/// Where a polygon came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolygonSource {
    /// Segger's eroded Delaunay boundary of the transcripts.
    Transcripts,
    /// The nucleus polygon (the transcripts gave none).
    Nucleus,
    /// The padded bounding box of the transcripts (no nucleus either).
    BoundingBox,
}

impl PolygonSource {
    /// The name written to the run log.
    pub fn as_str(self) -> &'static str {
        match self {
            PolygonSource::Transcripts => "transcripts",
            PolygonSource::Nucleus => "nucleus",
            PolygonSource::BoundingBox => "bounding_box",
        }
    }
}

/// One cell's polygon.
#[derive(Debug, Clone)]
pub struct CellPolygon {
    /// A valid polygon: one closed exterior ring of at least 4 coordinates,
    /// no holes, no self-intersection, positive area.
    pub polygon: Polygon<f64>,
    /// Where it came from.
    pub source: PolygonSource,
}

/// Segger's polygon of a set of positions, `None` when it gives none (fewer
/// than 3 distinct positions, all collinear, everything eroded, or a result
/// that is not a valid polygon).
pub fn segger_polygon(points: &[[f64; 2]]) -> Option<Polygon<f64>> {
    let mut distinct: Vec<[f64; 2]> = points
        .iter()
        .copied()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
        .collect();
    distinct.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    distinct.dedup();
    if distinct.len() < 3 {
        return None;
    }
    let vertices: Vec<Point2<f64>> = distinct.iter().map(|p| Point2::new(p[0], p[1])).collect();
    let tri: DelaunayTriangulation<Point2<f64>> =
        DelaunayTriangulation::bulk_load(vertices).ok()?;
    if tri.num_inner_faces() == 0 {
        return None;
    }
    let mesh = Mesh::from_triangulation(&tri);
    let mut alive = vec![true; mesh.faces.len()];
    let d_max = mesh.d_max;
    mesh.erode(&mut alive, |len, _| len > 2.0 * d_max);
    mesh.erode(&mut alive, |len, angle| {
        (len > 1.5 * d_max && angle > 90.0) || angle > 180.0 - 180.0 / 16.0
    });
    let ring = mesh.largest_ring(&alive)?;
    let mut coords: Vec<Coord<f64>> = ring
        .iter()
        .map(|&v| Coord {
            x: mesh.pos[v][0],
            y: mesh.pos[v][1],
        })
        .collect();
    coords.push(coords[0]);
    let polygon = Polygon::new(LineString::new(coords), Vec::new());
    is_good(&polygon).then_some(polygon)
}

/// Whether `p` is what every output promises: valid, one exterior ring of
/// at least 4 coordinates, no holes, positive area.
pub fn is_good(p: &Polygon<f64>) -> bool {
    p.interiors().is_empty()
        && p.exterior().0.len() >= 4
        && p.exterior().is_closed()
        && p.unsigned_area() > 0.0
        && p.is_valid()
}

/// The polygon of one cell: Segger's, else the nucleus (when given and
/// good), else the padded bounding box of `points`; `None` only when
/// `points` has no finite position and there is no good nucleus.
pub fn cell_polygon(points: &[[f64; 2]], nucleus: Option<&Polygon<f64>>) -> Option<CellPolygon> {
    if let Some(polygon) = segger_polygon(points) {
        return Some(CellPolygon {
            polygon,
            source: PolygonSource::Transcripts,
        });
    }
    if let Some(n) = nucleus.filter(|n| is_good(n)) {
        return Some(CellPolygon {
            polygon: n.clone(),
            source: PolygonSource::Nucleus,
        });
    }
    padded_box(points).map(|polygon| CellPolygon {
        polygon,
        source: PolygonSource::BoundingBox,
    })
}

/// The bounding box of the finite `points` grown by [`BOX_PAD`] on every
/// side, counter-clockwise; `None` without a finite point.
pub fn padded_box(points: &[[f64; 2]]) -> Option<Polygon<f64>> {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in points
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
    {
        for d in 0..2 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    if !lo[0].is_finite() {
        return None;
    }
    let (x0, y0, x1, y1) = (
        lo[0] - BOX_PAD,
        lo[1] - BOX_PAD,
        hi[0] + BOX_PAD,
        hi[1] + BOX_PAD,
    );
    let polygon = Polygon::new(
        LineString::from(vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]),
        Vec::new(),
    );
    is_good(&polygon).then_some(polygon)
}

/// Polygons of many cells in parallel: `points(i)` gives cell `i`'s
/// transcript positions, `nucleus(i)` its nucleus polygon if it has one.
pub fn cell_polygons<'a>(
    n: usize,
    points: impl Fn(usize) -> Vec<[f64; 2]> + Sync,
    nucleus: impl Fn(usize) -> Option<&'a Polygon<f64>> + Sync,
) -> Vec<Option<CellPolygon>> {
    (0..n)
        .into_par_iter()
        .map(|i| cell_polygon(&points(i), nucleus(i)))
        .collect()
}

/// The triangles of a triangulation as plain arrays. Triangle `f` has
/// vertices `faces[f]` counter-clockwise; its edge `k` runs from vertex `k`
/// to vertex `k + 1` (mod 3), faces vertex `k + 2` and borders triangle
/// `nbr[f][k]` (`None` on the convex hull).
struct Mesh {
    pos: Vec<[f64; 2]>,
    faces: Vec<[usize; 3]>,
    nbr: Vec<[Option<usize>; 3]>,
    d_max: f64,
}

impl Mesh {
    fn from_triangulation(tri: &DelaunayTriangulation<Point2<f64>>) -> Self {
        let mut pos = vec![[0.0; 2]; tri.num_vertices()];
        for v in tri.vertices() {
            let p = v.position();
            pos[v.fix().index()] = [p.x, p.y];
        }
        // Face handles index all faces, the outer one included.
        let mut dense = vec![usize::MAX; tri.num_all_faces()];
        for (i, f) in tri.inner_faces().enumerate() {
            dense[f.fix().index()] = i;
        }
        let mut faces = Vec::with_capacity(tri.num_inner_faces());
        let mut nbr = Vec::with_capacity(tri.num_inner_faces());
        for f in tri.inner_faces() {
            let edges = f.adjacent_edges();
            faces.push(edges.map(|e| e.from().fix().index()));
            nbr.push(edges.map(|e| e.rev().face().as_inner().map(|g| dense[g.fix().index()])));
        }
        // The nearest neighbour of a point is one of its Delaunay neighbours.
        let mut nearest = vec![f64::INFINITY; pos.len()];
        for e in tri.undirected_edges() {
            let [a, b] = e.vertices().map(|v| v.fix().index());
            let d = dist(pos[a], pos[b]);
            nearest[a] = nearest[a].min(d);
            nearest[b] = nearest[b].min(d);
        }
        let d_max = nearest.iter().copied().fold(0.0, f64::max);
        Mesh {
            pos,
            faces,
            nbr,
            d_max,
        }
    }

    fn is_boundary(&self, alive: &[bool], f: usize, k: usize) -> bool {
        alive[f] && self.nbr[f][k].is_none_or(|g| !alive[g])
    }

    /// Length of edge `k` of `f` and the angle (degrees) opposite it.
    fn edge(&self, f: usize, k: usize) -> (f64, f64) {
        let v = self.faces[f];
        let (a, b, o) = (
            self.pos[v[k]],
            self.pos[v[(k + 1) % 3]],
            self.pos[v[(k + 2) % 3]],
        );
        let (u, w) = ([a[0] - o[0], a[1] - o[1]], [b[0] - o[0], b[1] - o[1]]);
        let cross = u[0] * w[1] - u[1] * w[0];
        let dot = u[0] * w[0] + u[1] * w[1];
        (dist(a, b), cross.abs().atan2(dot).to_degrees())
    }

    /// The edge of `g` shared with `f`.
    fn shared(&self, g: usize, f: usize) -> Option<usize> {
        (0..3).find(|&m| self.nbr[g][m] == Some(f))
    }

    /// Removes boundary triangles whose boundary edge satisfies
    /// `remove(length, opposite angle)` until none is left.
    fn erode(&self, alive: &mut [bool], remove: impl Fn(f64, f64) -> bool) {
        let mut work: Vec<(usize, usize)> = (0..self.faces.len())
            .flat_map(|f| (0..3).map(move |k| (f, k)))
            .filter(|&(f, k)| self.is_boundary(alive, f, k))
            .collect();
        while let Some((f, k)) = work.pop() {
            if !self.is_boundary(alive, f, k) {
                continue;
            }
            let (len, angle) = self.edge(f, k);
            if !remove(len, angle) {
                continue;
            }
            alive[f] = false;
            for j in (0..3).filter(|&j| j != k) {
                if let Some(g) = self.nbr[f][j].filter(|&g| alive[g]) {
                    if let Some(m) = self.shared(g, f) {
                        work.push((g, m));
                    }
                }
            }
        }
    }

    /// The vertices of the largest counter-clockwise simple ring bounding
    /// the triangles left, `None` when none is left.
    fn largest_ring(&self, alive: &[bool]) -> Option<Vec<usize>> {
        let mut seen = vec![[false; 3]; self.faces.len()];
        let mut best: Option<(f64, Vec<usize>)> = None;
        for f0 in 0..self.faces.len() {
            for k0 in 0..3 {
                if seen[f0][k0] || !self.is_boundary(alive, f0, k0) {
                    continue;
                }
                let walk = self.trace(alive, &mut seen, f0, k0)?;
                for ring in split_simple(&walk) {
                    let area = self.signed_area(&ring);
                    if area > 0.0 && best.as_ref().is_none_or(|(a, _)| area > *a) {
                        best = Some((area, ring));
                    }
                }
            }
        }
        best.map(|(_, ring)| ring)
    }

    /// The closed walk of boundary edges starting with edge `k0` of `f0`
    /// (its start vertices, in order). At each vertex it turns through the
    /// fan of triangles left around that vertex to the next boundary edge,
    /// so the region stays on its left. `None` if the walk does not close
    /// (not expected for a triangulation; the caller then falls back).
    fn trace(
        &self,
        alive: &[bool],
        seen: &mut [[bool; 3]],
        f0: usize,
        k0: usize,
    ) -> Option<Vec<usize>> {
        let limit = 3 * self.faces.len() + 3;
        let mut walk = Vec::new();
        let (mut f, mut k) = (f0, k0);
        loop {
            seen[f][k] = true;
            walk.push(self.faces[f][k]);
            // The edge of f leaving the end vertex, then around it.
            let mut j = (k + 1) % 3;
            let mut steps = 0;
            while !self.is_boundary(alive, f, j) {
                let g = self.nbr[f][j]?;
                let m = self.shared(g, f)?;
                f = g;
                j = (m + 1) % 3;
                steps += 1;
                if steps > limit {
                    return None;
                }
            }
            k = j;
            if (f, k) == (f0, k0) {
                return Some(walk);
            }
            if walk.len() > limit {
                return None;
            }
        }
    }

    fn signed_area(&self, ring: &[usize]) -> f64 {
        let o = self.pos[ring[0]];
        let mut s = 0.0;
        for i in 0..ring.len() {
            let a = self.pos[ring[i]];
            let b = self.pos[ring[(i + 1) % ring.len()]];
            s += (a[0] - o[0]) * (b[1] - o[1]) - (b[0] - o[0]) * (a[1] - o[1]);
        }
        0.5 * s
    }
}

/// Splits a closed walk of vertices into loops without a repeated vertex:
/// whenever a vertex comes back, the loop since its first visit is cut out.
fn split_simple(walk: &[usize]) -> Vec<Vec<usize>> {
    let mut loops = Vec::new();
    let mut stack: Vec<usize> = Vec::with_capacity(walk.len());
    let mut at: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for &v in walk {
        if let Some(&p) = at.get(&v) {
            let cut: Vec<usize> = stack.drain(p + 1..).collect();
            for u in &cut {
                at.remove(u);
            }
            let mut ring = vec![v];
            ring.extend(cut);
            if ring.len() >= 3 {
                loops.push(ring);
            }
        } else {
            at.insert(v, stack.len());
            stack.push(v);
        }
    }
    if stack.len() >= 3 {
        loops.push(stack);
    }
    loops
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Contains, Intersects, Point};

    fn grid(n: usize, step: f64) -> Vec<[f64; 2]> {
        (0..n * n)
            .map(|i| [(i % n) as f64 * step, (i / n) as f64 * step])
            .collect()
    }

    #[test]
    fn a_full_grid_keeps_its_square() {
        let p = segger_polygon(&grid(5, 1.0)).unwrap();
        assert!(
            (p.unsigned_area() - 16.0).abs() < 1e-9,
            "{}",
            p.unsigned_area()
        );
        for q in grid(5, 1.0) {
            assert!(p.intersects(&Point::new(q[0], q[1])), "{q:?}");
        }
    }

    #[test]
    fn flat_slivers_on_the_hull_are_eroded() {
        // A 5×5 unit grid (d_max 1) and one point 0.05 below (2, 0). The
        // hull edges (0,0)–(2,−0.05) and (2,−0.05)–(4,0) face angles of
        // about 177° (> 168.75°): those two slivers (0.025 µm² each) go.
        // The two right triangles at (2, 0) have edges of 1.001 < 1.5 and
        // 90° angles: they stay (0.025 µm² each).
        let mut pts = grid(5, 1.0);
        pts.push([2.0, -0.05]);
        let p = segger_polygon(&pts).unwrap();
        assert!(
            (p.unsigned_area() - 16.05).abs() < 1e-9,
            "{}",
            p.unsigned_area()
        );
    }

    #[test]
    fn a_bay_wider_than_twice_d_max_is_opened() {
        // A U of unit-spaced points (arms x ≤ 1 and x ≥ 5, base y ≤ 1);
        // the bay is 4 µm wide, twice d_max is 2: part 1 removes the
        // triangles spanning it from the open side down.
        let pts: Vec<[f64; 2]> = grid(7, 1.0)
            .into_iter()
            .filter(|p| p[0] <= 1.0 || p[0] >= 5.0 || p[1] <= 1.0)
            .collect();
        let p = segger_polygon(&pts).unwrap();
        assert!(!p.intersects(&Point::new(3.0, 4.0)));
        assert!(!p.intersects(&Point::new(3.0, 2.5)));
        for q in &pts {
            assert!(p.intersects(&Point::new(q[0], q[1])), "{q:?}");
        }
    }

    #[test]
    fn a_concave_l_shape_is_kept_concave() {
        // An L of unit-spaced points: the convex hull would fill the notch.
        // Only the triangle (2,2), (3,2), (2,3) at the inner corner stays
        // (edge √2 < 1.5, opposite angle 90°, not obtuse): 20 + 0.5 µm².
        let pts: Vec<[f64; 2]> = grid(7, 1.0)
            .into_iter()
            .filter(|p| p[0] <= 2.0 || p[1] <= 2.0)
            .collect();
        let p = segger_polygon(&pts).unwrap();
        assert!(!p.contains(&Point::new(4.5, 4.5)));
        assert!(
            (p.unsigned_area() - 20.5).abs() < 1e-9,
            "{}",
            p.unsigned_area()
        );
    }

    #[test]
    fn two_blobs_touching_at_a_vertex_give_one_valid_part() {
        // Two unit-grid squares sharing the corner (2, 2): the bigger wins.
        let mut pts = grid(3, 1.0);
        pts.extend(grid(4, 1.0).into_iter().map(|p| [p[0] + 2.0, p[1] + 2.0]));
        let p = segger_polygon(&pts).unwrap();
        assert!(is_good(&p));
        assert!(p.unsigned_area() >= 4.0 - 1e-9, "{}", p.unsigned_area());
    }

    #[test]
    fn degenerate_cells_fall_back_and_never_give_invalid_geometry() {
        let nucleus = Polygon::new(
            LineString::from(vec![
                (0.0, 0.0),
                (3.0, 0.0),
                (3.0, 3.0),
                (0.0, 3.0),
                (0.0, 0.0),
            ]),
            vec![],
        );
        let cases: Vec<(&str, Vec<[f64; 2]>)> = vec![
            ("one point", vec![[1.0, 1.0]; 7]),
            ("two transcripts", vec![[1.0, 1.0], [2.0, 1.5]]),
            (
                "collinear",
                (0..9).map(|i| [i as f64, 2.0 * i as f64]).collect(),
            ),
            (
                "two distinct of five",
                vec![[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [1.0, 1.0]],
            ),
            // Three points with an angle above 168.75°: part 2 erodes the only triangle.
            ("flat triangle", vec![[0.0, 0.0], [10.0, 0.0], [5.0, 0.3]]),
            ("nan", vec![[f64::NAN, 1.0], [1.0, 1.0], [2.0, 2.0]]),
        ];
        for (name, pts) in &cases {
            assert!(segger_polygon(pts).is_none(), "{name}");
            let with = cell_polygon(pts, Some(&nucleus)).unwrap();
            assert_eq!(with.source, PolygonSource::Nucleus, "{name}");
            let without = cell_polygon(pts, None).unwrap();
            assert_eq!(without.source, PolygonSource::BoundingBox, "{name}");
            assert!(is_good(&without.polygon), "{name}");
            for q in pts.iter().filter(|q| q[0].is_finite()) {
                assert!(
                    without.polygon.contains(&Point::new(q[0], q[1])),
                    "{name}: box misses {q:?}"
                );
            }
        }
        // An invalid nucleus (a bow tie) is not used.
        let bow = Polygon::new(
            LineString::from(vec![
                (0.0, 0.0),
                (2.0, 2.0),
                (2.0, 0.0),
                (0.0, 2.0),
                (0.0, 0.0),
            ]),
            vec![],
        );
        let c = cell_polygon(&[[1.0, 1.0]], Some(&bow)).unwrap();
        assert_eq!(c.source, PolygonSource::BoundingBox);
        assert!(cell_polygon(&[], None).is_none());
    }

    #[test]
    fn random_clouds_always_give_good_polygons_with_most_points_inside() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut inside, mut total) = (0usize, 0usize);
        for cell in 0..300 {
            let n = 3 + cell % 60;
            let pts: Vec<[f64; 2]> = (0..n)
                .map(|_| {
                    let (r, t): (f64, f64) = (
                        rng.random::<f64>().sqrt() * 5.0,
                        rng.random::<f64>() * std::f64::consts::TAU,
                    );
                    [
                        (r * t.cos() * 4.0).round() / 4.0,
                        (r * t.sin() * 4.0).round() / 4.0,
                    ]
                })
                .collect();
            let c = cell_polygon(&pts, None).unwrap();
            assert!(is_good(&c.polygon), "cell {cell}");
            total += pts.len();
            inside += pts
                .iter()
                .filter(|q| c.polygon.intersects(&Point::new(q[0], q[1])))
                .count();
        }
        assert!(inside as f64 >= 0.95 * total as f64, "{inside} of {total}");
    }

    #[test]
    fn split_simple_cuts_loops_at_repeated_vertices() {
        let loops = split_simple(&[0, 1, 2, 3, 4, 5, 2, 6]);
        assert_eq!(loops, vec![vec![2, 3, 4, 5], vec![0, 1, 2, 6]]);
    }
}
