//! Twins of `shaders/fragments.wgsl` and `shaders/components.wgsl`: edge
//! similarity, its histogram, and connected components by min-label
//! propagation with pointer jumping.

use rayon::prelude::*;

use crate::fragments::{similarity_bin, HISTOGRAM_BINS};

/// One invocation: slot `e` of the `[n, k]` neighbour lists. Cosine of the
/// unit embedding rows of the two transcripts' genes; 0 for an empty slot.
#[inline]
pub fn edge_similarity_at(neighbors: &[i32], k: usize, tokens: &[u32], unit: &[f32], dim: usize, e: usize) -> f32 {
    let j = neighbors[e];
    if j < 0 {
        return 0.0;
    }
    let a = tokens[e / k] as usize * dim;
    let b = tokens[j as usize] as usize * dim;
    let mut dot = 0.0f32;
    for c in 0..dim {
        dot += unit[a + c] * unit[b + c];
    }
    dot
}

/// Similarity of every neighbour slot.
pub fn edge_similarity(neighbors: &[i32], k: usize, tokens: &[u32], unit: &[f32], dim: usize) -> Vec<f32> {
    (0..neighbors.len())
        .into_par_iter()
        .with_min_len(4096)
        .map(|e| edge_similarity_at(neighbors, k, tokens, unit, dim, e))
        .collect()
}

/// Histogram of the similarities of the non-empty slots over [−1, 1].
pub fn similarity_histogram(neighbors: &[i32], similarity: &[f32]) -> Vec<u32> {
    let mut histogram = vec![0u32; HISTOGRAM_BINS];
    for (&j, &s) in neighbors.iter().zip(similarity) {
        if j >= 0 {
            histogram[similarity_bin(s)] += 1;
        }
    }
    histogram
}

/// Undirected edges `(a, b)` kept at `threshold`.
pub fn kept_edges(neighbors: &[i32], k: usize, similarity: &[f32], threshold: f32) -> Vec<(u32, u32)> {
    neighbors
        .iter()
        .zip(similarity)
        .enumerate()
        .filter(|(_, (&j, &s))| j >= 0 && s >= threshold)
        .map(|(e, (&j, _))| ((e / k) as u32, j as u32))
        .collect()
}

/// One hooking invocation over edge `(a, b)`: both endpoints' labels move
/// towards the smaller of the two. Returns whether anything changed.
#[inline]
pub fn hook_at(labels: &mut [u32], a: u32, b: u32) -> bool {
    let (la, lb) = (labels[a as usize], labels[b as usize]);
    if la == lb {
        return false;
    }
    let (lo, hi) = if la < lb { (la, lb) } else { (lb, la) };
    // Hooking the root of the larger label onto the smaller label keeps every
    // label pointing to a smaller-or-equal index, so labels converge to the
    // component minimum.
    let hi_root = labels[hi as usize];
    if lo < hi_root {
        labels[hi as usize] = lo;
    }
    if lo < labels[a as usize] {
        labels[a as usize] = lo;
    }
    if lo < labels[b as usize] {
        labels[b as usize] = lo;
    }
    true
}

/// One pointer-jumping invocation: `labels[i] = labels[labels[i]]`.
#[inline]
pub fn jump_at(labels: &mut [u32], i: usize) -> bool {
    let parent = labels[i] as usize;
    let grand = labels[parent];
    if grand < labels[i] {
        labels[i] = grand;
        true
    } else {
        false
    }
}

/// Connected components of `n` nodes: every node ends labelled with the
/// smallest node index of its component. Iterates hook + full pointer
/// jumping until nothing changes, as the shader does.
pub fn components(n: usize, edges: &[(u32, u32)]) -> Vec<u32> {
    let mut labels: Vec<u32> = (0..n as u32).collect();
    loop {
        let mut changed = false;
        for &(a, b) in edges {
            changed |= hook_at(&mut labels, a, b);
        }
        loop {
            let mut jumped = false;
            for i in 0..n {
                jumped |= jump_at(&mut labels, i);
            }
            if !jumped {
                break;
            }
        }
        if !changed {
            return labels;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(n: usize, edges: &[(u32, u32)]) -> Vec<u32> {
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for &(a, b) in edges {
            let (ra, rb) = (find(&mut parent, a as usize), find(&mut parent, b as usize));
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi] = lo;
        }
        (0..n).map(|i| find(&mut parent, i) as u32).collect()
    }

    #[test]
    fn labels_are_component_minima() {
        let n = 2000;
        let edges: Vec<(u32, u32)> = (0..1500u32)
            .map(|i| ((i * 7919) % n as u32, (i * 104_729 + 13) % n as u32))
            .collect();
        assert_eq!(components(n, &edges), reference(n, &edges));
        let path: Vec<(u32, u32)> = (0..999u32).rev().map(|i| (i + 1, i)).collect();
        assert!(components(1000, &path).iter().all(|&l| l == 0));
    }
}
