// Connected components (docs/contract.md §9) by min-label hooking and pointer jumping.
// Twin: src/kernels/components.rs (`hook_at`, `jump_at`, `components`).
//
// labels[i] starts at i and only ever falls to the label of a node in the
// same component, so it ends at the component's smallest node index.
// Iteration t is a hook pass over the edges, then a jump pass over the
// nodes. Many iterations are recorded per submission; flags[t] = 1 means
// iteration t - 1 found an edge whose labels differed (flags[0] = 1). An
// iteration whose hook pass finds every edge's labels equal has converged,
// so every later pass of the submission returns at once; the host reads the
// flags back after each submission to know whether to submit more.
// Grids are capped: each invocation strides over several edges or nodes.
//!include common.wgsl

const HOOK: u32 = 0u;

struct Params {
    // HOOK: edges [begin, end); otherwise (jump): nodes [begin, end).
    mode: u32,
    begin: u32,
    end: u32,
    iteration: u32,
    // In edges.
    edge_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// `[m, 2]` edge endpoints.
@group(0) @binding(1) var<storage, read> edges: array<u32>;
@group(0) @binding(2) var<storage, read_write> labels: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> flags: array<atomic<u32>>;

// The larger of the two labels, and both endpoints, move to the smaller one.
fn hook(a: u32, b: u32) -> bool {
    let la = atomicLoad(&labels[a]);
    let lb = atomicLoad(&labels[b]);
    if (la == lb) {
        return false;
    }
    let lo = min(la, lb);
    let hi = max(la, lb);
    atomicMin(&labels[hi], lo);
    atomicMin(&labels[a], lo);
    atomicMin(&labels[b], lo);
    return true;
}

// labels[i] = labels[labels[i]].
fn jump(i: u32) {
    let parent = atomicLoad(&labels[i]);
    let grand = atomicLoad(&labels[parent]);
    if (grand < parent) {
        atomicMin(&labels[i], grand);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // A capped grid strides over the items, so that a pass after
    // convergence costs a fixed number of invocations, not one per item.
    let stride = nwg.x * nwg.y * WG;
    let items = p.end - p.begin;
    if (p.mode == HOOK) {
        if (atomicLoad(&flags[p.iteration]) == 0u) {
            return;
        }
        var hooked = false;
        for (var i = linear_index(gid, nwg); i < items; i += stride) {
            let at = 2u * (p.begin + i - p.edge_shift);
            hooked = hook(edges[at], edges[at + 1u]) || hooked;
        }
        // Only the first writer stores, so a busy pass does not serialise
        // on one word.
        if (hooked && atomicLoad(&flags[p.iteration + 1u]) == 0u) {
            atomicStore(&flags[p.iteration + 1u], 1u);
        }
    } else {
        if (atomicLoad(&flags[p.iteration + 1u]) == 0u) {
            return;
        }
        for (var i = linear_index(gid, nwg); i < items; i += stride) {
            jump(p.begin + i);
        }
    }
}
