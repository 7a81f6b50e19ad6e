// Row sums `[m, n] -> [m, 1]` mod 2^64.
//
// `sum_rows_wide`: one 256-invocation workgroup per row (strided partial sums, then a tree in
// workgroup memory). `sum_rows_narrow`: one invocation per row, for short rows.
// Offsets are element offsets inside the bound ranges (bindings start 256-byte aligned).

struct Params {
    m: u32,
    n: u32,
    in_off: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<R>;
@group(0) @binding(2) var<storage, read_write> dst: array<R>;

var<workgroup> partial: array<R, 256>;

@compute @workgroup_size(256)
fn sum_rows_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The row index is uniform across the workgroup, so the early exit keeps barriers uniform.
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.m) {
        return;
    }
    let base = p.in_off + row * p.n;
    var s = r_zero();
    for (var j = lid; j < p.n; j += 256u) {
        s = r_add(s, src[base + j]);
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var width = 128u; width > 0u; width >>= 1u) {
        if (lid < width) {
            partial[lid] = r_add(partial[lid], partial[lid + width]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        dst[p.out_off + row] = partial[0];
    }
}

@compute @workgroup_size(256)
fn sum_rows_narrow(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_index(wid, nwg, lid);
    if (row >= p.m) {
        return;
    }
    let base = p.in_off + row * p.n;
    var s = r_zero();
    for (var j = 0u; j < p.n; j++) {
        s = r_add(s, src[base + j]);
    }
    dst[p.out_off + row] = s;
}
