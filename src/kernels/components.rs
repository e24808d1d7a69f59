//! Twin of `shaders/components.wgsl`: connected components (docs/contract.md §9) by
//! min-label hooking with pointer jumping.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use rayon::prelude::*;

/// Items handed to one rayon task.
const ITEMS_PER_TASK: usize = 4096;

/// One hooking invocation over edge `(a, b)`: the larger of the two labels,
/// and both endpoints, move to the smaller label. Returns whether the labels
/// differed.
#[inline]
pub fn hook_at(labels: &[AtomicU32], a: u32, b: u32) -> bool {
    let la = labels[a as usize].load(Relaxed);
    let lb = labels[b as usize].load(Relaxed);
    if la == lb {
        return false;
    }
    let lo = la.min(lb);
    let hi = la.max(lb);
    // A label is a node of the same component with an index no larger than
    // the node's, so lowering the node `hi` names merges the two trees and
    // labels only ever fall towards the component minimum.
    labels[hi as usize].fetch_min(lo, Relaxed);
    labels[a as usize].fetch_min(lo, Relaxed);
    labels[b as usize].fetch_min(lo, Relaxed);
    true
}

/// One pointer-jumping invocation: `labels[i] = labels[labels[i]]`.
#[inline]
pub fn jump_at(labels: &[AtomicU32], i: usize) {
    let parent = labels[i].load(Relaxed);
    let grand = labels[parent as usize].load(Relaxed);
    if grand < parent {
        labels[i].fetch_min(grand, Relaxed);
    }
}

/// Connected components of `n` nodes: every node ends labelled with the
/// smallest node index of its component. As on the GPU, each iteration is
/// one parallel hooking pass over the edges followed by one parallel
/// pointer-jumping pass over the nodes; the first iteration whose hooking
/// finds every edge's labels equal ends it (labels are then constant on each
/// component and the minimum's label is itself).
pub fn components(n: usize, edges: &[[u32; 2]]) -> Vec<u32> {
    let labels: Vec<AtomicU32> = (0..n as u32).map(AtomicU32::new).collect();
    loop {
        // Not `any`: every edge must be hooked, as every invocation runs.
        let hooked = edges
            .par_iter()
            .with_min_len(ITEMS_PER_TASK)
            .map(|&[a, b]| hook_at(&labels, a, b))
            .fold(|| false, |acc, h| acc | h)
            .reduce(|| false, |x, y| x | y);
        if !hooked {
            break;
        }
        (0..n)
            .into_par_iter()
            .with_min_len(ITEMS_PER_TASK)
            .for_each(|i| jump_at(&labels, i));
    }
    labels.into_iter().map(AtomicU32::into_inner).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(n: usize, edges: &[[u32; 2]]) -> Vec<u32> {
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for &[a, b] in edges {
            let (ra, rb) = (find(&mut parent, a as usize), find(&mut parent, b as usize));
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi] = lo;
        }
        (0..n).map(|i| find(&mut parent, i) as u32).collect()
    }

    #[test]
    fn labels_are_component_minima() {
        let n = 2000;
        let edges: Vec<[u32; 2]> = (0..1500u32)
            .map(|i| [(i * 7919) % n as u32, (i * 104_729 + 13) % n as u32])
            .collect();
        assert_eq!(components(n, &edges), reference(n, &edges));
        let path: Vec<[u32; 2]> = (0..999u32).rev().map(|i| [i + 1, i]).collect();
        assert!(components(1000, &path).iter().all(|&l| l == 0));
        assert_eq!(components(5, &[]), vec![0, 1, 2, 3, 4]);
        assert!(components(0, &[]).is_empty());
    }
}
