// ChaCha12 keystream (the stream of rand_chacha's ChaCha12Rng), one 64-byte block per
// invocation, written as u64 words (little-endian pairs of 32-bit stream words).
//
// State: constants, 8 key words, 64-bit block counter (words 12, 13), 64-bit stream id
// (words 14, 15). Output u64 j of this dispatch is stream words (skip + 2j, skip + 2j + 1)
// counted from the start of block `block`; `skip` is even and below 16.

struct Params {
    key: array<vec4<u32>, 2>,
    stream_lo: u32,
    stream_hi: u32,
    block_lo: u32,
    block_hi: u32,
    skip: u32,
    len: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<vec2<u32>>;

fn rotl(x: u32, n: u32) -> u32 {
    return (x << n) | (x >> (32u - n));
}

fn quarter(s: ptr<function, array<u32, 16>>, a: u32, b: u32, c: u32, d: u32) {
    (*s)[a] += (*s)[b]; (*s)[d] = rotl((*s)[d] ^ (*s)[a], 16u);
    (*s)[c] += (*s)[d]; (*s)[b] = rotl((*s)[b] ^ (*s)[c], 12u);
    (*s)[a] += (*s)[b]; (*s)[d] = rotl((*s)[d] ^ (*s)[a], 8u);
    (*s)[c] += (*s)[d]; (*s)[b] = rotl((*s)[b] ^ (*s)[c], 7u);
}

@compute @workgroup_size(64)
fn chacha12(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index_of(wid, nwg, lid, 64u);
    // Outputs of relative block i: j in [first, end).
    let first = select(0u, (16u * i - p.skip) / 2u, 16u * i > p.skip);
    if (first >= p.len) {
        return;
    }
    let end = min(p.len, (16u * (i + 1u) - p.skip) / 2u);
    let lo = p.block_lo + i;
    let hi = p.block_hi + select(0u, 1u, lo < p.block_lo);
    var init: array<u32, 16>;
    init[0] = 0x61707865u;
    init[1] = 0x3320646eu;
    init[2] = 0x79622d32u;
    init[3] = 0x6b206574u;
    for (var w = 0u; w < 4u; w++) {
        init[4u + w] = p.key[0][w];
        init[8u + w] = p.key[1][w];
    }
    init[12] = lo;
    init[13] = hi;
    init[14] = p.stream_lo;
    init[15] = p.stream_hi;
    var s = init;
    for (var r = 0u; r < 6u; r++) {
        quarter(&s, 0u, 4u, 8u, 12u);
        quarter(&s, 1u, 5u, 9u, 13u);
        quarter(&s, 2u, 6u, 10u, 14u);
        quarter(&s, 3u, 7u, 11u, 15u);
        quarter(&s, 0u, 5u, 10u, 15u);
        quarter(&s, 1u, 6u, 11u, 12u);
        quarter(&s, 2u, 7u, 8u, 13u);
        quarter(&s, 3u, 4u, 9u, 14u);
    }
    for (var j = first; j < end; j++) {
        let w = p.skip + 2u * j - 16u * i;
        out[j] = vec2<u32>(s[w] + init[w], s[w + 1u] + init[w + 1u]);
    }
}
