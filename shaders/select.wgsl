// Turning an opened masked bit into arithmetic shares (the tail of the secure comparison), one
// element per invocation. `d` holds the opened bits packed 64 to a word, `r` this party's
// arithmetic share of the dealer's mask bit:
//   bit_select:     out = (1 - 2d) r + [first] d
//   payload_select: out = (1 - 2d) (prod + e r) + d y
// with `e` the opened payload difference, `prod` the share of a·r and `y` the payload share.
// Chunk starts are multiples of 64 elements, so bit i of the chunk is bit i % 64 of d[i / 64].

struct Params {
    len: u32,
    // Valid words of `d` in this chunk (set by the host; unused here).
    d_len: u32,
    first: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> td: array<R>;
@group(0) @binding(2) var<storage, read> tr: array<R>;
@group(0) @binding(3) var<storage, read> te: array<R>;
@group(0) @binding(4) var<storage, read> tprod: array<R>;
@group(0) @binding(5) var<storage, read> ty: array<R>;
@group(0) @binding(6) var<storage, read_write> out: array<R>;

// The opened bit of element i as a ring value (0 or 1).
fn bit_of(i: u32) -> R {
    return r_and(r_shr(td[i / 64u], i % 64u), r_from_words(1u, 0u));
}

// 1 - 2d.
fn flip(d: R) -> R {
    return r_sub(r_from_words(1u, 0u), r_shl(d, 1u));
}

@compute @workgroup_size(256)
fn bit_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let d = bit_of(i);
    out[i] = r_mac(r_mul(flip(d), tr[i]), d, r_from_words(p.first, 0u));
}

@compute @workgroup_size(256)
fn payload_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let d = bit_of(i);
    let yr = r_mac(tprod[i], te[i], tr[i]);
    out[i] = r_mac(r_mul(flip(d), yr), d, ty[i]);
}
