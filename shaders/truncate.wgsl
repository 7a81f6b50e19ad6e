// Fused last step of the dealer-assisted exact truncation, one element per invocation:
//   y = [first](c >> bits) - rs + rm * ((1 - msb(c)) << (64 - bits)) - [first] 2^(62 - bits)
// with c the opened masked value, rs and rm this party's shares of (r >> bits) and msb(r).

struct Params {
    len: u32,
    bits: u32,
    first: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tc: array<R>;
@group(0) @binding(2) var<storage, read> trs: array<R>;
@group(0) @binding(3) var<storage, read> trm: array<R>;
@group(0) @binding(4) var<storage, read_write> out: array<R>;

@compute @workgroup_size(256)
fn truncate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let c = tc[i];
    let one = r_from_words(1u, 0u);
    let not_msb = r_xor(r_shr(c, 63u), one);
    var y = r_sub(r_shl(r_mul(trm[i], not_msb), 64u - p.bits), trs[i]);
    if (p.first != 0u) {
        y = r_add(y, r_sub(r_shr(c, p.bits), r_shl(one, 62u - p.bits)));
    }
    out[i] = y;
}
