// Gather (local re-layout: im2col, pooling windows, NHWC -> NCHW): `out[i] = src[index[i]]`,
// or zero where `index[i]` is 0xffffffff (padding). One element per invocation.
//
// The source is bound whole; the host splits the output (and its index range) into chunks
// that fit one storage binding, so `i` starts at 0 in each chunk.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<R>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<R>;

@compute @workgroup_size(256)
fn gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let j = index[i];
    if (j == 0xffffffffu) {
        out[i] = r_zero();
    } else {
        out[i] = src[j];
    }
}
