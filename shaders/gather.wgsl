// Row gather into a compact array: `out[j, :] = src[list[j], :]`, an exact
// copy. Used only when an array read through an index list is larger than
// one storage binding may be: the array is copied window by window into a
// compact buffer that the kernel then reads through remapped indices.
// One invocation per output element.
//!include common.wgsl

struct Params {
    // Elements this dispatch covers: [begin, begin + n_items).
    begin: u32,
    n_items: u32,
    width: u32,
    list_shift: u32,
    src_shift: u32,
    out_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> list: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<act>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n_items) {
        return;
    }
    let idx = p.begin + i;
    let j = idx / p.width;
    let col = idx % p.width;
    out[idx - p.out_shift] = src[list[j - p.list_shift] * p.width + col - p.src_shift];
}
