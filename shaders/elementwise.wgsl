// Elementwise kernels: `binary` (a op b) and `scalar` (a op s), one element per invocation.
//
// Dispatched as a 2-D grid of 256-wide workgroups (the per-axis limit is 65535 groups); the
// host splits tensors larger than one storage binding into chunks, so indices here start at 0.

struct Params {
    len: u32,
    op: u32,
    // Public scalar (scalar kernel only): low and high words; shift amount = s_lo (< 64).
    s_lo: u32,
    s_hi: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<R>;
@group(0) @binding(2) var<storage, read> b: array<R>;
@group(0) @binding(3) var<storage, read_write> out: array<R>;

// op: 0 add, 1 sub, 2 mul, 3 xor, 4 and (BinaryOp order).
@compute @workgroup_size(256)
fn binary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let x = a[i];
    let y = b[i];
    var z: R;
    switch p.op {
        case 0u: { z = r_add(x, y); }
        case 1u: { z = r_sub(x, y); }
        case 2u: { z = r_mul(x, y); }
        case 3u: { z = r_xor(x, y); }
        default: { z = r_and(x, y); }
    }
    out[i] = z;
}

// op: 0 neg, 1 add, 2 mul, 3 xor, 4 and, 5 arithmetic shr, 6 logical shr, 7 shl (ScalarOp order).
@compute @workgroup_size(256)
fn scalar(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let x = a[i];
    let s = r_from_words(p.s_lo, p.s_hi);
    var z: R;
    switch p.op {
        case 0u: { z = r_neg(x); }
        case 1u: { z = r_add(x, s); }
        case 2u: { z = r_mul(x, s); }
        case 3u: { z = r_xor(x, s); }
        case 4u: { z = r_and(x, s); }
        case 5u: { z = r_sar(x, p.s_lo); }
        case 6u: { z = r_shr(x, p.s_lo); }
        default: { z = r_shl(x, p.s_lo); }
    }
    out[i] = z;
}
