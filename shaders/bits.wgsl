// Bit packing of the comparison circuit, on raw 64-bit words read as (lo, hi) u32 pairs (no ring
// prelude: only shifts and masks, identical for both u64 variants).
//
//   compact_bits: output word i = the odd (or even) bits of input words 2i (low half) and
//                 2i + 1 (high half, zero past the end), in order;
//   pack_msb:     bit b of output word i = bit 63 of input element 64 i + b (zero past the end).
//
// The host splits long tensors into chunks whose starts are aligned for every operand, so the
// indices here start at 0; `in_len` is the number of valid input words in this chunk.

struct Params {
    len: u32,
    in_len: u32,
    odd: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec2<u32>>;

// The 16 bits at positions s, s + 2, ..., s + 30 of x, compacted into the low 16 bits.
fn gather16(x: u32, s: u32) -> u32 {
    var v = (x >> s) & 0x55555555u;
    v = (v | (v >> 1u)) & 0x33333333u;
    v = (v | (v >> 2u)) & 0x0F0F0F0Fu;
    v = (v | (v >> 4u)) & 0x00FF00FFu;
    v = (v | (v >> 8u)) & 0x0000FFFFu;
    return v;
}

// The 32 odd or even bits of a 64-bit word, in order.
fn gather32(w: vec2<u32>, s: u32) -> u32 {
    return gather16(w.x, s) | (gather16(w.y, s) << 16u);
}

@compute @workgroup_size(256)
fn compact_bits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let lo = gather32(src[2u * i], p.odd);
    var hi = 0u;
    if (2u * i + 1u < p.in_len) {
        hi = gather32(src[2u * i + 1u], p.odd);
    }
    dst[i] = vec2<u32>(lo, hi);
}

@compute @workgroup_size(256)
fn pack_msb(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let base = 64u * i;
    let n = min(64u, p.in_len - base);
    var w = vec2<u32>(0u, 0u);
    for (var b = 0u; b < n; b++) {
        let bit = src[base + b].y >> 31u;
        if (b < 32u) {
            w.x |= bit << b;
        } else {
            w.y |= bit << (b - 32u);
        }
    }
    dst[i] = w;
}
