// Table lookups of the narrow comparison (`Backend::lookup_bits`), one element per invocation:
// the index is bits `shift .. shift + width` of `c[i] + add` (mod 2^64); the bit read is entry
// `index` (or `index - 1` with `prev`, entry -1 being `underflow`) of the table at bit
// `offset` of row `i` of `tables` (`words` words per row). The bit goes to bit 63 of `out[i]`
// (packed afterwards by `pack_msb`); elements past `in_len` give 0. Raw (lo, hi) u32 pairs, like
// bits.wgsl: identical for both u64 variants. The host splits long tensors into chunks whose
// starts are aligned for every operand, so `i` starts at 0 in each chunk.

struct LookupParams {
    len: u32,
    in_len: u32,
    add_lo: u32,
    add_hi: u32,
    shift: u32,
    width: u32,
    offset: u32,
    words: u32,
    prev: u32,
    underflow: u32,
}

@group(0) @binding(0) var<uniform> lp: LookupParams;
@group(0) @binding(1) var<storage, read> lc: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> ltables: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> lout: array<vec2<u32>>;

@compute @workgroup_size(256)
fn lookup_bits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= lp.len) {
        return;
    }
    if (i >= lp.in_len) {
        lout[i] = vec2<u32>(0u, 0u);
        return;
    }
    let x = lc[i];
    let lo = x.x + lp.add_lo;
    let hi = x.y + lp.add_hi + select(0u, 1u, lo < x.x);
    var v = lo;
    if (lp.shift >= 32u) {
        v = hi >> (lp.shift - 32u);
    } else if (lp.shift > 0u) {
        v = (lo >> lp.shift) | (hi << (32u - lp.shift));
    }
    var idx = v & ((1u << lp.width) - 1u);
    var bit = 0u;
    if (lp.prev == 1u && idx == 0u) {
        bit = lp.underflow;
    } else {
        if (lp.prev == 1u) {
            idx = idx - 1u;
        }
        let pos = lp.offset + idx;
        let w = ltables[i * lp.words + pos / 64u];
        let b = pos % 64u;
        bit = (select(w.x, w.y, b >= 32u) >> (b % 32u)) & 1u;
    }
    lout[i] = vec2<u32>(0u, bit << 31u);
}
