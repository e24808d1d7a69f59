//! Nucleus shape features (docs/contract.md §4) on exact shapes, ring cleaning, the
//! minimum enclosing circle, and the WKB / WKT parsers.

use geo::{Coord, LineString, Polygon};
use seggpu::io::geometry::{
    centroid, clean_polygon, decode_hex, min_enclosing_circle, parse_wkb, parse_wkt, shape_features,
};

use crate::common::assert_close;

fn poly(points: &[(f64, f64)]) -> Polygon<f64> {
    Polygon::new(LineString::from(points.to_vec()), vec![])
}

/// Checks `[area, convexity, elongation, circularity]` of `points`, each
/// within its own absolute tolerance.
fn assert_features(shape: &str, points: &[(f64, f64)], expected: [f64; 4], atol: [f64; 4]) {
    let f = shape_features(&poly(points));
    for (k, name) in ["area", "convexity", "elongation", "circularity"]
        .iter()
        .enumerate()
    {
        assert_close(&format!("{shape} {name}"), f[k], expected[k], atol[k]);
    }
}

/// Exact figures: 1e-12, except circularity (through the enclosing circle) 1e-9.
const EXACT: [f64; 4] = [1e-12, 1e-12, 1e-12, 1e-9];

/// A 2 × 2 square minus a 1 × 1 corner.
const L_SHAPE: [(f64, f64); 6] = [
    (0.0, 0.0),
    (2.0, 0.0),
    (2.0, 1.0),
    (1.0, 1.0),
    (1.0, 2.0),
    (0.0, 2.0),
];

#[test]
fn io_features_unit_square() {
    let square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)];
    assert_features("unit square", &square, [1.0, 1.0, 1.0, 2.0], EXACT);
}

#[test]
fn io_features_far_from_origin_and_orientation() {
    // Same square at Xenium-like coordinates, clockwise: same features.
    let (x0, y0) = (6400.037, -4966.6514);
    let square = [
        (x0, y0),
        (x0, y0 + 1.0),
        (x0 + 1.0, y0 + 1.0),
        (x0 + 1.0, y0),
    ];
    assert_features(
        "far square",
        &square,
        [1.0, 1.0, 1.0, 2.0],
        [1e-9, 1e-9, 1e-9, 1e-6],
    );
}

#[test]
fn io_features_rotated_square() {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let square = [(0.0, 0.0), (s, s), (0.0, 2.0 * s), (-s, s)];
    assert_features("rotated square", &square, [1.0, 1.0, 0.5, 2.0], EXACT);
}

#[test]
fn io_features_rectangle() {
    // 4 × 1: MRR = bbox, r = √17 / 2.
    let rectangle = [(0.0, 0.0), (4.0, 0.0), (4.0, 1.0), (0.0, 1.0)];
    let circularity = 4.0 / (17.0 / 4.0);
    assert_features("4 × 1", &rectangle, [4.0, 1.0, 1.0, circularity], EXACT);
}

#[test]
fn io_features_l_shape() {
    // Area 3, hull area 3.5; the enclosing circle through (2,0), (0,2) and
    // (0,0): r = √2.
    assert_features("L", &L_SHAPE, [3.0, 3.5 / 3.0, 1.0, 3.0 / 2.0], EXACT);
}

#[test]
fn io_features_64_gon_is_nearly_a_disc() {
    let r = 7.5;
    let pts: Vec<(f64, f64)> = (0..64)
        .map(|k| {
            let a = k as f64 / 64.0 * std::f64::consts::TAU;
            (100.0 + r * a.cos(), 50.0 + r * a.sin())
        })
        .collect();
    let p = poly(&pts);
    let f = shape_features(&p);
    assert_close("64-gon circularity", f[3], std::f64::consts::PI, 1e-2);
    assert_close("64-gon convexity", f[1], 1.0, 1e-9);
    assert_close("64-gon elongation", f[2], 1.0, 2e-2);
    let c = centroid(&p);
    assert_close("64-gon centroid x", c[0], 100.0, 1e-9);
    assert_close("64-gon centroid y", c[1], 50.0, 1e-9);
}

#[test]
fn io_centroid_is_area_weighted() {
    // L-shape: centroid of a 2×2 square (1,1, area 4) minus the corner
    // square (1.5,1.5, area 1) = ((4 - 1.5) / 3, (4 - 1.5) / 3).
    let c = centroid(&poly(&L_SHAPE));
    assert_close("L centroid x", c[0], 2.5 / 3.0, 1e-12);
    assert_close("L centroid y", c[1], 2.5 / 3.0, 1e-12);
}

#[test]
fn io_min_enclosing_circle() {
    let pts: Vec<Coord<f64>> = [(0.0, 0.0), (4.0, 0.0), (2.0, 1.0), (2.0, -1.0), (1.0, 0.5)]
        .iter()
        .map(|&(x, y)| Coord { x, y })
        .collect();
    let (c, r) = min_enclosing_circle(&pts);
    assert_close("centre x", c.x, 2.0, 1e-12);
    assert_close("centre y", c.y, 0.0, 1e-12);
    assert_close("radius", r, 2.0, 1e-12);
    // An acute triangle: the circumcircle.
    let tri: Vec<Coord<f64>> = [(0.0, 0.0), (2.0, 0.0), (1.0, 1.5)]
        .iter()
        .map(|&(x, y)| Coord { x, y })
        .collect();
    let (c, r) = min_enclosing_circle(&tri);
    for p in &tri {
        let d = ((p.x - c.x).powi(2) + (p.y - c.y).powi(2)).sqrt();
        assert_close("triangle vertex to the centre", d, r, 1e-12);
    }
    // Collinear points.
    let line: Vec<Coord<f64>> = (0..5)
        .map(|i| Coord {
            x: i as f64,
            y: 2.0 * i as f64,
        })
        .collect();
    let (_, r) = min_enclosing_circle(&line);
    assert_close("collinear radius", r, 20f64.sqrt() / 2.0 * 2.0, 1e-12);
}

#[test]
fn io_clean_polygon_rules() {
    // Closed ring with a repeated vertex: cleaned, area 1.
    let (p, a) = clean_polygon(&[
        [0.0, 0.0],
        [1.0, 0.0],
        [1.0, 0.0],
        [1.0, 1.0],
        [0.0, 1.0],
        [0.0, 0.0],
    ])
    .unwrap();
    assert_eq!(p.exterior().0.len(), 5, "4 vertices, closed");
    assert_close("cleaned area", a, 1.0, 1e-12);
    assert!(clean_polygon(&[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        .unwrap_err()
        .contains("fewer than 3 distinct"));
    assert!(clean_polygon(&[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
        .unwrap_err()
        .contains("zero area"));
    assert!(clean_polygon(&[[0.0, 0.0], [1.0, f64::NAN], [2.0, 2.0]])
        .unwrap_err()
        .contains("finite"));
}

fn wkb_polygon(little: bool, rings: &[Vec<[f64; 2]>]) -> Vec<u8> {
    let u32b = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let f64b = |v: f64| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let mut b = vec![little as u8];
    b.extend(u32b(3));
    b.extend(u32b(rings.len() as u32));
    for r in rings {
        b.extend(u32b(r.len() as u32));
        for p in r {
            b.extend(f64b(p[0]));
            b.extend(f64b(p[1]));
        }
    }
    b
}

#[test]
fn io_wkb_polygon_multipolygon_and_ewkb() {
    let sq = vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
    let big = vec![[5.0, 5.0], [8.0, 5.0], [8.0, 8.0], [5.0, 5.0]];
    for little in [true, false] {
        let parts = parse_wkb(&wkb_polygon(little, &[sq.clone(), big.clone()])).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].exterior, sq);
        assert_eq!(parts[0].holes, 1);
    }
    // MultiPolygon of two polygons.
    let mut m = vec![1u8];
    m.extend(6u32.to_le_bytes());
    m.extend(2u32.to_le_bytes());
    m.extend(wkb_polygon(true, std::slice::from_ref(&sq)));
    m.extend(wkb_polygon(false, std::slice::from_ref(&big)));
    let parts = parse_wkb(&m).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].exterior, big);
    // EWKB with SRID and Z.
    let mut e = vec![1u8];
    e.extend((3u32 | 0x8000_0000 | 0x2000_0000).to_le_bytes());
    e.extend(4326u32.to_le_bytes());
    e.extend(1u32.to_le_bytes());
    e.extend(4u32.to_le_bytes());
    for p in [[0.0f64, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]] {
        e.extend(p[0].to_le_bytes());
        e.extend(p[1].to_le_bytes());
        e.extend(9.0f64.to_le_bytes());
    }
    let parts = parse_wkb(&e).unwrap();
    assert_eq!(parts[0].exterior[1], [2.0, 0.0]);
    // Hex text round trip.
    let hex: String = e.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(decode_hex(&hex).unwrap(), e);
    // Truncated and non-polygon geometries are errors.
    let w = wkb_polygon(true, std::slice::from_ref(&sq));
    assert!(parse_wkb(&w[..w.len() - 3]).is_err());
    let mut point = vec![1u8];
    point.extend(1u32.to_le_bytes());
    point.extend(0f64.to_le_bytes());
    point.extend(0f64.to_le_bytes());
    assert!(format!("{:#}", parse_wkb(&point).unwrap_err()).contains("point"));
    // A huge count does not allocate: it is an error.
    let mut bogus = vec![1u8];
    bogus.extend(3u32.to_le_bytes());
    bogus.extend(u32::MAX.to_le_bytes());
    assert!(parse_wkb(&bogus).is_err());
}

#[test]
fn io_wkt_polygon_multipolygon() {
    let p = parse_wkt("POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))").unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].exterior.len(), 5);
    let p = parse_wkt("SRID=4326;polygon z ((0 0 1, 1e1 0 1, 1 -1.5E0 1, 0 0 1), (0.1 0.1 0, 0.2 0.1 0, 0.1 0.2 0, 0.1 0.1 0))").unwrap();
    assert_eq!(p[0].exterior[1], [10.0, 0.0]);
    assert_eq!(p[0].exterior[2], [1.0, -1.5]);
    assert_eq!(p[0].holes, 1);
    let m =
        parse_wkt("MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 9 5, 9 9, 5 9, 5 5)))").unwrap();
    assert_eq!(m.len(), 2);
    assert!(parse_wkt("POLYGON EMPTY").unwrap().is_empty());
    assert!(parse_wkt("POINT (1 2)").is_err());
    assert!(parse_wkt("POLYGON ((0 0, 1 0, 1 1, 0 0)").is_err());
    assert!(parse_wkt("POLYGON ((0 0, 1 0, 1 1, 0 0))) junk").is_err());
}
